"""What the tests of the examples share: the repository's root, the hand-made apt index files,
and an example module run as its users run it (``python -m``, from the repository's root)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APT_FIXTURES = os.path.join(REPO, "tests", "fixtures", "apt")


def run_module(module, *args, timeout=600, env=None):
    """``python -m module args`` from the repository's root; the finished process, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
        cwd=REPO,
    )
