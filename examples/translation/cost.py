#!/usr/bin/env python3
"""What R-Drop costs end to end, and what the cheaper variants keep of its gain.

Trains, on a demo mode's data (quick by default) and seeds, the stock baseline, full R-Drop
and each variant of :data:`VARIANTS` (docs/criterions.md, "Cheaper variants") through the
translation demo (a sweep: examples/translation/sweep.py), so the baselines are shared and
every run is resumable.  Per variant and seed: test BLEU and chrF, the delta against the
seed's baseline with sacrebleu's paired bootstrap p, epochs, total training seconds, seconds
per update, validation loss at the baseline's training time and the seconds to reach the
baseline's best validation loss.  Over seeds: ``mean_delta_bleu``, ``gain_share`` (its mean
gain over full R-Drop's), ``time_ratio`` (its mean total training seconds over the
baseline's), ``seconds_per_update_ratio``.  Written to ``results/cost.json`` and
``results/cost.png`` (test-BLEU gain against training time, every seed a point, the means
marked, the baseline at (1, 0)).

The variants' settings are the grid itself; which one to recommend is read on validation,
never on the test set: ``chosen_on_validation`` names, among the variants whose mean training
time is at most :data:`AFFORDABLE` times the baseline's, the one with the best mean
validation score (the mode's metric: the loss in quick and medium).

Usage::

    python -m examples.translation.cost                      # every variant, the quick mode's seeds
    python -m examples.translation.cost --only every2        # one variant (and the shared baselines)
    python -m examples.translation.cost --summary            # only rebuild cost.json from results files
"""

import sys

from examples.common.fairseq_log import HIGHER_IS_BETTER
from examples.translation import demo, sweep

AFFORDABLE = 1.5  # "at an affordable cost": at most this multiple of the baseline's training time


def variant(name, *flags):
    """A variant: R-Drop at the mode's settings with more R-Drop ``flags``."""
    return name, (("--rdrop-flags=" + " ".join(flags),) if flags else ())


VARIANTS = (
    variant("full"),
    variant("fraction0.25", "--rdrop-fraction", "0.25"),
    variant("fraction0.5", "--rdrop-fraction", "0.5"),
    variant("every2", "--rdrop-every", "2"),
    variant("every4", "--rdrop-every", "4"),
    variant("share-encoder", "--rdrop-share-encoder"),
    variant("start-update300", "--rdrop-start-update", "300"),
    variant("fraction0.5-share-encoder", "--rdrop-fraction", "0.5", "--rdrop-share-encoder"),
)


def shares(content):
    """Each variant's share of full R-Drop's mean gain and its seconds per update against the
    baseline's (cost.json's fields beyond the sweep's)."""
    full = next((v for v in content["variants"] if v["name"] == "full"), None)
    for v in content["variants"]:
        v["gain_share"] = (round(v["mean_delta_bleu"] / full["mean_delta_bleu"], 3)
                           if full and full["mean_delta_bleu"] else None)
        per_update = sweep.mean(s["seconds_per_update"] for s in v["per_seed"].values())
        v["seconds_per_update_ratio"] = round(per_update / content["baseline"]["seconds_per_update_mean"], 3)
    content["chosen_on_validation"] = choose(content["variants"], demo.selected_by(demo.MODES[content["mode"]]))
    for v in content["variants"]:
        v["chosen_on_validation"] = v["name"] == content["chosen_on_validation"]["name"]


def choose(variants, metric):
    """The variant to recommend, read on validation alone: among those whose mean training time
    is at most AFFORDABLE times the baseline's, the best mean validation ``metric`` (the one
    that picks the checkpoints), with the rule that chose it."""
    affordable = [v for v in variants if v["time_ratio"] <= AFFORDABLE and v["best_valid_mean"] is not None]
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    best = min(affordable, key=lambda v: sign * v["best_valid_mean"], default=None)
    return {"name": best and best["name"],
            "rule": f"training time <= {AFFORDABLE}x the baseline's, then the best mean validation {metric}"}


def plot(content):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.plot([1.0], [0.0], "k*", ms=12, label="baseline")
    for i, v in enumerate(content["variants"]):
        points = list(v["per_seed"].values())
        ax.plot([p["time_ratio"] for p in points], [p["delta_bleu"] for p in points], "o", color=f"C{i}",
                alpha=0.5, ms=5)
        ax.plot([v["time_ratio"]], [v["mean_delta_bleu"]], "D", color=f"C{i}", ms=9, label=v["name"])
    ax.set(xlabel="total training time / the baseline's (points: per seed; diamonds: means)",
           ylabel="test BLEU gain over the baseline", title=f"What R-Drop costs end to end ({content['mode']} mode)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def line(v):
    share = "-" if v["gain_share"] is None else f"{v['gain_share']:.3f}"
    return (f"{v['name']:<28} delta BLEU {v['mean_delta_bleu']:+.2f}  gain share {share}  "
            f"time x{v['time_ratio']:.2f}  s/update x{v['seconds_per_update_ratio']:.2f}  p {v['p_values']}"
            + ("  <- chosen on validation" if v["chosen_on_validation"] else ""))


def main(argv=None):
    return sweep.main(argv, __doc__, "cost", "variants", VARIANTS, plot, line, finish=shares)


if __name__ == "__main__":
    sys.exit(main())
