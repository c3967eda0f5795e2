"""What every demo module uses: paths, runs, the demos' error and messages, fairseq flags and
commands as shown, a training process's environment, an evaluation tool's run, the setup checks."""

import os
import shlex
import subprocess
import sys

from examples.common.stages import show_path, speaker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(REPO, "rdrop_seq")
# a demo's runs (each trained per seed) and the pairs it compares (``(a, b)``: b against a),
# unless its parser names more (demo_parser's ``runs``, ``comparisons``)
RUNS = ("baseline", "rdrop")
COMPARISONS = (("baseline", "rdrop"),)
# how tables, plots and messages name a run
RUN_LABELS = {"baseline": "baseline", "rdrop": "R-Drop", "semi": "semi-sup."}


def pair_name(pair):
    """A comparison's key in results files: ``("baseline", "semi")`` -> ``"semi_vs_baseline"``."""
    return f"{pair[1]}_vs_{pair[0]}"


class DemoError(Exception):
    """Something the user has to fix, or a failed tool; the message says which."""


say = speaker("demo")


def rel(path):
    """A path relative to the repository when below it (for what is written into results)."""
    return show_path(path, REPO)


def flags(d):
    """``{"max-epoch": 3, "cpu": True}`` -> ``["--max-epoch", "3", "--cpu"]``."""
    out = []
    for k, v in d.items():
        if v is not None and v is not False:
            out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out


def display(cmd):
    """A command as shown and recorded: tool names bare, repository paths relative."""
    head = os.path.basename(cmd[0])
    head = "python" if cmd[0] == sys.executable else head if head.startswith("fairseq-") else rel(cmd[0])
    return " ".join([head] + [shlex.quote(rel(c)) for c in cmd[1:]])


def train_run_flags(save_dir, seed):
    """The fairseq-train flags every demo's runs share: the seed, no data-loading workers, where the
    run saves and logs (json, every 20 updates, ``train.log`` in ``save_dir``), and the plugin dir:
    it registers the R-Drop criterions and architectures, and makes torch's weights-only loader
    accept fairseq checkpoints when a run resumes."""
    return ["--seed", str(seed), "--num-workers", "0", "--save-dir", save_dir, "--log-format", "json",
            "--log-interval", "20", "--log-file", os.path.join(save_dir, "train.log"), "--user-dir", USER_DIR]


def device_flags():
    """``--cpu`` where there is no CUDA device."""
    import torch

    return [] if torch.cuda.is_available() else ["--cpu"]


def child_env(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    # idle OpenMP threads sleep instead of spinning: on a CPU shared with
    # other jobs, spinning threads slow training down by up to ten times
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore")
    env["PYTHONPATH"] = REPO + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else REPO
    return env


def run_tool(cmd, threads, what, shown=None):
    """Run an evaluation tool's ``cmd`` (shown as ``shown``, by default ``cmd`` itself) in a training
    process's environment; its output (stdout and stderr together).  Raises :class:`DemoError`
    with the output's tail when it fails (``what`` names it: "fairseq-generate (rdrop seed 1)")."""
    say("  " + display(shown or cmd))
    proc = subprocess.run(cmd, env=child_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed:\n{proc.stdout[-3000:]}")
    return proc.stdout


def check_fairseq(args, criterion):
    """The checks every demo makes last, before anything runs: importing the plugin registers
    ``criterion`` (imports fairseq: a few seconds), and the results dir is writable and outside
    the work dir (both absolute: :func:`examples.common.cli.parse_demo_args` makes them so)."""
    code = ("import sys; import rdrop_seq; from fairseq.criterions import CRITERION_REGISTRY as R; "
            f"sys.exit(0 if '{criterion}' in R else 3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=child_env(args.threads))
    if proc.returncode != 0:
        raise DemoError(f"the criterion {criterion} is not available from {rel(USER_DIR)}:\n"
                        f"{proc.stderr.strip()[-2000:]}")
    if args.results_dir == args.work_dir or args.results_dir.startswith(args.work_dir + os.sep):
        raise DemoError("--results-dir must not be inside --work-dir")
    os.makedirs(args.results_dir, exist_ok=True)
    if not os.access(args.results_dir, os.W_OK):
        raise DemoError(f"results dir is not writable: {args.results_dir}")
