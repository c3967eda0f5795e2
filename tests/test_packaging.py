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


def test_another_plugin_gets_everything_by_importing_rdrop_seq(tmp_path):
    """fairseq takes one --user-dir: a project with its own plugin imports rdrop_seq from it."""
    plugin = tmp_path / "my_plugin"
    plugin.mkdir()
    (plugin / "__init__.py").write_text("import rdrop_seq  # noqa: F401\n")
    code = (
        "import argparse, sys\n"
        "from fairseq import utils\n"
        "utils.import_user_module(argparse.Namespace(user_dir=sys.argv[1]))\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        "from fairseq.models import ARCH_MODEL_REGISTRY\n"
        "import torch, argparse\n"
        "names = ['rdrop_label_smoothed_cross_entropy', 'rdrop_cross_entropy', 'rdrop_adaptive_loss']\n"
        "assert all(n in CRITERION_REGISTRY for n in names), names\n"
        "assert 'rdrop_transformer_lm_adaptive_small' in ARCH_MODEL_REGISTRY\n"
        "assert argparse.Namespace in torch.serialization.get_safe_globals()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(plugin)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
