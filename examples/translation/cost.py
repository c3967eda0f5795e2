#!/usr/bin/env python3
"""What R-Drop costs end to end, and what the cheaper variants keep of its gain.

Trains, on a demo mode's data (quick by default) and seeds, the stock baseline, full R-Drop
and each variant of :data:`VARIANTS` (docs/criterions.md, "Cheaper variants"), every one
through the translation demo (``--rdrop-flags``), so the baselines are shared and every run is
resumable; each variant's demo results file is written as the demo writes it.  Then, per
variant and seed: test BLEU and chrF, the delta against the seed's baseline with sacrebleu's
paired bootstrap p, epochs, total training seconds, seconds per update, and the equal-time
figures (validation loss at the baseline's training time, seconds to reach the baseline's best
validation loss).  Over seeds: ``mean_delta_bleu``, ``gain_share`` (its mean gain over full
R-Drop's), ``time_ratio`` (its mean total training seconds over the baseline's).  Written to
``results/cost.json`` and ``results/cost.png`` (test-BLEU gain against training time, every
seed a point, the means marked, the baseline at (1, 0)).

The variants' settings are the grid itself; which one to recommend is read on validation
(``valid_at_baseline_time``, ``seconds_to_baseline_best``), never on the test set.

Usage::

    python -m examples.translation.cost                      # every variant, the quick mode's seeds
    python -m examples.translation.cost --only every2        # one variant (and the shared runs)
    python -m examples.translation.cost --summary            # only rebuild cost.json from results files
"""

import argparse
import json
import os
import sys
import time

from examples.common.naming import results_stem
from examples.common.provenance import command_line, git_commit, machine_info, utc_now
from examples.common.stages import atomic_write, write_json
from examples.common.stats import mean_std
from examples.translation import demo

# (name, R-Drop flags); "full" is R-Drop at the mode's settings
VARIANTS = (
    ("full", ()),
    ("fraction0.25", ("--rdrop-fraction", "0.25")),
    ("fraction0.5", ("--rdrop-fraction", "0.5")),
    ("every2", ("--rdrop-every", "2")),
    ("every4", ("--rdrop-every", "4")),
    ("share-encoder", ("--rdrop-share-encoder",)),
    ("start-update300", ("--rdrop-start-update", "300")),
    ("fraction0.5-share-encoder", ("--rdrop-fraction", "0.5", "--rdrop-share-encoder")),
)
NAMES = [name for name, _ in VARIANTS]


def demo_argv(args, flags):
    argv = ["--mode", args.mode, "--threads", str(args.threads)]
    if args.seeds:
        argv += ["--seeds", args.seeds]
    if flags:
        argv += ["--rdrop-flags=" + " ".join(flags)]
    return argv


def results_path(args, flags):
    parsed = demo.parse_args(demo_argv(args, flags))
    return os.path.join(parsed.results_dir, results_stem(parsed) + ".json")


def _mean(values):
    values = [v for v in values if v is not None]
    return round(mean_std(values)[0], 4) if values else None


def variant_record(name, flags, results):
    """One variant's entry of cost.json, from the demo's results file of it."""
    per_seed = {}
    for seed, runs in results["per_seed"].items():
        base, rdrop = runs["baseline"], runs["rdrop"]
        per_seed[seed] = {
            "test_bleu": rdrop["test_bleu"], "test_chrf": rdrop["test_chrf"],
            "delta_bleu": round(rdrop["test_bleu"] - base["test_bleu"], 2),
            "delta_chrf": round(rdrop["test_chrf"] - base["test_chrf"], 2),
            "p_bleu": runs["comparison"]["p_values"]["test_bleu"],
            "epochs": rdrop["epochs"], "updates": rdrop["updates"], "seconds": rdrop["seconds"],
            "seconds_per_update": round(rdrop["seconds"] / max(1, rdrop["updates"]), 4),
            "baseline_seconds": base["seconds"],
            "time_ratio": round(rdrop["seconds"] / base["seconds"], 3),
            "best_valid_loss": rdrop.get("best_valid"),
            "valid_at_baseline_time": rdrop.get("valid_at_baseline_time"),
            "seconds_to_baseline_best": rdrop.get("seconds_to_baseline_best"),
        }
    seeds = list(per_seed)
    baseline_seconds = _mean(per_seed[s]["baseline_seconds"] for s in seeds)
    return {
        "name": name, "flags": list(flags), "seeds": [int(s) for s in seeds], "per_seed": per_seed,
        "mean_delta_bleu": _mean(per_seed[s]["delta_bleu"] for s in seeds),
        "mean_delta_chrf": _mean(per_seed[s]["delta_chrf"] for s in seeds),
        "time_ratio": round(_mean(per_seed[s]["seconds"] for s in seeds) / baseline_seconds, 3),
        "seconds_per_update_ratio": None,  # filled in against the baseline's below
        "p_values": {s: per_seed[s]["p_bleu"] for s in seeds},
        "valid_at_baseline_time_mean": _mean(per_seed[s]["valid_at_baseline_time"] for s in seeds),
        "results_file": results["_path"],
    }


def baseline_record(results):
    runs = [r["baseline"] for r in results["per_seed"].values()]
    return {
        "test_bleu_mean": _mean(r["test_bleu"] for r in runs),
        "seconds_mean": _mean(r["seconds"] for r in runs),
        "seconds_per_update_mean": _mean(r["seconds"] / max(1, r["updates"]) for r in runs),
        "best_valid_loss_mean": _mean(r.get("best_valid") for r in runs),
    }


def summarise(args, found):
    """cost.json's content from the variants' demo results (``{name: (flags, results)}``)."""
    variants = [variant_record(name, *found[name]) for name in NAMES if name in found]
    full = next((v for v in variants if v["name"] == "full"), None)
    first = next(iter(found.values()))[1]
    baseline = baseline_record(first)
    for v in variants:
        v["gain_share"] = (round(v["mean_delta_bleu"] / full["mean_delta_bleu"], 3)
                           if full and full["mean_delta_bleu"] else None)
        v["seconds_per_update_ratio"] = round(
            _mean(s["seconds_per_update"] for s in v["per_seed"].values()) / baseline["seconds_per_update_mean"], 3)
    return {"mode": args.mode, "baseline": baseline, "variants": variants,
            "settings": first["settings"], "commit": git_commit(),
            "command": command_line("examples.translation.cost", args.argv), "date": utc_now(),
            "machine": machine_info(args.threads, None)}


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.plot([1.0], [0.0], "k*", ms=12, label="baseline")
    for i, v in enumerate(summary["variants"]):
        colour = f"C{i}"
        points = list(v["per_seed"].values())
        ax.plot([p["time_ratio"] for p in points], [p["delta_bleu"] for p in points], "o", color=colour,
                alpha=0.5, ms=5)
        ax.plot([v["time_ratio"]], [v["mean_delta_bleu"]], "D", color=colour, ms=9, label=v["name"])
    ax.set(xlabel="total training time / the baseline's (same seed; means: of the means)",
           ylabel="test BLEU gain over the baseline", title=f"What R-Drop costs end to end ({summary['mode']} mode)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="quick", choices=sorted(demo.MODES))
    p.add_argument("--seeds", help="comma-separated (default: the mode's)")
    p.add_argument("--only", action="append", choices=NAMES, help="train only this variant (repeatable)")
    p.add_argument("--summary", action="store_true", help="train nothing: rebuild cost.json from the results files")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    if not args.summary:
        for name, flags in VARIANTS:
            if args.only and name not in args.only:
                continue
            code = demo.main(demo_argv(args, flags))
            if code:
                return code
    found = {}
    for name, flags in VARIANTS:
        path = results_path(args, flags)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found[name] = (flags, dict(json.load(f), _path=os.path.relpath(path, demo.REPO_ROOT)))
    if not found:
        print("error: no variant's results file yet", file=sys.stderr)
        return 2
    summary = summarise(args, found)
    out_dir = os.path.join(demo.HERE, "results")
    write_json(os.path.join(out_dir, "cost.json"), summary)
    plot(summary, os.path.join(out_dir, "cost.png"))
    for v in summary["variants"]:
        print(f"{v['name']:<28} delta BLEU {v['mean_delta_bleu']:+.2f}  gain share "
              f"{'-' if v['gain_share'] is None else format(v['gain_share'], '.2f')}  time x{v['time_ratio']:.2f}  "
              f"s/update x{v['seconds_per_update_ratio']:.2f}  p {v['p_values']}")
    print(f"wrote {os.path.join(out_dir, 'cost.json')} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
