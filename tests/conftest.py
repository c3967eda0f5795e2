"""Shared fixtures: a tiny real data-bin from the shipped corpus snapshot."""

import lzma
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(REPO, "examples", "translation", "data", "debian-de-en.tsv.xz")
BIN = os.path.dirname(sys.executable)
SIZES = {"train": 240, "valid": 24, "test": 24}


def run(tool, *args, cwd, env=None):
    """Run a console script of this virtualenv; fail the test with its output if it fails."""
    proc = subprocess.run(
        [os.path.join(BIN, tool), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory):
    """A directory holding ``bin/``: de-en, 240/24/24 sentence pairs, joined dictionary.

    Tests write their checkpoints into their own sub-directories of it.
    """
    work = tmp_path_factory.mktemp("e2e")
    pairs = {split: [] for split in SIZES}
    with lzma.open(SNAPSHOT, "rt", encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            split, de, en = line.rstrip("\n").split("\t")
            if len(pairs[split]) < SIZES[split] and len(de.split()) <= 20:
                pairs[split].append((de, en))
    for split, rows in pairs.items():
        assert len(rows) == SIZES[split]
        for side, lang in ((0, "de"), (1, "en")):
            with open(work / f"{split}.{lang}", "w", encoding="utf-8") as f:
                f.writelines(re.sub(r"([.,:;()])", r" \1 ", r[side]).lower() + "\n" for r in rows)
    run(
        "fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
        "--trainpref", "train", "--validpref", "valid", "--testpref", "test",
        "--joined-dictionary", "--destdir", "bin", "--workers", "1", cwd=work,
    )
    return work
