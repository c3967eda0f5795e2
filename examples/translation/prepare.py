#!/usr/bin/env python3
"""Prepare the Debian German-English corpus for fairseq.

Stages, each written atomically into ``--work-dir`` and skipped when already
done for the same inputs:

1. ``corpus``   the shipped snapshot (default), a rebuild from apt
                (``--from-apt``), or your own ``{train,valid,test}.{de,en}``
                files (``--text-dir``), as line-aligned text files;
2. ``slice``    optional first ``--limit`` train pairs (and ``--valid-limit``,
                ``--test-limit``) for small runs;
3. ``spm``      a joint sentencepiece model trained on the train split only;
4. ``encode``   train/valid/test encoded into sentencepiece pieces;
5. ``binarize`` ``fairseq-preprocess --source-lang de --target-lang en
                --joined-dictionary`` into ``<work-dir>/data-bin``.

Example::

    python -m examples.translation.prepare --work-dir examples/translation/work/quick \\
        --limit 20000 --valid-limit 500 --vocab-size 6000
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

from examples.common.stages import (
    atomic_write, dir_stage, fairseq_command, read_json, say, sha256_file, show_path, stage_key, train_sentencepiece,
)
from examples.translation import debian_corpus as dc
from examples.translation import debian_snapshot

SRC, TGT = "de", "en"


class PrepareError(Exception):
    """Bad input to the preparation (the message names the file)."""


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def check_aligned(prefix, splits=debian_snapshot.SPLITS, langs=(SRC, TGT)):
    """Raise :class:`PrepareError` unless ``{prefix}/{split}.{lang}`` exist and align."""
    counts = {}
    for split in splits:
        n = {}
        for lang in langs:
            path = os.path.join(prefix, f"{split}.{lang}")
            if not os.path.exists(path):
                raise PrepareError(f"missing input file: {path}")
            n[lang] = count_lines(path)
        if n[langs[0]] != n[langs[1]]:
            a, b = (os.path.join(prefix, f"{split}.{lang}") for lang in langs)
            raise PrepareError(f"misaligned input: {b} has {n[langs[1]]} lines but {a} has {n[langs[0]]}")
        if n[langs[0]] == 0:
            raise PrepareError(f"empty input: {os.path.join(prefix, f'{split}.{langs[0]}')} has no lines")
        counts[split] = n[langs[0]]
    return counts


def files_digest(directory, names):
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode())
        h.update(sha256_file(os.path.join(directory, name)).encode())
    return h.hexdigest()[:16]


def text_names(splits=debian_snapshot.SPLITS):
    return [f"{s}.{lang}" for s in splits for lang in (SRC, TGT)]


def stage_info(out_dir):
    return read_json(os.path.join(out_dir, ".stage.json"))


# ---------------------------------------------------------------------------
# stages


def stage_corpus(work_dir, from_apt=False, text_dir=None, snapshot=debian_snapshot.SNAPSHOT):
    out = os.path.join(work_dir, "corpus")
    if text_dir:
        counts = check_aligned(text_dir)
        key = stage_key(stage="corpus", text=files_digest(text_dir, text_names()))

        def build(tmp):
            for name in text_names():
                shutil.copyfile(os.path.join(text_dir, name), os.path.join(tmp, name))
            return {"counts": counts, "source": "text-dir"}

        return dir_stage("corpus", out, key, build, f"copying {text_dir}")
    if from_apt:
        # the builder has its own stages (and skips them when done)
        corpus_work = os.path.join(work_dir, "corpus-build")
        de, en, release = dc.fetch_indexes(os.path.join(corpus_work, "apt"))
        tsv, info = dc.build(de, en, corpus_work)
        debian_snapshot.compare_with_snapshot(tsv, snapshot)
        key = stage_key(stage="corpus", corpus=info["corpus_sha256"])
        source, detail = tsv, "rebuilt from apt"
    else:
        if not os.path.exists(snapshot):
            raise PrepareError(f"corpus snapshot not found: {snapshot} (use --from-apt to rebuild it)")
        key = stage_key(stage="corpus", snapshot=sha256_file(snapshot))
        source, detail = snapshot, f"reading the snapshot {show_path(snapshot)}"

    def build(tmp):
        splits = debian_snapshot.read_tsv(source)
        for s in debian_snapshot.SPLITS:
            if not splits[s]:
                raise PrepareError(f"{source} has no {s} pairs")
        debian_snapshot.export_plain(splits, tmp)
        return {"counts": {s: len(splits[s]) for s in debian_snapshot.SPLITS}, "source": os.path.basename(source)}

    return dir_stage("corpus", out, key, build, detail)


def stage_slice(work_dir, corpus_dir, limit=None, valid_limit=None, test_limit=None):
    limits = {"train": limit, "valid": valid_limit, "test": test_limit}
    if not any(limits.values()):
        return corpus_dir
    for s, n in limits.items():
        if n is not None and n <= 0:
            raise PrepareError(f"--{'limit' if s == 'train' else s + '-limit'} must be positive, got {n}")
    check_aligned(corpus_dir)
    key = stage_key(stage="slice", corpus=stage_info(corpus_dir)["key"], limits=limits)
    out = os.path.join(work_dir, "text")

    def build(tmp):
        counts = {}
        for s in debian_snapshot.SPLITS:
            for lang in (SRC, TGT):
                with open(os.path.join(corpus_dir, f"{s}.{lang}"), encoding="utf-8") as f:
                    lines = f.readlines()
                if limits[s]:
                    lines = lines[: limits[s]]
                with atomic_write(os.path.join(tmp, f"{s}.{lang}")) as g:
                    g.writelines(lines)
                counts[s] = len(lines)
        return {"counts": counts}

    detail = ", ".join(f"{s} {n}" for s, n in limits.items() if n)
    return dir_stage("slice", out, key, build, f"first {detail} pairs")


def stage_spm(work_dir, text_dir, vocab_size=8000, threads=2):
    counts = check_aligned(text_dir)
    key = stage_key(
        stage="spm", train=files_digest(text_dir, ["train.de", "train.en"]), vocab_size=vocab_size, version=1
    )
    out = os.path.join(work_dir, "spm")

    def build(tmp):
        inputs = [os.path.join(text_dir, "train.de"), os.path.join(text_dir, "train.en")]
        return {"vocab_size": train_sentencepiece(inputs, tmp, vocab_size, threads), "train_pairs": counts["train"]}

    return dir_stage("spm", out, key, build, f"training a joint sentencepiece model (vocab {vocab_size}) on train")


def stage_encode(work_dir, text_dir, spm_dir, threads=2):
    key = stage_key(
        stage="encode", text=files_digest(text_dir, text_names()), spm=sha256_file(os.path.join(spm_dir, "spm.model"))
    )
    out = os.path.join(work_dir, "tok")

    def build(tmp):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(spm_dir, "spm.model"))
        for name in text_names():
            with open(os.path.join(text_dir, name), encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f]
            pieces = sp.encode(lines, out_type=str, num_threads=threads)
            with atomic_write(os.path.join(tmp, name)) as g:
                for p in pieces:
                    g.write(" ".join(p) + "\n")
        return {}

    return dir_stage("encode", out, key, build, "sentencepiece-encoding train/valid/test")


def stage_binarize(work_dir, tok_dir, workers=2):
    check_aligned(tok_dir)
    # not keyed on ``workers``: fairseq-preprocess writes the same files whatever their number
    key = stage_key(stage="binarize", tok=files_digest(tok_dir, text_names()))
    out = os.path.join(work_dir, "data-bin")

    def build(tmp):
        cmd = fairseq_command("preprocess") + [
            "--source-lang", SRC, "--target-lang", TGT,
            "--trainpref", os.path.join(tok_dir, "train"),
            "--validpref", os.path.join(tok_dir, "valid"),
            "--testpref", os.path.join(tok_dir, "test"),
            "--destdir", tmp,
            "--joined-dictionary",
            "--workers", str(workers),
        ]  # fmt: skip
        log = os.path.join(tmp, "preprocess.out")
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            with open(log) as f:
                tail = f.read()[-3000:]
            raise PrepareError(f"fairseq-preprocess failed (exit {proc.returncode}):\n{tail}")
        with open(os.path.join(tmp, f"dict.{SRC}.txt")) as f:
            return {"dict_size": sum(1 for _ in f)}

    return dir_stage("binarize", out, key, build, "fairseq-preprocess --joined-dictionary")


def prepare(
    work_dir,
    from_apt=False,
    text_dir=None,
    limit=None,
    valid_limit=None,
    test_limit=None,
    vocab_size=8000,
    workers=2,
    snapshot=debian_snapshot.SNAPSHOT,
):
    """Run all stages; returns a dict of the stage directories."""
    os.makedirs(work_dir, exist_ok=True)
    corpus = stage_corpus(work_dir, from_apt=from_apt, text_dir=text_dir, snapshot=snapshot)
    text = stage_slice(work_dir, corpus, limit, valid_limit, test_limit)
    counts = check_aligned(text)
    say("pairs: " + ", ".join(f"{s} {counts[s]}" for s in debian_snapshot.SPLITS))
    spm_dir = stage_spm(work_dir, text, vocab_size, threads=workers)
    tok = stage_encode(work_dir, text, spm_dir, threads=workers)
    data_bin = stage_binarize(work_dir, tok, workers=workers)
    return {
        "work_dir": work_dir,
        "text": text,
        "spm_model": os.path.join(spm_dir, "spm.model"),
        "tok": tok,
        "data_bin": data_bin,
        "counts": counts,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--work-dir", required=True, help="where the stages write")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-apt", action="store_true", help="rebuild the corpus from apt instead of the snapshot")
    src.add_argument("--text-dir", help="use {train,valid,test}.{de,en} from this dir instead")
    p.add_argument("--snapshot", default=debian_snapshot.SNAPSHOT, help="corpus snapshot (default: the shipped one)")
    p.add_argument("--limit", type=int, help="keep only the first N train pairs")
    p.add_argument("--valid-limit", type=int, help="keep only the first N valid pairs")
    p.add_argument("--test-limit", type=int, help="keep only the first N test pairs")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocabulary (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    try:
        out = prepare(
            args.work_dir, args.from_apt, args.text_dir, args.limit, args.valid_limit, args.test_limit,
            args.vocab_size, args.workers, args.snapshot,
        )  # fmt: skip
    except (PrepareError, dc.CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in out.items() if k != "counts"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
