"""What the two demos share: baseline-vs-R-Drop training runs, their logs and results.

A demo trains the same model twice with the same seed and settings (stock
criterion, then the R-Drop criterion), evaluates both and writes a results
JSON and a PNG of the validation curves.  This module holds the parts that do
not depend on the task: resumable training runs, reading fairseq's json log,
the results table, plot and bookkeeping.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time

from examples.pipeline_stages import read_json, sha256_file, stage_key, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "rdrop_seq")
RUNS = ("baseline", "rdrop")


class DemoError(Exception):
    """Something the user has to fix, or a failed tool; the message says which."""


def say(msg):
    print(f"[demo] {msg}", flush=True)


def rel(path):
    """A path relative to the repository (for what is written into results)."""
    r = os.path.relpath(os.path.abspath(path), REPO)
    return path if r.startswith("..") else r


def flags(d):
    """``{"max-epoch": 3, "cpu": True}`` -> ``["--max-epoch", "3", "--cpu"]``."""
    out = []
    for k, v in d.items():
        if v is None or v is False:
            continue
        out.append(f"--{k}")
        if v is not True:
            out.append(str(v))
    return out


def display(cmd):
    """A command as shown and recorded: tool names bare, repository paths relative."""
    head = os.path.basename(cmd[0])
    head = "python" if cmd[0] == sys.executable else head if head.startswith("fairseq-") else rel(cmd[0])
    return " ".join([head] + [shlex.quote(rel(c)) for c in cmd[1:]])


def has_cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def child_env(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    # idle OpenMP threads sleep instead of spinning: on a CPU shared with
    # other jobs, spinning threads slow training down by up to ten times
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore")
    env["PYTHONPATH"] = REPO + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else REPO
    return env


def check_criterion_registers(criterion, threads):
    """Fail early unless importing the plugin registers ``criterion`` (imports fairseq)."""
    code = (
        "import sys; import rdrop_seq; "
        "from fairseq.criterions import CRITERION_REGISTRY as R; "
        f"sys.exit(0 if '{criterion}' in R else 3)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=child_env(threads))
    if proc.returncode != 0:
        raise DemoError(
            f"the criterion {criterion} is not available from {rel(USER_DIR)}:\n"
            f"{proc.stderr.strip()[-2000:]}"
        )


def check_results_dir(results_dir, work_dir):
    results_dir, work_dir = os.path.abspath(results_dir), os.path.abspath(work_dir)
    if results_dir == work_dir or results_dir.startswith(work_dir + os.sep):
        raise DemoError("--results-dir must not be inside --work-dir")
    os.makedirs(results_dir, exist_ok=True)
    if not os.access(results_dir, os.W_OK):
        raise DemoError(f"results dir is not writable: {results_dir}")


# ---------------------------------------------------------------------------
# command line


def seed_list(text):
    """``"1,2,3"`` -> ``(1, 2, 3)`` (argparse type of ``--seeds``)."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is named twice: {text!r}")
    return seeds


def demo_parser(doc, modes, alpha, alpha_note, dropout):
    """The options both demos take; a demo adds its own before :func:`parse_demo_args`."""
    p = argparse.ArgumentParser(
        allow_abbrev=False,  # the demo passes its argv on to one process per run
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", default="quick", choices=sorted(modes), help="default: %(default)s")
    mode_alpha = {m: s.get("alpha", alpha) for m, s in modes.items()}
    p.add_argument("--alpha", type=float,
                   help=f"R-Drop KL weight (default: the mode's, "
                        + ", ".join(f"{m} {a:g}" for m, a in sorted(mode_alpha.items()))
                        + f"; {alpha:g} is {alpha_note}); another value trains its R-Drop runs in "
                        "rdrop-alpha<A>-seed<S>/ beside the default ones and writes <mode>-alpha<A>.json, "
                        "so an alpha sweep keeps every run and shares the baselines")
    p.set_defaults(mode_alpha=mode_alpha)
    mode_dropout = {m: s.get("dropout", dropout) for m, s in modes.items()}
    p.add_argument("--dropout", type=float,
                   help="override the dropout of both runs (default: the mode's, "
                        + ", ".join(f"{m} {d:g}" for m, d in sorted(mode_dropout.items())) + "); another value trains both "
                        "runs in baseline-dropout<P>/ and rdrop-dropout<P>[-alpha<A>]/ and writes "
                        "<mode>-dropout<P>[-alpha<A>].json, beside the default runs")
    p.set_defaults(mode_dropout=mode_dropout)
    p.add_argument("--seeds", type=seed_list, metavar="S[,S...]",
                   help="the seeds; each trains both runs (default: the mode's, "
                        + ", ".join(f"{m} {','.join(map(str, s['seeds']))}" for m, s in sorted(modes.items()))
                        + "); other seeds than the mode's go into the results name")
    p.set_defaults(mode_seeds={m: tuple(s["seeds"]) for m, s in modes.items()})
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per training process (default: %(default)s: on a few cores, one process "
                        "per core with one thread each trains the seeds fastest)")
    p.add_argument("--jobs", type=int,
                   help="training processes at once (default: the CPU cores divided by --threads); each "
                        "trains and evaluates one run of one seed, and the demo then compares them")
    p.add_argument("--max-epoch", type=int, help="override the mode's epoch budget")
    p.add_argument("--patience", type=int, help="override the mode's early-stopping patience (epochs)")
    p.add_argument("--run", choices=RUNS, dest="only_run",
                   help="train and evaluate only this run (of each seed), and write no results file; a later "
                        "invocation without --run finds it done and writes the results")
    p.add_argument("--status", action="store_true",
                   help="only print where the runs of this mode (and --alpha/--dropout/--seeds) stand: state, "
                        "epochs, time so far and their validation values per epoch, also while they train")
    return p


def text_dir_name(args):
    """The name of ``--text-dir`` (the user's own data) for work dirs and results files, or None."""
    return args.text_dir and os.path.basename(os.path.abspath(args.text_dir))


def text_dir_source(args):
    """Where ``--text-dir``'s data came from, as the results files record it."""
    return f"text files in {rel(os.path.abspath(args.text_dir))}"


def parse_demo_args(p, argv, example_dir, data_name=None):
    """Parse; work and results dirs default to ``<example_dir>/work/<mode>`` and ``/results``.

    ``data_name(args)``: a name for data other than the demo's own (e.g. the
    user's text directory), or None; it goes into the default work dir
    (``work/<mode>-<name>``) and the results files' name.
    """
    shown = rel(example_dir)
    p.add_argument("--work-dir", help=f"default: {shown}/work/<mode>")
    p.add_argument("--results-dir", default=os.path.join(example_dir, "results"),
                   help=f"default: {shown}/results")
    args = p.parse_args(argv)
    name = data_name(args) if data_name else None
    args.data_name = re.sub(r"[^\w.-]+", "_", name) if name else None
    default_work = args.mode + (f"-{args.data_name}" if args.data_name else "")
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(example_dir, "work", default_work))
    args.results_dir = os.path.abspath(args.results_dir)
    args.default_seeds = args.mode_seeds[args.mode]
    args.default_dropout = args.mode_dropout[args.mode]
    args.default_alpha = args.mode_alpha[args.mode]
    if args.alpha is None:
        args.alpha = args.default_alpha
    if args.seeds is None:
        args.seeds = args.default_seeds
    if args.jobs is None:
        args.jobs = max(1, (os.cpu_count() or 1) // max(1, args.threads))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def runs_to_do(args):
    """The runs this invocation trains: both, or the one named by ``--run``."""
    return RUNS if args.only_run is None else (args.only_run,)


def _alpha_suffix(args):
    return "" if args.alpha == args.default_alpha else f"-alpha{args.alpha:g}"


def dropout_override(args):
    """The ``--dropout`` value for fairseq when it differs from the demo's default, else None."""
    if args.dropout is None or args.dropout == args.default_dropout:
        return None
    return f"{args.dropout:g}"


def _dropout_suffix(args):
    value = dropout_override(args)
    return "" if value is None else f"-dropout{value}"


def max_tokens_override(args):
    """The ``--max-tokens`` value when a demo takes it and it differs from its default, else None."""
    value = getattr(args, "max_tokens", None)
    if value is None or value == args.default_max_tokens:
        return None
    return value


def _settings_suffix(args):
    """``-tokens<N>`` and ``-dropout<P>`` for settings other than the defaults (both runs)."""
    tokens = max_tokens_override(args)
    return ("" if tokens is None else f"-tokens{tokens}") + _dropout_suffix(args)


def run_dir(args, run, seed):
    """Where ``run`` of ``seed`` trains: ``<work-dir>/baseline-seed<S>``, ``/rdrop-seed<S>``,
    ``/rdrop-alpha<A>-seed<S>`` for another alpha; another batch size or dropout adds
    ``-tokens<N>`` or ``-dropout<P>`` to both (``baseline-dropout<P>-seed<S>``)."""
    alpha = _alpha_suffix(args) if run == "rdrop" else ""
    return os.path.join(args.work_dir, f"{run}{_settings_suffix(args)}{alpha}-seed{seed}")


# options that change the results but not a run's directory: (attribute, name in the results name)
NAMED_OVERRIDES = (("limit", "limit"), ("train_lines", "lines"), ("train_limit", "limit"), ("beam", "beam"),
                   ("max_epoch", "epochs"), ("patience", "patience"))


def results_stem(args):
    """The results files' name: ``<mode>``, plus ``-<data name>`` for other data, and for every
    setting other than the mode's: ``-tokens<N>``, ``-dropout<P>``, ``-limit<N>``/``-lines<N>``,
    ``-beam<N>``, ``-epochs<N>``, ``-patience<N>``, ``-alpha<A>`` and ``-seeds<S>_<S>...``;
    no two settings share a name."""
    data = f"-{args.data_name}" if getattr(args, "data_name", None) else ""
    named = "".join(f"-{label}{getattr(args, attr)}" for attr, label in NAMED_OVERRIDES
                    if getattr(args, attr, None) is not None)
    seeds = "" if tuple(args.seeds) == tuple(args.default_seeds) else "-seeds" + "_".join(map(str, args.seeds))
    return args.mode + data + _settings_suffix(args) + named + _alpha_suffix(args) + seeds


def only_one_run(args):
    """After a ``--run`` invocation: say what comes next (there is no comparison to write)."""
    if args.only_run is None:
        return False
    other = [r for r in RUNS if r != args.only_run][0]
    say(f"only the {args.only_run} run was asked for (--run): no results file written; when the "
        f"{other} run is done too, run the same command without --run to write the results")
    return True


def check_demo_args(args):
    """Refuse bad values of the shared options (before anything runs)."""
    if args.alpha < 0:
        raise DemoError(f"--alpha must be >= 0, got {args.alpha}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise DemoError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.threads < 1:
        raise DemoError(f"--threads must be >= 1, got {args.threads}")
    if args.max_epoch is not None and args.max_epoch < 1:
        raise DemoError(f"--max-epoch must be >= 1, got {args.max_epoch}")
    if args.patience is not None and args.patience < 1:
        raise DemoError(f"--patience must be >= 1, got {args.patience}")
    if args.jobs < 1:
        raise DemoError(f"--jobs must be >= 1, got {args.jobs}")
    if any(s < 0 for s in args.seeds):
        raise DemoError(f"--seeds must be >= 0, got {','.join(map(str, args.seeds))}")


def train_flags(args, setting):
    """The mode's training flags with ``--max-epoch``/``--patience`` overrides applied."""
    train = dict(setting["train"])
    if args.max_epoch is not None:
        train["max-epoch"] = args.max_epoch
    if args.patience is not None:
        train["patience"] = args.patience
    return flags(train)


# ---------------------------------------------------------------------------
# training runs


# The flags that set a run's budget, not its settings: a finished run whose
# budget was used up is continued (from checkpoint_last.pt) when it grows.
BUDGET_FLAGS = ("--max-epoch", "--patience")


def _budget(cmd):
    return {f: cmd[i + 1] for i, f in enumerate(cmd[:-1]) if f in BUDGET_FLAGS}


def _full_key(cmd):
    """The run's key: its command, paths aside (tool and absolute paths)."""
    return stage_key(cmd=[c for c in cmd[1:] if not os.path.isabs(c)])


def _settings_key(cmd):
    """The key of everything but the budget flags."""
    kept, skip = [], False
    for c in cmd[1:]:
        if skip:
            skip = False
        elif c in BUDGET_FLAGS:
            skip = True
        elif not os.path.isabs(c):
            kept.append(c)
    return stage_key(cmd=kept)


def _match(record, cmd, data=None):
    """``"same"`` (settings and budget), ``"budget"`` (only the budget differs) or None.

    ``data``: the key of the binarised data the run trains on; a record of other
    data is no match.  A record without a settings key (written by an earlier
    version of the demos) is no match either: its run is started afresh, the
    old directory kept aside.
    """
    if data is not None and record.get("data_key") != data:
        return None
    if record.get("settings_key") != _settings_key(cmd):
        return None
    return "same" if record.get("budget") == _budget(cmd) else "budget"


def _record(cmd, data=None, **extra):
    record = dict(key=_full_key(cmd), settings_key=_settings_key(cmd), budget=_budget(cmd))
    if data is not None:
        record["data_key"] = data
    return dict(record, **extra)


def data_key(data_bin):
    """A hash of what a training run reads from ``data_bin``: its dictionaries, ``.bin``, ``.idx`` files."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(data_bin)):
        if name.endswith((".bin", ".idx")) or (name.startswith("dict") and name.endswith(".txt")):
            h.update(name.encode() + b"\0" + sha256_file(os.path.join(data_bin, name)).encode())
    return h.hexdigest()[:16]


# how often a running training's time so far is written to its started.json
TIME_RECORD_SECONDS = 60


def _count_time(started, cmd, data, seconds, history, stopped=False):
    """Record the seconds an unfinished run has trained so far, for when it resumes
    (``stopped``: its training process has ended), with its ``history`` of segments."""
    extra = {"stopped": True} if stopped else {}
    write_json(started, _record(cmd, data, prior_seconds=round(seconds, 1), history=history, **extra))


def _segment(threads, t0, end):
    """One training process's entry of a run's history: when it started, with how many threads,
    how long it ran and how it ended (``running``, ``finished``, ``failed``, ``interrupted``)."""
    start = datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"start": start, "threads": threads, "seconds": round(time.time() - t0, 1), "end": end}


def _with_log(info, save_dir, metrics):
    """A finished run's record with its curve read afresh from its log (this parser's fields)."""
    log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
    return dict(info, epochs=log["epochs"], updates=log["updates"] or info.get("updates"))


def stopped_early(budget, trained):
    """Whether a finished run of ``budget`` that trained ``trained`` epochs stopped before its
    ``--max-epoch`` (on ``--patience``)."""
    max_epoch = int(budget.get("--max-epoch", 0)) or None
    return max_epoch is not None and trained < max_epoch


def _epochs(n):
    return f"{n} epoch{'' if n == 1 else 's'}"


def _refuse_fewer_epochs(run, save_dir, cmd, trained):
    """A DemoError if the run in ``save_dir`` has trained more epochs than ``cmd``'s ``--max-epoch``."""
    new_max = int(_budget(cmd).get("--max-epoch", 0)) or None
    if new_max is not None and new_max < trained:
        raise DemoError(
            f"train {run}: {rel(save_dir)} holds a run of {trained} epochs; --max-epoch {new_max} "
            "would not undo that: give a larger --max-epoch, or another --work-dir"
        )


def train_run(cmd, save_dir, run, threads, metrics, data=None):
    """Run ``fairseq-train`` ``cmd`` (which saves into ``save_dir``), or skip/resume it.

    A run finished with the same command (paths aside) is skipped; one that
    finished with the same settings but a smaller ``--max-epoch`` it used up
    is continued from its ``checkpoint_last.pt`` (one that stopped early, on
    ``--patience``, is left as it is); an interrupted or failed one resumes from
    its ``checkpoint_last.pt``, its time so far counted (written to ``started.json`` every
    minute while it trains, so a run killed outright keeps it too); one of other
    settings, or of other ``data`` (the key of the binarised data, see
    :func:`data_key`), is started afresh, the old run's directory kept aside as
    ``<save_dir>.replaced-<date>``.  Returns the run's info (seconds over all its
    invocations, the command, and the updates and per-epoch ``metrics`` read
    from its json log on every call).
    """
    done = os.path.join(save_dir, "done.json")
    started = os.path.join(save_dir, "started.json")
    prior_seconds, resumed, history = 0.0, False, []
    finished = read_json(done) if os.path.exists(done) else None
    match = _match(finished, cmd, data) if finished else None
    if match == "same":
        say(f"train {run}: done already ({rel(save_dir)})")
        return _with_log(finished, save_dir, metrics)
    if match == "budget":
        trained = max((e["epoch"] for e in finished.get("epochs", [])), default=0)
        new_budget, old_budget = _budget(cmd), _budget(shlex.split(finished.get("command", "")))
        _refuse_fewer_epochs(run, save_dir, cmd, trained)
        if stopped_early(old_budget, trained) and new_budget.get("--patience") == old_budget.get("--patience"):
            say(f"train {run}: done already, stopped early at epoch {trained} ({rel(save_dir)})")
            return _with_log(finished, save_dir, metrics)
        say(f"train {run}: continuing the finished run of {trained} epochs with the larger budget")
        prior_seconds, resumed, history = float(finished.get("seconds", 0.0)), True, finished.get("history", [])
        write_json(started, _record(cmd, data, prior_seconds=prior_seconds, history=history))
        os.remove(done)
    else:
        state = read_json(started) if os.path.exists(started) else None
        resumed = state is not None and _match(state, cmd, data) is not None
        if resumed:
            # an interrupted run that had trained past this budget would stop at once
            # and be recorded as this budget's run
            log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
            _refuse_fewer_epochs(run, save_dir, cmd, max((e["epoch"] for e in log["epochs"]), default=0))
            prior_seconds = float(state.get("prior_seconds", 0.0))
            # a segment still marked running was killed outright
            history = [dict(h, end="killed") if h.get("end") == "running" else h for h in state.get("history", [])]
        elif os.path.exists(save_dir):
            # a run of other settings or data: start afresh, keeping the old one aside
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(save_dir)))
            aside = f"{save_dir}.replaced-{stamp}"
            n = 1
            while os.path.exists(aside):
                aside, n = f"{save_dir}.replaced-{stamp}-{n}", n + 1
            os.replace(save_dir, aside)
            say(f"train {run}: {rel(save_dir)} held a run of other settings or data; kept as {rel(aside)}")
        os.makedirs(save_dir, exist_ok=True)
        write_json(started, _record(cmd, data, prior_seconds=prior_seconds, history=history))
    say(f"train {run}: {'resuming' if resumed else 'starting'}; fairseq's log follows")
    say("  " + display(cmd))
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=child_env(threads))
    try:
        while True:
            try:
                returncode = proc.wait(timeout=TIME_RECORD_SECONDS)
                break
            except subprocess.TimeoutExpired:
                # the time so far is on disk, should this process be killed outright
                _count_time(started, cmd, data, prior_seconds + time.time() - t0,
                            history + [_segment(threads, t0, "running")])
    except BaseException:  # interrupted (Ctrl-C): the time spent still counts when it resumes
        proc.kill()
        proc.wait()
        _count_time(started, cmd, data, prior_seconds + time.time() - t0,
                    history + [_segment(threads, t0, "interrupted")], stopped=True)
        raise
    seconds = prior_seconds + time.time() - t0
    if returncode != 0:
        _count_time(started, cmd, data, seconds, history + [_segment(threads, t0, "failed")], stopped=True)
        raise DemoError(
            f"fairseq-train ({run}) failed with exit code {returncode}; see {rel(save_dir)}/train.log"
        )
    if not os.path.exists(os.path.join(save_dir, "checkpoint_best.pt")):
        raise DemoError(f"fairseq-train ({run}) wrote no checkpoint_best.pt in {rel(save_dir)}")
    log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
    info = _record(
        cmd,
        data,
        seconds=round(seconds, 1),
        resumed=resumed,
        updates=log["updates"],
        epochs=log["epochs"],
        command=display(cmd),
        history=history + [_segment(threads, t0, "finished")],
    )
    write_json(done, info)
    say(f"train {run}: finished in {seconds:.0f}s, {log['updates']} updates, {_epochs(len(log['epochs']))}")
    return info


def parse_train_log(path, metrics=("loss", "nll_loss", "ppl")):
    """Per-epoch ``metrics`` and the update count from a json-format fairseq log.

    Each epoch's row holds the validation values under their names (``loss``)
    and the epoch's training averages, taken with dropout on, as ``train_<name>``
    (``train_loss``): the gap between the two shows whether a run overfits.
    """
    rows, updates = {}, 0
    if not os.path.exists(path):
        return {"epochs": [], "updates": updates}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            # the log file holds bare json records; stdout prefixes them with "| valid | "
            m = re.search(r"(\{\".*\})\s*$", line)
            if not m:
                continue
            try:
                rec = json.loads(m.group(1))
            except ValueError:
                continue
            if "train_num_updates" in rec:
                updates = max(updates, int(float(rec["train_num_updates"])))
            if "epoch" not in rec:
                continue
            epoch = int(rec["epoch"])
            if "valid_loss" in rec:
                row = {k: float(rec[f"valid_{k}"]) for k in metrics if f"valid_{k}" in rec}
                if "valid_num_updates" in rec:
                    row["updates"] = int(float(rec["valid_num_updates"]))
                    updates = max(updates, row["updates"])
            elif "train_loss" in rec:  # the epoch's training summary (after its validation)
                row = {f"train_{k}": float(rec[f"train_{k}"]) for k in metrics if f"train_{k}" in rec}
            else:
                continue
            rows.setdefault(epoch, {"epoch": epoch}).update(row)  # a resumed epoch's values replace
    # an epoch without validation (interrupted after its training summary) is no point of a curve
    epochs = [rows[e] for e in sorted(rows) if any(k in rows[e] for k in metrics)]
    return {"epochs": epochs, "updates": updates}



# ---------------------------------------------------------------------------
# where runs stand (--status)


# validation metrics where higher is better; lower is better for the others (loss, ppl)
HIGHER_IS_BETTER = ("bleu", "accuracy")


def run_status(save_dir, metrics, now=None):
    """Where the run in ``save_dir`` stands, read from its files alone (nothing is changed).

    Returns ``state`` (``"not started"``, ``"finished"``, ``"training"`` while its
    time record is fresh, else ``"interrupted"``), a ``note`` saying more, the
    per-epoch ``epochs`` rows (``metrics`` and ``train_<metric>`` as read by
    :func:`parse_train_log`), ``updates``, ``seconds`` trained so far and the
    run's ``budget`` flags.
    """
    done, started = os.path.join(save_dir, "done.json"), os.path.join(save_dir, "started.json")
    log = parse_train_log(os.path.join(save_dir, "train.log"), metrics)
    out = {"epochs": log["epochs"], "updates": log["updates"], "seconds": 0.0, "budget": {}}
    if os.path.exists(done):
        record = read_json(done)
        budget = record.get("budget", {})
        trained = len(log["epochs"])
        if stopped_early(budget, trained):
            note = f"stopped early (--patience {budget.get('--patience', '?')}) at epoch {trained}"
        else:
            note = f"its budget of {_epochs(trained)} used up; a larger --max-epoch continues it"
        return dict(out, state="finished", note=note, seconds=float(record.get("seconds", 0.0)), budget=budget)
    if not os.path.exists(started):
        return dict(out, state="not started", note="")
    record = read_json(started)
    age = (time.time() if now is None else now) - os.path.getmtime(started)
    if age <= 3 * TIME_RECORD_SECONDS and not record.get("stopped"):
        state, note = "training", f"time recorded {age:.0f}s ago"
    else:
        state, note = "interrupted", "the same command resumes it from its last checkpoint"
    return dict(out, state=state, note=note, seconds=float(record.get("prior_seconds", 0.0)),
                budget=record.get("budget", {}))


def checkpoint_epoch(curve, metric, higher_is_better):
    """The epoch row whose checkpoint fairseq keeps as ``checkpoint_best.pt``: the best
    ``metric``, the later epoch on a tie (fairseq replaces the best on ``>=`` / ``<=``)."""
    best = None
    for row in curve:
        value = row.get(metric)
        if value is None:
            continue
        if best is None or (value >= best[metric] if higher_is_better else value <= best[metric]):
            best = row
    return best


def best_epoch(epochs, metric):
    """The epoch of ``checkpoint_best.pt`` when ``metric`` picks it (higher BLEU/accuracy, lower
    otherwise): :func:`checkpoint_epoch`."""
    return checkpoint_epoch(epochs, metric, metric in HIGHER_IS_BETTER)


def print_status(args, metrics):
    """Print where both runs of each seed of this invocation's settings stand, per epoch."""
    say(f"mode {args.mode}: the runs in {rel(args.work_dir)} (nothing is trained or changed)")
    for seed in args.seeds:
        print(f"seed {seed}")
        _print_seed_status({run: run_status(run_dir(args, run, seed), metrics) for run in RUNS}, metrics)


def _print_seed_status(runs, metrics):
    for run, st in runs.items():
        hours = st["seconds"] / 3600
        budget = " ".join(f"{k} {v}" for k, v in sorted(st["budget"].items()))
        line = f"{run:9} {st['state']}"
        if st["state"] != "not started":
            line += (f": {_epochs(len(st['epochs']))}, {st['updates']} updates, {hours:.2f} h"
                     + (f" ({budget})" if budget else "") + f"; {st['note']}")
        print(line)
        for metric in metrics:
            best = None if metric.startswith("train_") else best_epoch(st["epochs"], metric)
            if best is not None:
                print(f"{'':10}best valid {metric} {best[metric]:.2f} at epoch {best['epoch']}")
    by_epoch = {}
    for run, st in runs.items():
        for e in st["epochs"]:
            by_epoch.setdefault(e["epoch"], {})[run] = e
    if not by_epoch:
        return
    # validation values are named as in fairseq's log ("ppl"), training averages "train_ppl"
    names = [m if m.startswith("train_") else "valid_" + m for m in metrics]
    widths = [max(10, len(n) + 1) for n in names]
    header = f"{'':5}" + "".join(f"  {n:^{3 * w}}" for n, w in zip(names, widths))
    columns = f"{'epoch':>5}" + "".join(f"  {'baseline':>{w}}{'R-Drop':>{w}}{'delta':>{w}}" for w in widths)
    print(header)
    print(columns)
    print("-" * len(columns))
    for epoch in sorted(by_epoch):
        rows = by_epoch[epoch]
        line = f"{epoch:>5}"
        for m, w in zip(metrics, widths):
            a = rows.get("baseline", {}).get(m)
            b = rows.get("rdrop", {}).get(m)
            cells = ["-" if v is None else f"{v:.2f}" for v in (a, b)]
            cells.append("-" if a is None or b is None else f"{b - a:+.2f}")
            line += "  " + "".join(f"{c:>{w}}" for c in cells)
        print(line)
