"""What a results file records about how it was made: the command, the date, the code's commit
and the machine.
"""

import os
import platform
import shlex
import subprocess
import time
from importlib.metadata import packages_distributions, version

from examples.common.base import REPO, rel


def command_line(module, argv):
    """How the demo was invoked, as the results record it: ``python -m <module> <argv>``."""
    return " ".join(["python", "-m", module] + [shlex.quote(rel(a)) for a in argv])


def utc_now(seconds=None):
    """The UTC time of ``seconds`` since the epoch (default: now), as the records write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def git_commit():
    """The code's commit, with ``+changes`` when the checkout differs from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine_info(threads, jobs):
    import torch

    info = {
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "jobs": jobs,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    # the distribution that installed the fairseq package (ve-fairseq, fairseq-fixed or fairseq itself)
    dists = packages_distributions().get("fairseq")
    if dists:
        info["fairseq"] = f"{dists[0]} {version(dists[0])}"
    return info
