"""Shared fixtures: a tiny real data-bin from the shipped corpus snapshot."""

import os
import re
import subprocess
import sys

import pytest
import torch

from examples.translation import debian_snapshot

BIN = os.path.dirname(sys.executable)
SIZES = {"train": 240, "valid": 24, "test": 24}

# tests that need a GPU run where there is one and are skipped elsewhere (CI has none);
# on a GPU machine: pytest -k cuda
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


def run_tool(tool, *args, cwd, env=None):
    """Run a console script of this virtualenv; return (exit code, stdout + stderr)."""
    proc = subprocess.run(
        [os.path.join(BIN, tool), *map(str, args)],
        cwd=cwd, capture_output=True, text=True, env=env,
    )
    return proc.returncode, proc.stdout + proc.stderr


def on_a_free_port(start, tries=3):
    """``start(port)`` -> ``(exit code, output)`` on a port found free; where another process
    took the port before the command bound it (it reports EADDRINUSE), again on another."""
    from rdrop_seq.launch import free_port
    from rdrop_seq.launch.supervisor import PORT_IN_USE

    for _ in range(tries):
        code, out = start(free_port())
        if code == 0 or not any(m.decode() in out for m in PORT_IN_USE):
            break
    return code, out


def run(tool, *args, cwd, env=None):
    """:func:`run_tool` that fails the test with the tool's output if it fails."""
    code, out = run_tool(tool, *args, cwd=cwd, env=env)
    assert code == 0, f"{tool} failed:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory):
    """A directory holding ``bin/``: de-en, 240/24/24 sentence pairs, joined dictionary.

    Tests write their checkpoints into their own sub-directories of it.
    """
    work = tmp_path_factory.mktemp("e2e")
    snapshot = debian_snapshot.load_snapshot()
    pairs = {split: [p for p in snapshot[split] if len(p[0].split()) <= 20][:n] for split, n in SIZES.items()}
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
