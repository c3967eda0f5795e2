"""One driver for the three demos, each a :class:`DemoTask`: the checks, the data preparation (once,
in this process), each (run, seed) trained and evaluated in a process of its own (``--jobs`` at once,
the same demo with ``--run R --seeds S``: resumable, so a second invocation finds finished runs done),
then the table, the plot and the results file.  Each compared pair ``(a, b)`` of the demo's parser
is tested per seed; the first is the results' ``deltas`` and ``p_values``, the others
``other_comparisons``.
"""

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import time
from typing import Callable, Tuple

from examples.common.base import DemoError, child_env, pair_name, rel, say
from examples.common.equal_time import equal_time
from examples.common.fairseq_log import HIGHER_IS_BETTER
from examples.common.naming import results_stem, run_dir, run_dropout
from examples.common.provenance import command_line, git_commit, machine_info, utc_now
from examples.common.report import plot_seed_curves, seed_table, write_results
from examples.common.stats import seed_deltas, summarise_seeds
from examples.common.status import print_status


@dataclasses.dataclass(frozen=True)
class DemoTask:
    """What a demo supplies to :func:`run_demo`."""

    module: str  # the demo's module (its runs are started as ``python -m <module> --run R --seeds S``)
    parse_args: Callable  # argv -> args
    check_setup: Callable  # args -> None; raises DemoError (or one of ``errors``)
    prepare: Callable  # args -> data (a dict), in this process, before any run starts
    run_one: Callable  # (args, data, run, seed) -> the run's per-seed record
    compare: Callable  # (args, data, seed, {a: record, b: record}) -> {"p_values": {key: p}, "significance": {...}}
    results: Callable  # (args, data, per_seed) -> the task's own fields of the results file
    title: Callable  # args -> the plot's title
    table_rows: Callable  # args -> (label, key, format) of the printed table
    curves: Tuple  # (metric, panel title, y label) of the plot
    status_metrics: Tuple  # what --status shows per epoch
    mean_keys: Tuple  # the per-seed figures averaged over seeds
    selection: Callable  # args -> the validation metric that picks the checkpoint
    errors: Tuple = ()  # the task's own exceptions that mean "the user has to fix something"

    @classmethod
    def of_module(cls, module, hooks, **rest):
        """The task of the demo ``module`` (its name) whose functions ``hooks`` (the module object)
        holds under the names every demo gives them: ``parse_args``, ``check_setup``,
        ``prepare_data``, ``run_one``, ``compare`` and ``task_results``; ``rest``: the other fields."""
        return cls(module=module, parse_args=hooks.parse_args, check_setup=hooks.check_setup,
                   prepare=hooks.prepare_data, run_one=hooks.run_one, compare=hooks.compare,
                   results=hooks.task_results, **rest)


# the options that a run's own process gets from the driver instead of the user's argv
CHILD_OPTIONS = ("--seeds", "--run", "--threads", "--jobs")


def child_argv(argv, run, seed, threads):
    """The demo's argv for one (run, seed) process: the user's, with the driver's own options replaced."""
    kept = [a for i, a in enumerate(argv)
            if a.split("=", 1)[0] not in CHILD_OPTIONS and (i == 0 or argv[i - 1] not in CHILD_OPTIONS)]
    return kept + ["--run", run, "--seeds", str(seed), "--threads", str(threads), "--jobs", "1"]


def job_order(args):
    """The (run, seed) pairs to train, the demo's last run first: R-Drop's (and a semi-supervised
    run's) take longest, so they start first."""
    order = reversed(args.runs) if args.only_run is None else (args.only_run,)
    return [(run, seed) for run in order for seed in args.seeds]


def run_jobs(task, args, jobs):
    """Train and evaluate ``jobs`` in processes of their own, ``args.jobs`` at once, each logging to
    ``<work-dir>/logs/<run dir name>.log``; once all have ended, a DemoError names those that failed
    (Ctrl-C reaches the processes too: each records where it stopped, and they are waited for)."""
    log_dir = os.path.join(args.work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)

    def one(job):
        run, seed = job
        log_path = os.path.join(log_dir, os.path.basename(run_dir(args, run, seed)) + ".log")
        cmd = [sys.executable, "-m", task.module] + child_argv(args.argv, run, seed, args.threads)
        say(f"{run} seed {seed}: started ({args.threads} thread{'s' if args.threads > 1 else ''}; "
            f"log: {rel(log_path)})")
        t0 = time.time()
        with open(log_path, "a", encoding="utf-8") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(args.threads)).returncode
        if code == 0:
            say(f"{run} seed {seed}: done ({time.time() - t0:.0f}s)")
            return None
        say(f"{run} seed {seed}: FAILED, see {rel(log_path)}")
        return f"{run} seed {seed} (exit code {code}; see {rel(log_path)})"

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)
    try:
        failed = [f for f in pool.map(one, jobs) if f]
    finally:  # on Ctrl-C: wait for the running processes, start none of the waiting ones
        pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        raise DemoError("these runs failed: " + "; ".join(failed))


def run_demo(task, argv=None):
    """The demo's main(): returns the exit code (2 for what the user has to fix)."""
    t_start = time.time()
    commit = git_commit()  # the code this invocation runs (as it starts: the checkout may change later)
    args = task.parse_args(argv)
    if args.status:
        print_status(args, task.status_metrics)
        return 0
    try:
        say(f"mode {args.mode}: checking the setup")
        task.check_setup(args)
        data = task.prepare(args)
        jobs = job_order(args)
        if args.jobs > 1 and len(jobs) > 1:
            say(f"training {len(jobs)} runs, {args.jobs} at once (seeds {','.join(map(str, args.seeds))})")
            run_jobs(task, args, jobs)
        per_seed = {}
        for run, seed in jobs:  # done already when run_jobs trained them: this reads their records
            per_seed.setdefault(seed, {})[run] = task.run_one(args, data, run, seed)
    except (DemoError, *task.errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.only_run is not None:  # no comparison to write: say what comes next
        others = " and ".join(r for r in args.runs if r != args.only_run)
        say(f"only the {args.only_run} run was asked for (--run): no results file written; when the "
            f"{others} run{'s are' if len(args.runs) > 2 else ' is'} done too, run the same command without --run "
            "to write the results")
        return 0

    per_seed = {seed: per_seed[seed] for seed in args.seeds}
    metric = task.selection(args)
    for by_run in per_seed.values():
        for run in args.runs:
            by_run[run].update(equal_time(by_run["baseline"]["curve"], by_run[run]["curve"], metric,
                                          metric in HIGHER_IS_BETTER))
    pairs = args.comparisons
    # per seed, per compared pair (a, b): the task's test of b against a
    comparisons = {seed: {pair_name(pair): task.compare(args, data, seed, {run: by_run[run] for run in pair})
                          for pair in pairs} for seed, by_run in per_seed.items()}
    p_values = {}
    for seed, by_pair in comparisons.items():
        for name, c in by_pair.items():
            for key, p in c["p_values"].items():
                p_values.setdefault(name, {}).setdefault(key, {})[seed] = p
    print("", *seed_table(per_seed, task.table_rows(args), p_values, args.runs, pairs), sep="\n", flush=True)
    first = pair_name(pairs[0])
    significance = comparisons[args.seeds[0]][first]["significance"]
    resamples = significance.get("resamples")
    say(f"p: {significance['test']}" + (f", {resamples} resamples" if resamples else "") + ", per seed")

    summary = summarise_seeds(per_seed, task.mean_keys, args.runs)

    def comparison_fields(pair):  # (the json file writes the seeds, keys here, as strings)
        deltas = seed_deltas(per_seed, task.mean_keys, *pair)
        return {"deltas": {key: dict(_rounded({"mean": d["mean"], "std": d["std"]}), per_seed=_rounded(d["per_seed"]))
                           for key, d in deltas.items()},
                "p_values": p_values[pair_name(pair)]}

    results = {
        "mode": args.mode,
        "seeds": list(args.seeds),
        "settings": settings(args),
        **{run: _rounded(summary[run]) if run == "baseline" else dict(_rounded(summary[run]), alpha=args.alpha)
           for run in args.runs},
        **comparison_fields(pairs[0]),
        "significance": significance,
        "stopped_early": {s: {run: res[run]["stopped_early"] for run in args.runs} for s, res in per_seed.items()},
        "per_seed": {s: dict(res, comparison=comparisons[s][first]) for s, res in per_seed.items()},
    }
    if len(pairs) > 1:  # the further pairs' tests, per seed and over seeds
        for s, res in per_seed.items():
            results["per_seed"][s]["other_comparisons"] = {n: c for n, c in comparisons[s].items() if n != first}
        results["other_comparisons"] = {pair_name(pair): comparison_fields(pair) for pair in pairs[1:]}
    results.update(task.results(args, data, per_seed))
    results.update({
        "commit": commit,
        "command": command_line(task.module, args.argv),
        "date": utc_now(),
        "total_seconds": round(time.time() - t_start, 1),
        "machine": machine_info(args.threads, args.jobs),
    })
    results["equal_time"] = equal_time_summary(per_seed, metric, args.runs)
    titles, labels = ({c[0]: c[i] for c in task.curves} for i in (1, 2))
    panels = task.curves + ((metric, titles.get(metric, f"validation {metric}") + " against training time",
                             labels.get(metric, metric), "seconds"),)
    json_path, png_path = write_results(
        args.results_dir, results_stem(args), results,
        lambda path: plot_seed_curves(per_seed, path, panels, task.title(args), args.alpha, args.runs),
    )
    say(f"results: {rel(json_path)}, curves: {rel(png_path)} (total {time.time() - t_start:.0f}s)")
    return 0


def equal_time_summary(per_seed, metric, runs):
    """The results file's ``equal_time``: the metric, and per seed the baseline's training
    seconds, its best, and R-Drop's two equal-time figures (examples/common/equal_time.py);
    a further run's under its name."""
    out = {"metric": f"valid_{metric}", "per_seed": {}}
    figures = ("valid_at_baseline_time", "seconds_to_baseline_best")
    for seed, by_run in per_seed.items():
        baseline = by_run["baseline"]
        out["per_seed"][seed] = {
            "baseline_seconds": baseline["curve"][-1].get("seconds") if baseline["curve"] else None,
            "baseline_best": baseline["valid_at_baseline_time"],
            **{k: by_run["rdrop"][k] for k in figures},
            **{run: {k: by_run[run][k] for k in figures} for run in runs[2:]},
        }
    return out


def settings(args):
    """The settings that name the results (the mode's, or the user's where given)."""
    keys = ("alpha", "max_epoch", "patience", "max_tokens", "limit", "train_lines", "train_limit", "beam",
            "threads", "jobs")
    out = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    out["dropout"] = {run: run_dropout(args, run) for run in args.runs}
    for run in args.runs[2:]:  # a further run's own flags (--semi-flags; the mode's are the task's to record)
        out[f"{run}_flags"] = list(getattr(args, f"{run}_flags", ()))
    out["rdrop_flags"] = list(getattr(args, "rdrop_flags", ()))
    out["data_name"] = args.data_name
    # the search rows the mode's settings were chosen from, where these are the mode's settings
    if results_stem(args) == args.mode:
        out["chosen_by"] = args.mode_chosen_by.get(args.mode)
    return out


def _rounded(d):
    return {k: None if v is None else round(v, 4) for k, v in d.items()}
