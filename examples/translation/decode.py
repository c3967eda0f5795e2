"""The translation demo's test set: decoded with ``fairseq-generate`` (beam search, a resumable
stage per run and seed, keyed on the checkpoint), its hypotheses read back in test-set order
and detokenised, and scored with sacrebleu (BLEU and chrF, with their signatures).
"""

import os

from examples.common.base import USER_DIR, DemoError, device_flags, display, run_tool, say
from examples.common.stages import dir_stage, fairseq_command, sha256_file, stage_key


def generate(save_dir, data_bin, beam, max_len_b, seed, threads, label):
    """Decode the test set with the best checkpoint in ``save_dir`` (``label``: "rdrop seed 1");
    returns fairseq-generate's output file and its command as shown."""
    out_dir = os.path.join(save_dir, "test")
    ckpt = os.path.join(save_dir, "checkpoint_best.pt")
    key = stage_key(ckpt=sha256_file(ckpt), beam=beam, max_len_b=max_len_b)
    cmd = fairseq_command("generate") + [
        data_bin, "--task", "translation", "--source-lang", "de", "--target-lang", "en",
        "--path", ckpt, "--gen-subset", "test", "--beam", str(beam),
        "--max-len-a", "1.2", "--max-len-b", str(max_len_b),
        "--batch-size", "64", "--remove-bpe", "sentencepiece", "--num-workers", "0",
        # fairseq 0.12 drops the last batch when its size is no multiple of this (default 8)
        "--required-batch-size-multiple", "1",
        "--results-path", "RESULTS_PATH", "--user-dir", USER_DIR, "--seed", str(seed),
    ]  # fmt: skip
    cmd += device_flags()

    def build(tmp):
        run_tool([tmp if c == "RESULTS_PATH" else c for c in cmd], threads, f"fairseq-generate ({label})")
        return {}

    dir_stage(f"generate {label}", out_dir, key, build, f"beam {beam} on the test set", log=say)
    path = os.path.join(out_dir, "generate-test.txt")
    return path, display([out_dir if c == "RESULTS_PATH" else c for c in cmd])


def read_hypotheses(path, n):
    """Detokenised hypotheses from fairseq-generate output, in test-set order."""
    hyps = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(("D-", "H-")):
                tag, _score, text = (line.rstrip("\n").split("\t") + ["", ""])[:3]
                idx = int(tag[2:])
                if line.startswith("D-") or idx not in hyps:
                    hyps[idx] = text
    missing = [i for i in range(n) if i not in hyps]
    if missing:
        raise DemoError(f"{path}: no hypothesis for {len(missing)} of {n} test sentences (e.g. #{missing[0]})")
    return [" ".join(hyps[i].replace("\u2581", " ").split()) for i in range(n)]


def score(hyps, refs):
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }
