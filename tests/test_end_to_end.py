"""fairseq's own command-line tools with the plugin, on a tiny slice of the real corpus."""

import re
import subprocess
import sys

# the data_bin fixture is shared through tests/conftest.py
from tests.conftest import SIZES, run


TRAIN_ARGS = [
    "bin", "--task", "translation", "--arch", "transformer_iwslt_de_en",
    "--encoder-layers", 1, "--decoder-layers", 1,
    "--encoder-embed-dim", 32, "--decoder-embed-dim", 32,
    "--encoder-ffn-embed-dim", 64, "--decoder-ffn-embed-dim", 64,
    "--encoder-attention-heads", 2, "--decoder-attention-heads", 2,
    "--share-all-embeddings", "--dropout", 0.3,
    "--criterion", "rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", 5,
    "--label-smoothing", 0.1, "--report-accuracy",
    "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", 10, "--max-tokens", 600, "--seed", 1,
    "--no-progress-bar", "--log-format", "simple", "--cpu", "--num-workers", 0,
]
BLEU_ARGS = [
    "--eval-bleu", "--eval-bleu-detok", "space", "--eval-bleu-args", '{"beam": 1}',
    "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
]


def test_preprocess_train_generate_resume(data_bin):
    args = TRAIN_ARGS + BLEU_ARGS + ["--save-dir", "ckpt", "--log-interval", 2,
                                     "--log-file", "e2e-train.log"]
    log = run("rdrop-train", *args, "--max-epoch", 2, cwd=data_bin)
    assert re.search(r"epoch 002 \| loss [\d.]+ \| nll_loss [\d.]+ \| rdrop_kl [\d.]+", log), log[-2000:]
    assert re.search(r"valid on 'valid' subset \| loss .* \| bleu [\d.]+", log)
    updates = int(re.findall(r"epoch 002 .*num_updates (\d+)", log)[-1])
    for name in ("checkpoint1.pt", "checkpoint2.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (data_bin / "ckpt" / name).exists(), name

    # fairseq-generate on torch >= 2.6, through the wrapper and with --user-dir
    out = run(
        "rdrop-generate", "bin", "--path", "ckpt/checkpoint_best.pt", "--beam", 2,
        "--batch-size", 16, "--cpu", "--gen-subset", "test", cwd=data_bin,
    )
    assert re.search(r"BLEU4 = [\d.]+", out)
    assert len(re.findall(r"^H-\d+\t", out, flags=re.M)) == SIZES["test"]
    user_dir = subprocess.run(
        [sys.executable, "-m", "rdrop_seq", "--user-dir"], capture_output=True, text=True
    ).stdout.strip()
    out = run(
        "fairseq-generate", "bin", "--user-dir", user_dir, "--path", "ckpt/checkpoint_last.pt",
        "--beam", 1, "--batch-size", 16, "--cpu", "--gen-subset", "valid", cwd=data_bin,
    )
    assert re.search(r"BLEU4 = [\d.]+", out)

    # resume from checkpoint_last.pt for one more epoch
    log = run("rdrop-train", *args, "--max-epoch", 3, cwd=data_bin)
    assert re.search(rf"Loaded checkpoint \S*checkpoint_last.pt \(epoch \d+ @ {updates} updates\)", log)
    resumed = int(re.findall(r"epoch 003 .*num_updates (\d+)", log)[-1])
    assert resumed > updates
    assert (data_bin / "ckpt" / "checkpoint3.pt").exists()

    # --log-file holds each epoch's summary once (fairseq alone writes epoch N's records N times)
    records = (data_bin / "e2e-train.log").read_text()
    for epoch in (1, 2, 3):
        assert len(re.findall(rf"^epoch {epoch:03d} \| loss", records, flags=re.M)) == 1, records[-3000:]


def kl_logged_at_updates(log):
    """{num_updates: whether rdrop_kl was logged} from per-update train_inner lines."""
    seen = {}
    for line in log.splitlines():
        m = re.search(r"train_inner.*num_updates=(\d+)", line)
        if m:
            seen[int(m.group(1))] = re.search(r"rdrop_kl=[\d.]+", line) is not None
    return seen


def test_every_k_schedule_follows_the_trainers_updates_across_a_resume(data_bin):
    common = TRAIN_ARGS + [
        "--save-dir", "ckpt_every", "--log-interval", 1, "--rdrop-every", 3,
        "--disable-validation",
    ]
    first = kl_logged_at_updates(run("rdrop-train", *common, "--max-update", 5, cwd=data_bin))
    # the train_inner line at num_updates=n reports the update with index n - 1
    assert first == {n: (n - 1) % 3 == 0 for n in range(1, 6)}, first
    second = kl_logged_at_updates(run("rdrop-train", *common, "--max-update", 8, cwd=data_bin))
    assert second == {n: (n - 1) % 3 == 0 for n in range(6, 9)}, second


def test_recurrent_encoder_trains(data_bin):
    """fairseq's ``lstm``: its encoder packs the batch, which must stay sorted by source length."""
    args = [
        "bin", "--task", "translation", "--arch", "lstm",
        "--encoder-embed-dim", 32, "--decoder-embed-dim", 32, "--decoder-out-embed-dim", 32,
        "--encoder-hidden-size", 32, "--decoder-hidden-size", 32, "--dropout", 0.3,
        "--criterion", "rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", 5, "--label-smoothing", 0.1,
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", 600, "--seed", 1, "--max-epoch", 1,
        "--no-progress-bar", "--log-format", "simple", "--cpu", "--num-workers", 0,
        "--save-dir", "ckpt-lstm", "--no-save",
    ]
    log = run("rdrop-train", *args, cwd=data_bin)
    assert re.search(r"epoch 001 \| loss [\d.]+ \| nll_loss [\d.]+ \| rdrop_kl [\d.]+", log), log[-2000:]


def test_cost_variants_resume_mid_epoch_with_identical_results(data_bin):
    """--rdrop-fraction, --rdrop-share-encoder and --rdrop-start-update: stopped after update 3
    (mid-epoch) and resumed, the run logs and ends with what one uninterrupted run does."""
    import torch

    from tests.test_distributed import train_inner

    def train(save_dir, max_update):
        return run("rdrop-train", *TRAIN_ARGS, "--save-dir", save_dir, "--log-interval", 1,
                   "--max-tokens", 300, "--rdrop-fraction", 0.5, "--rdrop-share-encoder",
                   "--rdrop-start-update", 2, "--disable-validation", "--save-interval-updates", 3,
                   "--max-update", max_update, cwd=data_bin)

    straight = train("ckpt_variants_a", 6)
    train("ckpt_variants_b", 3)
    resumed = train("ckpt_variants_b", 6)
    assert re.search(r"Loaded checkpoint \S*checkpoint_last.pt \(epoch 1 @ 3 updates\)", resumed)

    def logged(log):
        timing = ("wall", "ups", "wps", "train_wall")
        return {n: {k: v for k, v in stats.items() if k not in timing} for n, stats in train_inner(log).items()}

    a, b = logged(straight), logged(resumed)
    assert sorted(b) == [4, 5, 6] and all(a[n] == b[n] for n in b), (a, b)
    assert "rdrop_kl" not in a[1] and "rdrop_kl" in a[3]  # update index 2 is the first R-Drop one
    final_a = torch.load(data_bin / "ckpt_variants_a" / "checkpoint_last.pt", map_location="cpu")["model"]
    final_b = torch.load(data_bin / "ckpt_variants_b" / "checkpoint_last.pt", map_location="cpu")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
