#!/usr/bin/env python3
"""Train one demo run with other settings and record its validation scores only.

The demos' settings (data slice, model size, dropout, alpha, patience) are
chosen with this script, on validation alone: it trains the run that a demo
would train, with the named settings changed, and never decodes or scores the
test set.  Each call appends one line to ``examples/<task>/results/search.jsonl``:
the settings, the run, its best validation score and the epoch of it, whether
it stopped early, its epochs, updates and wall time.

Usage::

    python examples/validation_search.py translation --run baseline --limit 3000 --dropout 0.3
    python examples/validation_search.py lm --run rdrop --train-lines 5000 --alpha 1
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


TASK_DIRS = {"translation": "translation", "lm": "language_model"}


def load_demo(task):
    """The task's demo module (with its own ``prepare``)."""
    import importlib.util

    folder = os.path.join(HERE, TASK_DIRS[task])
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"{task}_demo", os.path.join(folder, "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=sorted(TASK_DIRS))
    p.add_argument("--base-mode", default="quick", help="the demo mode whose settings are changed")
    p.add_argument("--run", choices=("baseline", "rdrop"), required=True)
    p.add_argument("--limit", type=int, help="training pairs / sentences")
    p.add_argument("--valid-limit", type=int)
    p.add_argument("--vocab", type=int, help="sentencepiece vocabulary (translation)")
    p.add_argument("--layers", type=int)
    p.add_argument("--dim", type=int, help="embedding dims (FFN 4x)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--lr")
    p.add_argument("--warmup", type=int, help="warm-up updates")
    p.add_argument("--max-epoch", type=int, default=60)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    demo = load_demo(a.task)
    setting = {k: (dict(v) if isinstance(v, dict) else v) for k, v in demo.MODES[a.base_mode].items()}
    data = setting["data"]
    if a.task == "translation":
        if a.limit:
            data["limit"] = a.limit
        if a.valid_limit:
            data["valid_limit"] = a.valid_limit
        if a.vocab:
            data["vocab_size"] = a.vocab
        metric, higher = "bleu", True
    else:
        if a.limit:
            data["train_lines"] = a.limit
        if a.valid_limit:
            data["valid_lines"] = a.valid_limit
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
    settings = {k: v for k, v in vars(a).items() if k not in ("task", "threads")}
    tag = "-".join(f"{k}{v}" for k, v in sorted(settings.items()) if v is not None and k != "run")
    task_dir = os.path.join(HERE, TASK_DIRS[a.task])
    work = os.path.join(task_dir, "work", "search")
    data_dir = os.path.join(work, "data-" + "-".join(f"{k}{v}" for k, v in sorted(data.items())))
    argv_demo = ["--mode", a.base_mode, "--seeds", str(a.seed), "--threads", str(a.threads),
                 "--max-epoch", str(a.max_epoch), "--patience", str(a.patience)]
    if a.dropout is not None:
        argv_demo += ["--dropout", str(a.dropout)]
    if a.alpha is not None:
        argv_demo += ["--alpha", str(a.alpha)]
    args = demo.parse_args(argv_demo + ["--work-dir", work])
    prep_kwargs = dict(data, workers=a.threads)
    d = demo.prep.prepare(data_dir, **prep_kwargs)
    save_dir = os.path.join(work, f"{a.run}-{tag}")
    if a.task == "translation":
        cmd = demo.train_command(args, setting, d["data_bin"], save_dir, a.run)
    else:
        cmd = demo.train_command(args, setting, d["data_bin"], save_dir, a.run, d["vocab_size"])
    t0 = time.time()
    info = demo.train_run(cmd, save_dir, a.run, a.threads, demo.VALID_METRICS)
    epochs = info["epochs"]
    rows = [e for e in epochs if metric in e]
    best = (max if higher else min)(rows, key=lambda e: e[metric])
    rec = {
        "settings": settings, "run": a.run, "metric": "valid_" + metric,
        "best": best[metric], "best_epoch": best["epoch"], "epochs": len(epochs),
        "stopped_early": len(epochs) < a.max_epoch, "updates": info["updates"],
        "seconds": info["seconds"], "wall_this_call": round(time.time() - t0, 1),
        "best_valid_ppl": best.get("ppl"),
        "curve": [{k: e.get(k) for k in ("epoch", metric, "train_loss")} for e in epochs],
    }
    out = os.path.join(task_dir, "results", "search.jsonl")
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
