"""Data-parallel R-Drop training on CPU: 2 ranks over gloo against 1 process.

fairseq cuts every epoch into the same list of batches on every rank and
hands them out round-robin (rank r gets batches r, r + N, ...), while
``--update-freq 2`` groups consecutive batches.  So update k of 2 ranks with
``--batch-size B`` sees batches 2k (rank 0) and 2k + 1 (rank 1), exactly the
two batches update k of 1 process with ``--update-freq 2`` accumulates: the
same 2B examples.  With dropout off the saved weights must agree to float
tolerance and every logged sum (loss, nll_loss, accuracy counts, wpb, bsz)
must be the same (rdrop-train's own ``--distributed-world-size 2``).  With
dropout on, the masks differ between the runs, so only the logged sums of
sizes agree and the losses are close (torchrun with a c10d rendezvous
endpoint: the multi-node way, here with one node).
"""

import math
import os
import re

import pytest
import torch

import rdrop_seq  # noqa: F401  (checkpoint loading on torch >= 2.6, registrations)
from fairseq import utils as fairseq_utils
from tests.conftest import BIN, on_a_free_port, run, run_tool

B = 8  # sentences per batch and rank
UPDATES = 3
TRAIN = [
    "bin", "--task", "translation", "--arch", "transformer_iwslt_de_en",
    "--encoder-layers", 1, "--decoder-layers", 1,
    "--encoder-embed-dim", 32, "--decoder-embed-dim", 32,
    "--encoder-ffn-embed-dim", 64, "--decoder-ffn-embed-dim", 64,
    "--encoder-attention-heads", 2, "--decoder-attention-heads", 2,
    "--share-all-embeddings",
    "--criterion", "rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", 5,
    "--label-smoothing", 0.1, "--report-accuracy",
    "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", 10, "--seed", 1, "--batch-size", B, "--max-update", UPDATES,
    "--disable-validation", "--no-progress-bar", "--log-format", "simple",
    "--log-interval", 1, "--num-workers", 0, "--cpu",
]
NO_DROPOUT = ["--dropout", 0, "--attention-dropout", 0, "--activation-dropout", 0]
DROPOUT = ["--dropout", 0.3, "--attention-dropout", 0.1, "--activation-dropout", 0.1]
SUMMED = ("wpb", "bsz", "total")  # integer sums over ranks / micro-batches
AVERAGED = ("loss", "nll_loss", "rdrop_kl")


def one_process(cwd, save_dir, dropout):
    """The reference: 1 process, 2 consecutive batches accumulated per update."""
    return run("rdrop-train", *TRAIN, *dropout, "--update-freq", 2, "--save-dir", save_dir, cwd=cwd)


def two_ranks_by_world_size(cwd, save_dir, dropout):
    return run(
        "rdrop-train", *TRAIN, *dropout, "--distributed-world-size", 2, "--save-dir", save_dir,
        cwd=cwd,
    )


def two_ranks_by_torchrun(cwd, save_dir, dropout):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code, out = on_a_free_port(lambda port: run_tool(
        "torchrun", "--nnodes", 1, "--nproc-per-node", 2, "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--no-python",
        os.path.join(BIN, "rdrop-train"), *TRAIN, *dropout, "--save-dir", save_dir,
        cwd=cwd, env=env,
    ))
    assert code == 0, f"torchrun failed:\n{out[-6000:]}"
    return out


def train_inner(log):
    """{num_updates: {stat: value}} from the per-update log lines of rank 0."""
    rows = {}
    for line in log.splitlines():
        if "train_inner" not in line or line.startswith("[rank"):
            continue
        stats = dict(re.findall(r"(\w+)=([-\d.e+inf]+)", line))
        rows[int(stats["num_updates"])] = {k: float(v) for k, v in stats.items()}
    return rows


def model_tensors(path):
    return torch.load(path, map_location="cpu")["model"]


def assert_same_logged_sums(ref, ranks, keys=SUMMED):
    assert sorted(ref) == sorted(ranks) == list(range(1, UPDATES + 1))
    for update in ref:
        for key in keys:
            assert ranks[update][key] == ref[update][key], (update, key, ref, ranks)
        assert ref[update]["bsz"] == 2 * B


def test_two_ranks_equal_one_process_with_update_freq_2_without_dropout(data_bin):
    ref_log = one_process(data_bin, "dist_ref", NO_DROPOUT)
    log = two_ranks_by_world_size(data_bin, "dist_ranks", NO_DROPOUT)
    assert "rdrop-train starts 2 rank processes" in log and "--ddp-backend legacy_ddp" in log
    assert "initialized host" in log and "[rank 1]" in log  # torch.distributed really ran

    ref, ranks = train_inner(ref_log), train_inner(log)
    assert_same_logged_sums(ref, ranks, SUMMED + ("n_correct",))
    for update in ref:
        for key in AVERAGED + ("accuracy", "gnorm"):
            assert ranks[update][key] == pytest.approx(ref[update][key], abs=2e-3), (update, key)

    a = model_tensors(data_bin / "dist_ref" / "checkpoint_last.pt")
    b = model_tensors(data_bin / "dist_ranks" / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    # 3 Adam updates at lr 1e-4..3e-4 move the weights by ~1e-4 each: far above atol.
    # Not the attention key biases: softmax ignores a bias shared by all keys, so their
    # gradient is rounding noise, which differs with the summation order and which
    # Adam's normalisation turns into steps of about lr either way.
    compared = [key for key in a if not key.endswith("k_proj.bias")]
    assert any(key.endswith("k_proj.weight") for key in compared)
    for key in compared:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def test_two_ranks_by_torchrun_with_dropout_train_and_log_the_same_sums(data_bin):
    ref = train_inner(one_process(data_bin, "dist_drop_ref", DROPOUT))
    log = two_ranks_by_torchrun(data_bin, "dist_drop_ranks", DROPOUT)
    assert "torchrun: rank 0 of 2" in log and "initialized host" in log
    ranks = train_inner(log)
    assert_same_logged_sums(ref, ranks)
    for update in ref:
        for run_stats in (ref[update], ranks[update]):
            for key in AVERAGED:
                assert math.isfinite(run_stats[key]), (update, key, run_stats)
            assert run_stats["rdrop_kl"] > 0  # the copies' dropout masks differ
        # different dropout masks, same examples: close, not equal
        assert ranks[update]["loss"] == pytest.approx(ref[update]["loss"], rel=0.05)
        assert ranks[update]["nll_loss"] == pytest.approx(ref[update]["nll_loss"], rel=0.05)
    for run_dir in ("dist_drop_ref", "dist_drop_ranks"):
        for key, value in model_tensors(data_bin / run_dir / "checkpoint_last.pt").items():
            assert torch.isfinite(value.float()).all(), (run_dir, key)


# ---------------------------------------------------------------- dropout seeds per rank


def _encoder_dropout_masks(model, sample, criterion):
    masks = []

    def hook(_module, _inputs, output):
        masks.append(output.eq(0).clone())

    handle = model.encoder.dropout_module.register_forward_hook(hook)
    try:
        criterion(model, sample)
    finally:
        handle.remove()
    return masks[0]  # [passes * B, T, C]: the copies stacked batch-first


def test_dropout_masks_differ_between_copies_and_between_ranks(monkeypatch):
    """fairseq's trainer reseeds torch with ``seed + num_updates`` before every
    update on every rank alike; the criterion gives ranks > 0 their own stream.

    The two copies of an example are rows of one stacked tensor, so their masks
    always differ.  Two ranks with batches of exactly the same shape draw
    different masks; a rank's masks are reproducible (same seed and update,
    same masks) and its micro-batches within one update differ.
    """
    from rdrop_seq.criterions import base
    from rdrop_seq.criterions.rdrop_label_smoothed_cross_entropy import (
        RDropLabelSmoothedCrossEntropyCriterion,
    )
    from tests.fairseq_helpers import build_from_dataclass, tiny_transformer, translation_batch, translation_task

    task = translation_task()
    model = tiny_transformer(task)
    model.train()
    rank0 = translation_batch(task, batch_size=4, seed=1, min_len=6, max_len=6)
    rank1 = translation_batch(task, batch_size=4, seed=2, min_len=6, max_len=6)
    assert not torch.equal(rank0["net_input"]["src_tokens"], rank1["net_input"]["src_tokens"])

    def criterion_on(rank):
        monkeypatch.setattr(base, "_data_parallel_rank", lambda: rank)
        criterion = build_from_dataclass(RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1)
        criterion.set_num_updates(0)
        return criterion

    def update_on_a_rank(criterion, samples, seed=1, num_updates=0):
        fairseq_utils.set_torch_seed(seed + num_updates)  # Trainer._set_seed
        return [_encoder_dropout_masks(model, sample, criterion) for sample in samples]

    (m0,) = update_on_a_rank(criterion_on(0), [rank0])
    assert not torch.equal(m0[:4], m0[4:]), "the two copies must get different masks"
    # rank 0 keeps the trainer's stream: the masks of a single process
    plain = build_from_dataclass(RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1)
    plain.set_num_updates(0)
    fairseq_utils.set_torch_seed(1)
    assert torch.equal(_encoder_dropout_masks(model, rank0, plain), m0)

    on_rank1 = criterion_on(1)
    m1, m1_second = update_on_a_rank(on_rank1, [rank1, rank1])
    assert m1.shape == m0.shape and not torch.equal(m1, m0), "ranks must get their own masks"
    assert not torch.equal(m1_second, m1), "micro-batches of one update must differ"
    assert torch.equal(update_on_a_rank(criterion_on(1), [rank1])[0], m1), "reproducible"
    assert not torch.equal(update_on_a_rank(on_rank1, [rank1], num_updates=1)[0], m1)
    (m2,) = update_on_a_rank(criterion_on(2), [rank1])
    assert not torch.equal(m2, m1) and not torch.equal(m2, m0)
