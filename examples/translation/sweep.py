"""A sweep of R-Drop settings against one shared baseline, through the translation demo.

Each setting is the demo invoked with more options (``--alpha``, ``--rdrop-dropout``,
``--rdrop-flags``...): its R-Drop runs train in directories of their own, the baselines are
the demo's (trained once, shared by every setting), every run is resumable, and each
setting's demo results file is written as the demo writes it.  :func:`summary` then reads
those files back into one record per setting: per seed the R-Drop run's test BLEU and chrF,
their deltas against the seed's baseline with sacrebleu's paired bootstrap p, epochs,
updates, training seconds and the equal-time figures; over seeds the means.
``examples/translation/cost.py`` and ``ablations.py`` are sweeps.
"""

import argparse
import json
import os
import sys

from examples.common.naming import results_stem
from examples.common.provenance import command_line, git_commit, machine_info, utc_now
from examples.common.stages import atomic_write, write_json
from examples.common.stats import mean_std
from examples.translation import demo

RESULTS_DIR = os.path.join(demo.HERE, "results")


def demo_argv(args, options):
    """The demo's command line for one setting (its extra ``options``)."""
    argv = ["--mode", args.mode, "--threads", str(args.threads), "--results-dir", args.results_dir]
    if args.seeds:
        argv += ["--seeds", args.seeds]
    return argv + list(options)


def results_path(args, options):
    """Where the demo writes the results file of the setting with these ``options``."""
    parsed = demo.parse_args(demo_argv(args, options))
    return os.path.join(parsed.results_dir, results_stem(parsed) + ".json")


def mean(values):
    """The mean of the values that are known (None where none is), rounded."""
    values = [v for v in values if v is not None]
    return round(mean_std(values)[0], 4) if values else None


def seed_record(runs):
    """One seed's figures of a setting: its R-Drop run against the seed's baseline."""
    base, rdrop = runs["baseline"], runs["rdrop"]
    return {
        "test_bleu": rdrop["test_bleu"], "test_chrf": rdrop["test_chrf"],
        "delta_bleu": round(rdrop["test_bleu"] - base["test_bleu"], 2),
        "delta_chrf": round(rdrop["test_chrf"] - base["test_chrf"], 2),
        "p_bleu": runs["comparison"]["p_values"]["test_bleu"],
        "epochs": rdrop["epochs"], "updates": rdrop["updates"], "seconds": rdrop["seconds"],
        "seconds_per_update": round(rdrop["seconds"] / max(1, rdrop["updates"]), 4),
        "baseline_seconds": base["seconds"],
        "time_ratio": round(rdrop["seconds"] / base["seconds"], 3),
        "best_valid": rdrop.get("best_valid"),
        "valid_at_baseline_time": rdrop.get("valid_at_baseline_time"),
        "seconds_to_baseline_best": rdrop.get("seconds_to_baseline_best"),
    }


def setting_record(name, options, results):
    """One setting's entry: its options, per-seed figures and their means over seeds."""
    per_seed = {seed: seed_record(runs) for seed, runs in results["per_seed"].items()}
    rows = list(per_seed.values())
    return {
        "name": name, "flags": list(options), "seeds": [int(s) for s in per_seed], "per_seed": per_seed,
        "mean_delta_bleu": mean(r["delta_bleu"] for r in rows),
        "mean_delta_chrf": mean(r["delta_chrf"] for r in rows),
        "p_values": {seed: r["p_bleu"] for seed, r in per_seed.items()},
        "train_seconds_mean": mean(r["seconds"] for r in rows),
        "time_ratio": round(mean(r["seconds"] for r in rows) / mean(r["baseline_seconds"] for r in rows), 3),
        "best_valid_mean": mean(r["best_valid"] for r in rows),
        "valid_at_baseline_time_mean": mean(r["valid_at_baseline_time"] for r in rows),
        "results_file": results["_path"],
    }


def baseline_record(results):
    """The shared baseline's means over seeds."""
    runs = [r["baseline"] for r in results["per_seed"].values()]
    return {
        "test_bleu_mean": mean(r["test_bleu"] for r in runs),
        "seconds_mean": mean(r["seconds"] for r in runs),
        "seconds_per_update_mean": mean(r["seconds"] / max(1, r["updates"]) for r in runs),
        "best_valid_mean": mean(r.get("best_valid") for r in runs),
    }


def parser(doc, names):
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="quick", choices=sorted(demo.MODES))
    p.add_argument("--seeds", help="comma-separated (default: the mode's)")
    p.add_argument("--only", action="append", choices=names, help="train only this one (repeatable)")
    p.add_argument("--summary", action="store_true", help="train nothing: rebuild the summary from the results files")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results-dir", default=RESULTS_DIR, help="the demo's and the sweep's results (default: "
                   "examples/translation/results)")
    return p


def run(args, settings, groups=None):
    """Train every setting (``(name, options)``) that ``--only`` names (all without it; a name
    may also be a group of ``groups``: ``{group: [setting names]}``), each through the demo;
    returns the demo's exit code, 0 when all went well."""
    wanted = set()
    for name in args.only or []:
        wanted.update((groups or {}).get(name, [name]))
    for name, options in settings:
        if args.only and name not in wanted:
            continue
        code = demo.main(demo_argv(args, options))
        if code:
            return code
    return 0


def found_results(args, settings):
    """``{name: (options, results)}`` of the settings whose demo results file exists."""
    found = {}
    for name, options in settings:
        path = results_path(args, options)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found[name] = (options, dict(json.load(f), _path=os.path.relpath(path, demo.REPO_ROOT)))
    return found


def summary(args, module, key, found, settings):
    """The sweep's results file content: ``key`` lists the settings' records in sweep order."""
    first = next(iter(found.values()))[1]
    records = [setting_record(name, *found[name]) for name, _ in settings if name in found]
    return {"mode": args.mode, "baseline": baseline_record(first), key: records,
            "run_settings": first["settings"], "commit": git_commit(),
            "command": command_line(module, sys.argv[1:] if args.argv is None else args.argv),
            "date": utc_now(), "machine": machine_info(args.threads, None)}


def main(argv, doc, name, key, settings, plot, line, finish=None, groups=None):
    """A sweep's command: train the settings (``--only``: some; ``--summary``: none), then
    write ``<name>.json`` (the settings' records under ``key``, completed by ``finish(content)``
    where given) and its plot, and print one ``line(record)`` per setting."""
    choices = [n for n, _ in settings] + list(groups or {})
    args = parser(doc, choices).parse_args(argv)
    args.argv = argv
    code = 0 if args.summary else run(args, settings, groups)
    found = found_results(args, settings)
    if code or not found:
        print("error: " + ("a run failed" if code else "no setting's results file yet"), file=sys.stderr)
        return code or 2
    content = summary(args, f"examples.translation.{name}", key, found, settings)
    if finish is not None:
        finish(content)
    path = write(args, name, content, plot)
    for record in content[key]:
        print(line(record))
    print(f"wrote {path}")
    return 0


def write(args, name, content, plot):
    """``<results dir>/<name>.json`` and ``<name>.png`` (``plot(content)`` returns its figure)."""
    json_path = os.path.join(args.results_dir, f"{name}.json")
    write_json(json_path, content)
    save_figure(plot(content), os.path.join(args.results_dir, f"{name}.png"))
    return json_path


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
