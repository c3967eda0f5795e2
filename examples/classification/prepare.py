#!/usr/bin/env python3
"""Prepare the Debian section-classification corpus for fairseq: masked-LM pre-training
data and sentence-prediction data.

Stages, each written atomically into ``--work-dir`` and skipped when already
done for the same inputs:

1. ``text``      from the shipped snapshot (``debian_sections.py``): every
                 training description (``pretrain.txt``, for the masked-LM
                 pre-training; the first ``--pretrain-limit`` in the training
                 split's order for smoke tests) and the labelled slices ``{train,valid,test}.input0``
                 / ``.label`` -- the first ``--train-limit`` / ``--valid-limit`` /
                 ``--test-limit`` examples of each split in the order of their
                 texts' sha256 (a fixed random order), or all of them;
                 ``unlabeled.input0``, the training descriptions past the
                 labelled slice, without their sections (semi-supervised R-Drop);
                 ``labels.txt``, every kept section with its training count;
2. ``spm``       a unigram sentencepiece model trained on ``pretrain.txt`` (the
                 training split only);
3. ``encode``    everything encoded into sentencepiece pieces;
4. ``binarize``  ``fairseq-preprocess --only-source``: ``mlm-bin/`` (all training
                 descriptions, valid slice) with its dictionary, and
                 ``cls-bin/input0`` (same dictionary; ``unlabeled`` too, which has
                 no label files) and ``cls-bin/label`` (every section, so a slice
                 never misses a class), the layout of fairseq's ``sentence_prediction``
                 task and of ``sentence_prediction_unlabeled``'s ``--unlabeled-subset``.

Example::

    python -m examples.classification.prepare --work-dir examples/classification/work/data \\
        --train-limit 2000 --valid-limit 1000
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

from examples.classification import debian_sections as ds
from examples.common.stages import dir_stage, fairseq_command, say, sha256_file, stage_key, train_sentencepiece

HERE = os.path.dirname(os.path.abspath(__file__))

SPLITS = ds.SPLITS
VERSION = 2  # bump when a stage's output format changes (2: the unlabeled split)
UNLABELED = "unlabeled"  # the split of training descriptions without their sections


class PrepareError(Exception):
    """Something the user has to fix; the message says what."""


def _sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def files_digest(directory, names):
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + sha256_file(os.path.join(directory, name)).encode())
    return h.hexdigest()


TEXT_NAMES = (["pretrain.txt", f"{UNLABELED}.input0"]
              + [f"{s}.{kind}" for s in SPLITS for kind in ("input0", "label")])


def stage_text(work_dir, snapshot=ds.SNAPSHOT, train_limit=None, valid_limit=None, test_limit=None,
               pretrain_limit=None):
    """``text/``: the pre-training text, the labelled slices and the label list."""
    for name, value in (("--train-limit", train_limit), ("--valid-limit", valid_limit), ("--test-limit", test_limit),
                        ("--pretrain-limit", pretrain_limit)):
        if value is not None and value < 1:
            raise PrepareError(f"{name} must be >= 1, got {value}")
    if not os.path.exists(snapshot):
        raise PrepareError(f"corpus snapshot not found: {snapshot}")
    limits = {"train": train_limit, "valid": valid_limit, "test": test_limit}
    key = stage_key(stage="text", snapshot=sha256_file(snapshot), limits=limits, pretrain_limit=pretrain_limit,
                    version=VERSION)
    out = os.path.join(work_dir, "text")

    def build(tmp):
        splits = ds.read_tsv(snapshot)
        labels = sorted({label for label, _, _ in splits["train"]})
        counts = {}
        for split in SPLITS:
            rows = sorted(splits[split], key=lambda row: _sha(row[2]))[: limits[split]]
            missing = {label for label, _, _ in rows} - set(labels)
            if missing:
                raise PrepareError(f"{split} has sections the training split lacks: {sorted(missing)}")
            with open(os.path.join(tmp, f"{split}.input0"), "w", encoding="utf-8") as f:
                f.writelines(text + "\n" for _, _, text in rows)
            with open(os.path.join(tmp, f"{split}.label"), "w", encoding="utf-8") as f:
                f.writelines(label + "\n" for label, _, _ in rows)
            counts[split] = len(rows)
            if split == "train":  # the rest of the training descriptions, their sections left out
                rest = sorted(splits[split], key=lambda row: _sha(row[2]))[len(rows):]
                with open(os.path.join(tmp, f"{UNLABELED}.input0"), "w", encoding="utf-8") as f:
                    f.writelines(text + "\n" for _, _, text in rest)
                counts[UNLABELED] = len(rest)
        with open(os.path.join(tmp, "pretrain.txt"), "w", encoding="utf-8") as f:
            f.writelines(text + "\n" for _, _, text in splits["train"][:pretrain_limit])
        train_counts = {label: 0 for label in labels}
        for label, _, _ in splits["train"]:
            train_counts[label] += 1
        with open(os.path.join(tmp, "labels.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{label} {n}\n" for label, n in sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return {"counts": counts, "pretrain_lines": len(splits["train"][:pretrain_limit]), "classes": len(labels)}

    what = ", ".join(f"{s} {limits[s] or 'all'}" for s in SPLITS)
    return dir_stage("text", out, key, build, f"slices of the Debian sections snapshot ({what})")


def stage_spm(work_dir, text_dir, vocab_size=8000, threads=2):
    key = stage_key(stage="spm", text=sha256_file(os.path.join(text_dir, "pretrain.txt")), vocab_size=vocab_size)
    out = os.path.join(work_dir, "spm")

    def build(tmp):
        return {"vocab_size": train_sentencepiece([os.path.join(text_dir, "pretrain.txt")], tmp, vocab_size, threads)}

    return dir_stage("spm", out, key, build, f"a sentencepiece model (vocab {vocab_size}) on the training texts")


def stage_encode(work_dir, text_dir, spm_dir):
    names = ["pretrain.txt", f"{UNLABELED}.input0"] + [f"{s}.input0" for s in SPLITS]
    key = stage_key(stage="encode", text=files_digest(text_dir, names),
                    spm=sha256_file(os.path.join(spm_dir, "spm.model")))
    out = os.path.join(work_dir, "tok")

    def build(tmp):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(spm_dir, "spm.model"))
        for name in names:
            with open(os.path.join(text_dir, name), encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f]
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.writelines(" ".join(pieces) + "\n" for pieces in sp.encode(lines, out_type=str))
        return {}

    return dir_stage("encode", out, key, build, "sentencepiece-encoding the texts")


def _preprocess(args, what):
    cmd = fairseq_command("preprocess") + ["--only-source"] + args
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise PrepareError(f"fairseq-preprocess ({what}) failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")


def stage_binarize(work_dir, text_dir, tok_dir, workers=2):
    """``bin/mlm`` (pre-training) and ``bin/cls/{input0,label}`` (sentence prediction)."""
    key = stage_key(stage="binarize", tok=files_digest(tok_dir, ["pretrain.txt", f"{UNLABELED}.input0"]
                                                       + [f"{s}.input0" for s in SPLITS]),
                    labels=files_digest(text_dir, ["labels.txt"] + [f"{s}.label" for s in SPLITS]))
    out = os.path.join(work_dir, "bin")

    def build(tmp):
        mlm = os.path.join(tmp, "mlm")
        _preprocess(["--trainpref", os.path.join(tok_dir, "pretrain.txt"),
                     "--validpref", os.path.join(tok_dir, "valid.input0"),
                     "--destdir", mlm, "--workers", str(workers)], "masked-LM data")
        prefixes = {f"--{s}pref": os.path.join(tok_dir, f"{s}.input0") for s in SPLITS}
        _preprocess([a for kv in prefixes.items() for a in kv]
                    + ["--srcdict", os.path.join(mlm, "dict.txt"), "--destdir", os.path.join(tmp, "cls", "input0"),
                       "--workers", str(workers)], "sentences")
        unlabeled = os.path.join(tmp, UNLABELED)
        _preprocess(["--trainpref", os.path.join(tok_dir, f"{UNLABELED}.input0"), "--srcdict",
                     os.path.join(mlm, "dict.txt"), "--destdir", unlabeled, "--workers", str(workers)],
                    "unlabeled sentences")
        for ext in ("bin", "idx"):  # fairseq-preprocess names its splits train/valid/test only
            os.replace(os.path.join(unlabeled, f"train.{ext}"), os.path.join(tmp, "cls", "input0", f"{UNLABELED}.{ext}"))
        shutil.rmtree(unlabeled)
        labels = {f"--{s}pref": os.path.join(text_dir, f"{s}.label") for s in SPLITS}
        _preprocess([a for kv in labels.items() for a in kv]
                    + ["--srcdict", os.path.join(text_dir, "labels.txt"), "--destdir", os.path.join(tmp, "cls", "label"),
                       "--workers", "1"], "labels")
        with open(os.path.join(mlm, "dict.txt"), encoding="utf-8") as f:
            dict_size = sum(1 for _ in f)
        with open(os.path.join(text_dir, "labels.txt"), encoding="utf-8") as f:
            classes = sum(1 for _ in f)
        return {"dict_size": dict_size, "classes": classes}

    return dir_stage("binarize", out, key, build, "fairseq-preprocess --only-source (masked LM, sentences, labels)")


def read_stage(out_dir):
    with open(os.path.join(out_dir, ".stage.json"), encoding="utf-8") as f:
        return json.load(f)


def prepare(work_dir, train_limit=None, valid_limit=None, test_limit=None, pretrain_limit=None, vocab_size=8000,
            workers=2, snapshot=ds.SNAPSHOT):
    """Run all stages; returns the data-bin directories, the counts and the number of classes."""
    text = stage_text(work_dir, snapshot, train_limit, valid_limit, test_limit, pretrain_limit)
    spm_dir = stage_spm(work_dir, text, vocab_size, workers)
    tok = stage_encode(work_dir, text, spm_dir)
    bins = stage_binarize(work_dir, text, tok, workers)
    info = read_stage(text)
    return {
        "mlm_bin": os.path.join(bins, "mlm"),
        "cls_bin": os.path.join(bins, "cls"),
        "unlabeled_subset": UNLABELED,
        "text_dir": text,
        "spm_model": os.path.join(spm_dir, "spm.model"),
        "counts": info["counts"],
        "pretrain_lines": info["pretrain_lines"],
        "classes": read_stage(bins)["classes"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", required=True)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--valid-limit", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--pretrain-limit", type=int, help="pre-train on only the first N training descriptions")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocabulary (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    try:
        out = prepare(a.work_dir, a.train_limit, a.valid_limit, a.test_limit, a.pretrain_limit, a.vocab_size,
                      a.workers)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
