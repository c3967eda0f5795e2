#!/usr/bin/env python3
"""Train one demo run with other settings and record its validation scores only.

The demos' settings (data slice, model size, dropout, alpha, patience) are
chosen with this script, on validation alone: it trains the run that a demo
would train, with the named settings changed, and never decodes or scores the
test set.  Each call appends one line to ``examples/<task>/results/search.jsonl``:
the settings, the run, its best validation score and the epoch of it, whether
it stopped early, its epochs, updates and wall time, its validation curve, and
the commit, date and machine that produced it.

Usage::

    python -m examples.validation_search translation --run baseline --limit 2000 --dropout 0.1
    python -m examples.validation_search lm --run rdrop --limit 3000 --alpha 1
    python -m examples.validation_search cls --run rdrop --limit 2000 --alpha 1
    python -m examples.validation_search cls --base-mode medium --run semi --alpha 1 --semi-flags '--unlabeled-ratio 2' 
    python -m examples.validation_search lm --table      # the search so far, as in RESULTS.md
    python -m examples.validation_search translation --table --date 2026-12-06   # one day's rows

A run stopped by hand for its cost is recorded as far as its log goes with the
same settings and ``--record-stopped``.
"""

import argparse
import json
import os
import sys
import time

from examples.common.base import RUNS
from examples.common.cli import modes_with_run, runs_of_modes
from examples.common.fairseq_log import checkpoint_epoch, parse_train_log
from examples.common.provenance import git_commit, machine_info, utc_now

HERE = os.path.dirname(os.path.abspath(__file__))


TASK_DIRS = {"translation": "translation", "lm": "language_model", "cls": "classification"}
# which data setting of each demo the search's --limit, --valid-limit and --vocab change
DATA_KEYS = {
    "translation": {"limit": "limit", "valid_limit": "valid_limit", "vocab": "vocab_size"},
    "lm": {"limit": "train_lines", "valid_limit": "valid_lines"},
    "cls": {"limit": "train_limit", "valid_limit": "valid_limit", "vocab": "vocab_size"},
}


def load_demo(task):
    """The task's demo module."""
    import importlib

    return importlib.import_module(f"examples.{TASK_DIRS[task]}.demo")


def print_table(task, date=None):
    """The task's search so far (``search.jsonl``) as a Markdown table, one row per run; with
    ``date`` (``YYYY-MM-DD``) only the rows recorded that day."""
    path = os.path.join(HERE, TASK_DIRS[task], "results", "search.jsonl")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if date:
        records = [r for r in records if str(r.get("date", "")).startswith(date)]
    print("\n".join(table_lines(records)))


def table_lines(records):
    """The Markdown table of search records, one row per run."""
    shown = ("base_mode", "limit", "valid_limit", "vocab", "layers", "dim", "dropout", "alpha", "lr", "warmup", "patience",
             "seed")
    if any(r["settings"].get("semi_flags") for r in records):  # the semi-supervised runs' own flags
        shown += ("semi_flags",)
    lines = ["| run | " + " | ".join(shown) + " | best valid (what stops the run) | at epoch "
             "| lowest valid loss (epoch) | epochs | how it ended | train s |", "|" + "---|" * (len(shown) + 7)]
    for r in records:
        st = r["settings"]
        ended = ("stopped by hand" if r.get("stopped_by_hand")
                 else "early stopping" if r["stopped_early"] else "epoch budget")
        cells = ["-" if st.get(k) is None else str(st[k]) for k in shown]
        best = f"{r['metric']} {r['best']}" + (f" (ppl {r['best_valid_ppl']})" if r.get("best_valid_ppl") else "")
        losses = [e for e in r["curve"] if e.get("loss") is not None]
        low = min(losses, key=lambda e: e["loss"]) if losses else None
        low = f"{low['loss']} ({low['epoch']})" if low else "-"
        lines.append(f"| {r['run']} | " + " | ".join(cells) +
                     f" | {best} | {r['best_epoch']} | {low} | {r['epochs']} | {ended} | {r['seconds']:.0f} |")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=sorted(TASK_DIRS))
    p.add_argument("--table", action="store_true", help="only print the task's search so far as a Markdown table")
    p.add_argument("--date", help="with --table: only the rows recorded on this day (YYYY-MM-DD)")
    p.add_argument("--base-mode", default="quick", help="the demo mode whose settings are changed")
    p.add_argument("--run", choices=("baseline", "rdrop", "semi"), help="semi: the classification demo's "
                   "semi-supervised R-Drop run (cls only)")
    p.add_argument("--semi-flags", help="cls, --run semi: the flags added to the mode's semi-supervised ones "
                   "(the demo's --semi-flags)")
    p.add_argument("--limit", type=int, help="training pairs / sentences / labelled sentences")
    p.add_argument("--valid-limit", type=int)
    p.add_argument("--vocab", type=int, help="sentencepiece vocabulary (translation, cls)")
    p.add_argument("--layers", type=int)
    p.add_argument("--dim", type=int, help="embedding dims (FFN 4x)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--lr")
    p.add_argument("--warmup", type=int, help="warm-up updates")
    p.add_argument("--max-epoch", type=int, help="default: the base mode's")
    p.add_argument("--patience", type=int, help="default: the base mode's")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--record-stopped", action="store_true",
                   help="train nothing: record the run of these settings that was stopped by hand (for its "
                        "cost) as far as its log goes, marked stopped_by_hand")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.table:
        print_table(a.task, a.date)
        return 0
    if a.run is None:
        raise SystemExit("--run is needed to train")
    if (a.run == "semi" or a.semi_flags) and a.task != "cls":
        raise SystemExit("--run semi and --semi-flags are the classification demo's (cls)")
    commit = git_commit()  # the code this call runs, as it starts
    demo = load_demo(a.task)
    mode_runs = runs_of_modes(demo.MODES, getattr(demo, "RUNS", RUNS))
    if a.run not in mode_runs[a.base_mode]:
        raise SystemExit(f"--run {a.run}: base mode {a.base_mode} does not train it; --base-mode "
                         + " or ".join(modes_with_run(mode_runs, a.run)))
    setting = {k: (dict(v) if isinstance(v, dict) else v) for k, v in demo.MODES[a.base_mode].items()}
    data = setting["data"]
    a.max_epoch = a.max_epoch or setting["train"]["max-epoch"]
    a.patience = a.patience or setting["train"].get("patience", 5)
    for option, key in DATA_KEYS[a.task].items():
        if getattr(a, option):
            data[key] = getattr(a, option)
    if a.task == "translation":
        metric = demo.selected_by(setting)
        higher = metric == "bleu"
    elif a.task == "cls":
        metric, higher = "accuracy", True
    else:
        metric, higher = "loss", False
    model = setting["model"]
    for key in list(model):
        if a.layers and key.endswith("layers"):
            model[key] = a.layers
        if a.dim and key.endswith("-embed-dim") and "ffn" not in key:
            model[key] = a.dim
        if a.dim and key.endswith("ffn-embed-dim"):
            model[key] = 4 * a.dim
    if a.lr:
        setting["train"]["lr"] = a.lr
    if a.warmup:
        setting["train"]["warmup-updates"] = a.warmup
    settings = {k: v for k, v in vars(a).items() if k not in ("task", "threads", "record_stopped", "table", "date")}
    tag = "-".join(f"{k}{v}" for k, v in sorted(settings.items()) if v is not None and k != "run").replace(" ", "")
    task_dir = os.path.join(HERE, TASK_DIRS[a.task])
    work = os.path.join(task_dir, "work", "search")
    data_dir = os.path.join(work, "data-" + "-".join(f"{k}{v}" for k, v in sorted(data.items())))
    argv_demo = ["--mode", a.base_mode, "--seeds", str(a.seed), "--threads", str(a.threads),
                 "--max-epoch", str(a.max_epoch), "--patience", str(a.patience)]
    if a.dropout is not None:
        argv_demo += ["--dropout", str(a.dropout)]
    if a.alpha is not None:
        argv_demo += ["--alpha", str(a.alpha)]
    if a.semi_flags:
        argv_demo += ["--semi-flags=" + a.semi_flags]
    args = demo.parse_args(argv_demo + ["--work-dir", work])
    save_dir = os.path.join(work, f"{a.run}-{tag}")
    t0 = time.time()
    if a.record_stopped:
        log = parse_train_log(os.path.join(save_dir, "train.log"), demo.VALID_METRICS)
        with open(os.path.join(save_dir, "started.json"), encoding="utf-8") as f:
            seconds = json.load(f).get("prior_seconds")
        info = dict(log, seconds=seconds)
    elif a.task == "cls":
        # the demo's own data preparation and masked-LM pre-training (shared by the search's runs,
        # each stage redone only when its inputs change), with the changed settings
        demo.MODES[a.base_mode] = setting
        d = demo.prepare_data(args)
        cmd = demo.train_command(args, d, save_dir, a.run, a.seed)
        info = demo.train_run(cmd, save_dir, a.run, a.threads, demo.VALID_METRICS, data=d["key"])
    else:
        d = demo.prep.prepare(data_dir, **dict(data, workers=a.threads))
        if a.task == "translation":
            cmd = demo.train_command(args, setting, d["data_bin"], save_dir, a.run)
        else:
            cmd = demo.train_command(args, setting, d["data_bin"], save_dir, a.run, d["vocab_size"])
        info = demo.train_run(cmd, save_dir, a.run, a.threads, demo.VALID_METRICS)
    epochs = info["epochs"]
    best = checkpoint_epoch(epochs, metric, higher)
    rec = {
        "settings": settings, "run": a.run, "metric": "valid_" + metric,
        "best": best[metric], "best_epoch": best["epoch"], "epochs": len(epochs),
        "stopped_early": len(epochs) < a.max_epoch and not a.record_stopped,
        "stopped_by_hand": a.record_stopped, "updates": info["updates"],
        "seconds": info["seconds"], "wall_this_call": round(time.time() - t0, 1),
        "best_valid_ppl": best.get("ppl"),
        "curve": [{k: e.get(k) for k in ("epoch", "seconds", "loss", "bleu", "ppl", "accuracy", "train_loss")
                   if k in e} for e in epochs],
        "commit": commit, "date": utc_now(), "machine": machine_info(a.threads, 1),
    }
    out = os.path.join(task_dir, "results", "search.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
