"""A sweep of R-Drop settings against one shared baseline, through a demo.

Each setting is the demo invoked with more options (``--alpha``, ``--rdrop-dropout``,
``--rdrop-flags``...): its R-Drop runs train in directories of their own, the baselines are
the demo's (trained once, shared by every setting), every run is resumable, and each
setting's demo results file is written as the demo writes it.  :func:`summary` then reads
those files back into one record per setting: per seed the R-Drop run's test scores (the
:class:`Target`'s: BLEU and chrF for translation, perplexity for language modelling), their
deltas against the seed's baseline with the demo's p-value of the first, epochs, updates,
training seconds and the equal-time figures; over seeds the means.
``examples/translation/cost.py``, ``ablations.py`` and ``examples/language_model/cost.py``
are sweeps.
"""

import argparse
import dataclasses
import json
import os
import sys
from types import ModuleType
from typing import Callable, Tuple

from examples.common.base import REPO, rel
from examples.common.naming import results_stem
from examples.common.provenance import command_line, git_commit, machine_info, utc_now
from examples.common.stages import atomic_write, speaker, write_json
from examples.common.stats import mean_std

say = speaker("sweep")


@dataclasses.dataclass(frozen=True)
class Target:
    """The demo a sweep drives, and what the sweep reads from its results files."""

    demo: ModuleType  # the demo module: parse_args(argv), main(argv), HERE, MODES
    scores: Tuple[str, ...]  # the per-seed records' test scores (``test_<score>``); the first is compared
    valid_key: str  # the per-seed record's best value of the validation metric that picks the checkpoint
    selection: Callable  # mode name -> that metric's name ("loss", "bleu")

    @property
    def results_dir(self):
        return os.path.join(self.demo.HERE, "results")

    @property
    def package(self):
        return self.demo.__name__.rsplit(".", 1)[0]


def demo_argv(args, options):
    """The demo's command line for one setting (its extra ``options``)."""
    argv = ["--mode", args.mode, "--threads", str(args.threads), "--results-dir", args.results_dir]
    if args.seeds:
        argv += ["--seeds", args.seeds]
    return argv + list(options)


def results_path(target, args, options):
    """Where the demo writes the results file of the setting with these ``options``."""
    parsed = target.demo.parse_args(demo_argv(args, options))
    return os.path.join(parsed.results_dir, results_stem(parsed) + ".json")


def mean(values):
    """The mean of the values that are known (None where none is), rounded."""
    values = [v for v in values if v is not None]
    return round(mean_std(values)[0], 4) if values else None


def seed_record(target, runs):
    """One seed's figures of a setting: its R-Drop run against the seed's baseline."""
    base, rdrop = runs["baseline"], runs["rdrop"]
    first = target.scores[0]
    return {
        **{f"test_{s}": rdrop[f"test_{s}"] for s in target.scores},
        **{f"delta_{s}": round(rdrop[f"test_{s}"] - base[f"test_{s}"], 2) for s in target.scores},
        f"p_{first}": runs["comparison"]["p_values"][f"test_{first}"],
        "epochs": rdrop["epochs"], "updates": rdrop["updates"], "seconds": rdrop["seconds"],
        "seconds_per_update": round(rdrop["seconds"] / max(1, rdrop["updates"]), 4),
        "baseline_seconds": base["seconds"],
        "time_ratio": round(rdrop["seconds"] / base["seconds"], 3),
        "best_valid": rdrop.get(target.valid_key),
        "valid_at_baseline_time": rdrop.get("valid_at_baseline_time"),
        "seconds_to_baseline_best": rdrop.get("seconds_to_baseline_best"),
    }


def setting_record(target, name, options, results):
    """One setting's entry: its options, per-seed figures and their means over seeds."""
    per_seed = {seed: seed_record(target, runs) for seed, runs in results["per_seed"].items()}
    rows = list(per_seed.values())
    return {
        "name": name, "flags": list(options), "seeds": [int(s) for s in per_seed], "per_seed": per_seed,
        **{f"mean_delta_{s}": mean(r[f"delta_{s}"] for r in rows) for s in target.scores},
        "p_values": {seed: r[f"p_{target.scores[0]}"] for seed, r in per_seed.items()},
        "train_seconds_mean": mean(r["seconds"] for r in rows),
        "time_ratio": round(mean(r["seconds"] for r in rows) / mean(r["baseline_seconds"] for r in rows), 3),
        "best_valid_mean": mean(r["best_valid"] for r in rows),
        "valid_at_baseline_time_mean": mean(r["valid_at_baseline_time"] for r in rows),
        "results_file": results["_path"],
    }


def baseline_record(target, results):
    """The shared baseline's means over seeds."""
    runs = [r["baseline"] for r in results["per_seed"].values()]
    first = target.scores[0]
    return {
        f"test_{first}_mean": mean(r[f"test_{first}"] for r in runs),
        "seconds_mean": mean(r["seconds"] for r in runs),
        "seconds_per_update_mean": mean(r["seconds"] / max(1, r["updates"]) for r in runs),
        "best_valid_mean": mean(r.get(target.valid_key) for r in runs),
    }


def parser(target, doc, names):
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="quick", choices=sorted(target.demo.MODES))
    p.add_argument("--seeds", help="comma-separated (default: the mode's)")
    p.add_argument("--only", action="append", choices=names, help="train only this one (repeatable)")
    p.add_argument("--summary", action="store_true", help="train nothing: rebuild the summary from the results files")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results-dir", default=target.results_dir, help="the demo's and the sweep's results "
                   f"(default: {os.path.relpath(target.results_dir, REPO)})")
    return p


def run(target, args, settings, groups=None):
    """Train every setting (``(name, options)``) that ``--only`` names (all without it; a name
    may also be a group of ``groups``: ``{group: [setting names]}``), each through the demo,
    but for those whose results file exists: they are done (the mode's own settings are the
    demo's results file, ``make demo``'s, which a sweep reads and never rewrites; delete a
    setting's file to train it again); returns the demo's exit code, 0 when all went well."""
    wanted = set()
    for name in args.only or []:
        wanted.update((groups or {}).get(name, [name]))
    for name, options in settings:
        if args.only and name not in wanted:
            continue
        path = results_path(target, args, options)
        if os.path.exists(path):
            say(f"{name}: done already ({rel(path)})")
            continue
        code = target.demo.main(demo_argv(args, options))
        if code:
            return code
    return 0


def found_results(target, args, settings):
    """``{name: (options, results)}`` of the settings whose demo results file exists."""
    found = {}
    for name, options in settings:
        path = results_path(target, args, options)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found[name] = (options, dict(json.load(f), _path=os.path.relpath(path, REPO)))
    return found


def summary(target, args, module, key, found, settings):
    """The sweep's results file content: ``key`` lists the settings' records in sweep order."""
    first = next(iter(found.values()))[1]
    records = [setting_record(target, name, *found[name]) for name, _ in settings if name in found]
    return {"mode": args.mode, "scores": list(target.scores), "baseline": baseline_record(target, first), key: records,
            "run_settings": first["settings"], "commit": git_commit(),
            "command": command_line(module, sys.argv[1:] if args.argv is None else args.argv),
            "date": utc_now(), "machine": machine_info(args.threads, None)}


def main(target, argv, doc, name, key, settings, plot, line, finish=None, groups=None):
    """A sweep's command (``python -m <the demo's package>.<name>``): train the settings
    (``--only``: some; ``--summary``: none), then write ``<name>.json`` (the settings' records
    under ``key``, completed by ``finish(content)`` where given) and its plot, and print one
    ``line(content, record)`` per setting."""
    choices = [n for n, _ in settings] + list(groups or {})
    args = parser(target, doc, choices).parse_args(argv)
    args.argv = argv
    code = 0 if args.summary else run(target, args, settings, groups)
    found = found_results(target, args, settings)
    if code or not found:
        print("error: " + ("a run failed" if code else "no setting's results file yet"), file=sys.stderr)
        return code or 2
    content = summary(target, args, f"{target.package}.{name}", key, found, settings)
    if finish is not None:
        finish(content)
    path = write(args, name, content, plot)
    for record in content[key]:
        print(line(content, record))
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
