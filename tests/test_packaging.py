"""Import-time behaviour: checkpoint loading on torch >= 2.6, errors, entry points."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

import rdrop_seq
from rdrop_seq.cli import with_user_dir


class NotAllowListed:
    pass


def test_fairseq_checkpoints_load_with_weights_only_still_on(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"args": argparse.Namespace(arch="transformer"), "w": torch.ones(2)}, path)
    state = torch.load(path)  # default: weights_only=True on torch >= 2.6
    assert state["args"].arch == "transformer"
    bad = tmp_path / "bad.pt"
    torch.save({"x": NotAllowListed()}, bad)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(bad)


def test_missing_fairseq_error_says_what_to_install():
    code = "import sys; sys.modules['fairseq'] = None; import rdrop_seq"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "pip install ve-fairseq==0.12.3" in proc.stderr


def test_user_dir_is_printed_and_is_the_package():
    proc = subprocess.run(
        [sys.executable, "-m", "rdrop_seq", "--user-dir"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert os.path.samefile(path, os.path.dirname(rdrop_seq.__file__))
    assert os.path.exists(os.path.join(path, "__init__.py"))


def test_rdrop_train_adds_the_user_dir_unless_given():
    assert with_user_dir(["data"])[:2] == ["--user-dir", os.path.dirname(rdrop_seq.__file__)]
    assert with_user_dir(["data", "--user-dir", "x"]) == ["data", "--user-dir", "x"]
    assert with_user_dir(["--user-dir=x"]) == ["--user-dir=x"]
