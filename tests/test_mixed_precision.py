"""Mixed precision with the R-Drop criterions.

* ``--bf16`` end to end on CPU (translation and language-model criterions):
  rdrop-train lifts fairseq 0.12's ``--bf16 => --tpu`` rule, the model trains
  in bfloat16 with fp32 master weights, losses and the KL stay finite.
* ``--fp16``: fairseq's FP16Optimizer and DynamicLossScaler with a real tiny
  fp16 transformer and our criterion, step by step as fairseq's Trainer runs
  them: an overflowing step is skipped, the scale halves, the weights stay
  finite and untouched.  (fairseq's fp16 path needs CUDA end to end, which
  rdrop-train says before training on CPU.)
* ``--amp`` is CUDA autocast; the KL is computed from float32 log-probabilities
  with element-wise ops and sums, none of which autocast lowers.  CPU autocast
  to bfloat16 stands in for it here.
"""

import math
import os
import re
import shutil
import subprocess

import pytest
import torch

import rdrop_seq  # noqa: F401  (registrations, checkpoint loading)
from fairseq.logging import metrics
from fairseq.optim.fp16_optimizer import FP16Optimizer
from rdrop_seq.criterions.rdrop_label_smoothed_cross_entropy import (
    RDropLabelSmoothedCrossEntropyCriterion,
)
from tests.conftest import BIN, NEEDS_CUDA, run
from tests.fairseq_helpers import build_from_dataclass, tiny_transformer, translation_batch, translation_task

COMMON = [
    "--seed", 1, "--batch-size", 8, "--max-update", 2, "--optimizer", "adam", "--lr", "1e-3",
    "--disable-validation", "--no-progress-bar", "--log-format", "simple", "--log-interval", 1,
    "--num-workers", 0, "--cpu", "--bf16",
]
TRANSLATION = [
    "bin", "--task", "translation", "--arch", "transformer_iwslt_de_en",
    "--encoder-layers", 1, "--decoder-layers", 1,
    "--encoder-embed-dim", 32, "--decoder-embed-dim", 32,
    "--encoder-ffn-embed-dim", 64, "--decoder-ffn-embed-dim", 64,
    "--encoder-attention-heads", 2, "--decoder-attention-heads", 2,
    "--share-all-embeddings", "--dropout", 0.3,
    "--criterion", "rdrop_label_smoothed_cross_entropy", "--rdrop-alpha", 5,
    "--label-smoothing", 0.1,
]
LM = [
    "lm-bin", "--task", "language_modeling", "--arch", "transformer_lm",
    "--decoder-layers", 1, "--decoder-embed-dim", 32, "--decoder-ffn-embed-dim", 64,
    "--decoder-attention-heads", 2, "--dropout", 0.3,
    "--criterion", "rdrop_cross_entropy", "--tokens-per-sample", 32,
    "--sample-break-mode", "none",
]


def logged_updates(log):
    rows = []
    for line in log.splitlines():
        if "train_inner" in line:
            stats = dict(re.findall(r"(\w+)=([-\w.+]+)", line))
            rows.append(stats)
    return rows


def assert_finite_training(log, checkpoint, keys=("loss", "nll_loss", "rdrop_kl", "gnorm")):
    """Two logged updates with finite ``keys`` and a positive KL, and finite saved weights;
    returns the saved weights."""
    rows = logged_updates(log)
    assert len(rows) == 2, log[-3000:]
    for stats in rows:
        for key in keys:
            assert math.isfinite(float(stats[key])), (key, stats)
        assert float(stats["rdrop_kl"]) > 0
    model = torch.load(checkpoint, map_location="cpu")["model"]
    assert model, "no weights saved"
    for key, value in model.items():
        assert torch.isfinite(value).all(), key
    return model


def assert_bf16_training(log, checkpoint):
    assert "--bf16: fairseq 0.12 turns --bf16 into --tpu" in log
    model = assert_finite_training(log, checkpoint)
    # fairseq saves the bf16 model as float32: every weight must be a bf16 value
    # (fp32 training would have left Adam-updated weights between bf16 values)
    for key, value in model.items():
        if value.is_floating_point():
            assert torch.equal(value, value.bfloat16().float()), key


def lm_data_bin(data_bin):
    """The English side of the translation data-bin, as a language-model data-bin."""
    lm = data_bin / "lm-bin"
    lm.mkdir(exist_ok=True)
    shutil.copy(data_bin / "bin" / "dict.en.txt", lm / "dict.txt")
    for split in ("train", "valid"):
        for ext in ("bin", "idx"):
            shutil.copy(data_bin / "bin" / f"{split}.de-en.en.{ext}", lm / f"{split}.{ext}")


def test_bf16_translation_end_to_end_on_cpu(data_bin):
    log = run("rdrop-train", *TRANSLATION, *COMMON, "--save-dir", "bf16_mt", cwd=data_bin)
    assert_bf16_training(log, data_bin / "bf16_mt" / "checkpoint_last.pt")


def test_bf16_language_model_end_to_end_on_cpu(data_bin):
    lm_data_bin(data_bin)
    log = run("rdrop-train", *LM, *COMMON, "--save-dir", "bf16_lm", cwd=data_bin)
    assert_bf16_training(log, data_bin / "bf16_lm" / "checkpoint_last.pt")


@NEEDS_CUDA
@pytest.mark.parametrize("task", ["translation", "lm"])
def test_fp16_end_to_end_on_cuda(data_bin, task):
    """--fp16 on a GPU: fairseq's FP16Optimizer and loss scaler around our criterions."""
    if task == "lm":
        lm_data_bin(data_bin)
    on_gpu = [a for a in COMMON if a not in ("--cpu", "--bf16")] + ["--fp16"]
    save_dir = f"fp16_{task}"
    log = run("rdrop-train", *(TRANSLATION if task == "translation" else LM), *on_gpu,
              "--save-dir", save_dir, cwd=data_bin)
    assert_finite_training(log, data_bin / save_dir / "checkpoint_last.pt",
                           keys=("loss", "nll_loss", "rdrop_kl", "gnorm", "loss_scale"))


def test_fp16_and_amp_on_cpu_are_refused_before_training(data_bin):
    proc = subprocess.run(
        [os.path.join(BIN, "rdrop-train"), *map(str, TRANSLATION), "--cpu", "--amp"],
        cwd=data_bin, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "--amp needs CUDA" in proc.stderr and "--bf16" in proc.stderr
    assert "fairseq_cli.train" not in proc.stdout + proc.stderr  # nothing started


# ---------------------------------------------------------------- fp16 loss scaling


def fp16_config(*extra):
    """The configuration fairseq's Trainer would get for ``--fp16`` (no flat grads on CPU)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "unused-data", "--task", "translation", "--arch", "transformer",
        "--criterion", "rdrop_label_smoothed_cross_entropy",
        "--optimizer", "adam", "--lr", "1e-3", "--fp16", "--fp16-no-flatten-grads", "--cpu",
        *map(str, extra),
    ])
    return convert_namespace_to_omegaconf(args)


@pytest.fixture()
def fp16_setup():
    task = translation_task()
    model = tiny_transformer(task).half()
    model.train()
    criterion = build_from_dataclass(RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1)
    criterion.set_num_updates(0)
    sample = translation_batch(task, batch_size=5, seed=1)
    return model, criterion, sample


def train_step(model, criterion, optimizer, sample, inject_inf=False):
    """One update as fairseq's Trainer.train_step does it (single process).

    Returns (stepped, logging_output); an overflow is skipped the Trainer's way:
    the OverflowError from clip_grad_norm drops the gradient, no optimizer step.
    """
    optimizer.zero_grad()
    loss, sample_size, logging_output = criterion(model, sample)
    assert loss.dtype == torch.float32 and logging_output["rdrop_kl"].dtype == torch.float32
    optimizer.backward(loss)
    if inject_inf:
        grad = next(p.grad for p in model.parameters() if p.grad is not None)
        grad.view(-1)[0] = float("inf")
    optimizer.multiply_grads(1.0 / sample_size)
    try:
        optimizer.clip_grad_norm(0.0)
    except OverflowError:
        optimizer.zero_grad()
        return False, logging_output
    optimizer.step()
    return True, logging_output


def snapshot(model, optimizer):
    return (
        [p.detach().clone() for p in model.parameters()],
        [p.detach().clone() for p in optimizer.fp32_params],
    )


def assert_finite(tensors):
    for t in tensors:
        assert torch.isfinite(t.float()).all()


def adam_steps(optimizer):
    states = optimizer.fp32_optimizer.optimizer.state.values()
    return {int(s["step"]) for s in states}


def test_fp16_overflow_skips_the_step_and_halves_the_loss_scale(fp16_setup):
    model, criterion, sample = fp16_setup
    optimizer = FP16Optimizer.build_optimizer(
        fp16_config("--fp16-init-scale", 128), [p for p in model.parameters()]
    )
    assert optimizer.scaler.loss_scale == 128
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in optimizer.fp32_params)

    before = snapshot(model, optimizer)
    stepped, log = train_step(model, criterion, optimizer, sample)
    assert stepped and optimizer.scaler.loss_scale == 128 and log["rdrop_kl"] > 0
    after_first = snapshot(model, optimizer)
    assert not all(torch.equal(a, b) for a, b in zip(before[1], after_first[1]))
    assert adam_steps(optimizer) == {1}

    stepped, log = train_step(model, criterion, optimizer, sample, inject_inf=True)
    assert not stepped
    assert optimizer.scaler.loss_scale == 64  # backed off by fp16_scale_factor 2
    after_overflow = snapshot(model, optimizer)
    for a, b in zip(after_first[0] + after_first[1], after_overflow[0] + after_overflow[1]):
        assert torch.equal(a, b), "the overflowing step changed the weights"
    assert_finite(after_overflow[0] + after_overflow[1])
    assert adam_steps(optimizer) == {1}  # Adam's moments untouched too

    stepped, log = train_step(model, criterion, optimizer, sample)
    assert stepped and optimizer.scaler.loss_scale == 64
    after_third = snapshot(model, optimizer)
    assert_finite(after_third[0] + after_third[1])
    assert not all(torch.equal(a, b) for a, b in zip(after_overflow[1], after_third[1]))
    assert adam_steps(optimizer) == {2}


def test_fp16_fused_forward_logs_the_saturated_gradient_count(fp16_setup):
    """Every float16 fused R-Drop forward logs fp16_grad_clamped, 0 included (fairseq sums the
    ranks' logs by the keys of their first one: the keys must not depend on the values);
    reduce_metrics shows the interval's sum only where it is positive."""
    model, criterion, sample = fp16_setup
    _, _, log = criterion(model, sample)
    assert log["fp16_grad_clamped"].dtype == torch.int64 and int(log["fp16_grad_clamped"]) >= 0
    with metrics.aggregate(new_root=True) as agg:
        criterion.reduce_metrics([dict(log, fp16_grad_clamped=torch.tensor(0))] * 2)
    assert "fp16_grad_clamped" not in agg.get_smoothed_values()
    with metrics.aggregate(new_root=True) as agg:
        criterion.reduce_metrics([dict(log, fp16_grad_clamped=torch.tensor(n)) for n in (0, 3, 4)])
    assert agg.get_smoothed_value("fp16_grad_clamped") == 7
    _, _, float_log = criterion(model.float(), sample)  # nothing stored in float16: no count
    assert "fp16_grad_clamped" not in float_log


def test_fp16_loss_scale_backs_off_from_a_real_overflow(fp16_setup):
    """A far too large initial scale: the fp16 gradients overflow by themselves."""
    model, criterion, sample = fp16_setup
    optimizer = FP16Optimizer.build_optimizer(
        fp16_config("--fp16-init-scale", 2**24), [p for p in model.parameters()]
    )
    scales, outcomes = [], []
    for _ in range(40):
        scales.append(optimizer.scaler.loss_scale)
        stepped, _ = train_step(model, criterion, optimizer, sample)
        outcomes.append(stepped)
        assert_finite(list(model.parameters()) + list(optimizer.fp32_params))
        if stepped:
            break
    assert outcomes[0] is False, "2**24 times the loss must overflow fp16 gradients"
    assert outcomes[-1] is True, f"never recovered: scales {scales}"
    for prev, nxt, stepped in zip(scales, scales[1:], outcomes):
        assert stepped or nxt == prev / 2
    assert optimizer.scaler.loss_scale < 2**24


# ---------------------------------------------------------------- autocast (--amp)


@pytest.mark.parametrize("no_fused", [False, True], ids=["fused", "generic"])
def test_kl_and_loss_stay_float32_under_autocast(no_fused):
    task = translation_task()
    model = tiny_transformer(task)
    model.train()
    try:
        criterion = build_from_dataclass(
            RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1, rdrop_no_fused=no_fused
        )
    except TypeError:  # a criterion without the fused output layer: one path only
        if no_fused:
            pytest.skip("this criterion has no --rdrop-no-fused")
        criterion = build_from_dataclass(RDropLabelSmoothedCrossEntropyCriterion, task, label_smoothing=0.1)
    criterion.set_num_updates(0)
    sample = translation_batch(task, batch_size=5, seed=1)
    torch.manual_seed(3)
    loss32, _, log32 = criterion(model, sample)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, log = criterion(model, sample)
        hidden = model.decoder.output_projection(torch.zeros(1, 16))
    assert hidden.dtype == torch.bfloat16, "autocast must be lowering the matmuls"
    assert loss.dtype == torch.float32 and log["rdrop_kl"].dtype == torch.float32
    assert torch.isfinite(loss) and log["rdrop_kl"] > 0
    torch.testing.assert_close(loss, loss32, rtol=5e-2, atol=0.5)
    torch.testing.assert_close(log["rdrop_kl"], log32["rdrop_kl"], rtol=0.2, atol=0.2)
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
