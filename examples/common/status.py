"""``--status``: where a demo's runs stand, read from their files alone."""

import os
import time

from examples.common.base import RUN_LABELS, rel, say
from examples.common.fairseq_log import HIGHER_IS_BETTER, checkpoint_epoch, parse_train_log
from examples.common.naming import run_dir
from examples.common.stages import read_json
from examples.common.training import TIME_RECORD_SECONDS, epochs_text, stopped_early


def run_status(save_dir, metrics, now=None):
    """Where the run in ``save_dir`` stands: ``state`` (``"not started"``, ``"finished"``,
    ``"training"`` while its time record is fresh, else ``"interrupted"``), a ``note`` saying more,
    its ``epochs`` rows (:func:`parse_train_log`), ``updates``, ``seconds`` so far and ``budget``."""
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
            note = f"its budget of {epochs_text(trained)} used up; a larger --max-epoch continues it"
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


def print_status(args, metrics):
    """Print where the runs of each seed of this invocation's settings stand, per epoch."""
    say(f"mode {args.mode}: the runs in {rel(args.work_dir)} (nothing is trained or changed)")
    for seed in args.seeds:
        print(f"seed {seed}")
        _print_seed_status({run: run_status(run_dir(args, run, seed), metrics) for run in args.runs}, metrics)


def _print_seed_status(runs, metrics):
    for run, st in runs.items():
        budget = " ".join(f"{k} {v}" for k, v in sorted(st["budget"].items()))
        line = f"{run:9} {st['state']}"
        if st["state"] != "not started":
            line += (f": {epochs_text(len(st['epochs']))}, {st['updates']} updates, {st['seconds'] / 3600:.2f} h"
                     + (f" ({budget})" if budget else "") + f"; {st['note']}")
        print(line)
        for metric in metrics:
            best = None if metric.startswith("train_") else checkpoint_epoch(st["epochs"], metric,
                                                                             metric in HIGHER_IS_BETTER)
            if best is not None:
                print(f"{'':10}best valid {metric} {best[metric]:.2f} at epoch {best['epoch']}")
    rows_of = {run: {e["epoch"]: e for e in st["epochs"]} for run, st in runs.items()}  # each run's rows by epoch
    epochs = sorted(set().union(*rows_of.values()))
    if not epochs:
        return
    # validation values are named as in fairseq's log ("ppl"), training averages "train_ppl"
    names = [m if m.startswith("train_") else "valid_" + m for m in metrics]
    widths = [max(10, len(n) + 1) for n in names]
    # each run's value, then the second run's against the first (R-Drop's against the baseline)
    cols = len(runs) + 1
    header = f"{'':5}" + "".join(f"  {n:^{cols * w}}" for n, w in zip(names, widths))
    columns = f"{'epoch':>5}" + "".join("  " + "".join(f"{RUN_LABELS[r]:>{w}}" for r in runs) + f"{'delta':>{w}}"
                                        for w in widths)
    print(header, columns, "-" * len(columns), sep="\n")
    for epoch in epochs:
        line = f"{epoch:>5}"
        for m, w in zip(metrics, widths):
            values = [rows_of[run].get(epoch, {}).get(m) for run in runs]
            a, b = values[:2]
            cells = ["-" if v is None else f"{v:.2f}" for v in values]
            cells.append("-" if a is None or b is None else f"{b - a:+.2f}")
            line += "  " + "".join(f"{c:>{w}}" for c in cells)
        print(line)
