#!/usr/bin/env python3
"""The R-Drop paper's analyses on our data, with seeds: alpha, dropout, the number of copies m
and the divergence, each against the mode's baseline.

Every setting changes one thing of the mode's R-Drop run (the baseline, at the mode's own
settings, is shared by all; run it once the mode trains each criterion at its validation-best
settings, examples/translation/RESULTS.md): ``--alpha``, R-Drop's ``--rdrop-dropout``, ``--rdrop-passes`` or
``--rdrop-divergence``: 12 settings.  Each is trained through the translation demo (a sweep:
examples/sweep.py; resumable, every setting's demo results file written as the
demo writes it).  Per setting: test BLEU and chrF mean ± std, the delta against the baseline
with sacrebleu's paired bootstrap p per seed, epochs and training seconds.  Written to
``results/ablations.json`` (a ``settings`` list) and ``results/ablations.png`` (the BLEU gain
per setting, every seed a point).  The every-k analysis is the cost sweep's
(examples/translation/cost.py).

Usage::

    python -m examples.translation.ablations --only alpha        # one group: alpha, dropout, passes, divergence
    python -m examples.translation.ablations --summary           # only rebuild ablations.json
"""

import sys

from examples import sweep
from examples.translation.cost import TARGET

GROUPS = {
    "alpha": [("alpha0.5", ("--alpha", "0.5")), ("alpha1", ("--alpha", "1")), ("alpha2", ("--alpha", "2")),
              ("alpha5", ("--alpha", "5")), ("alpha10", ("--alpha", "10"))],
    "dropout": [("dropout0.1", ("--rdrop-dropout", "0.1")), ("dropout0.2", ("--rdrop-dropout", "0.2")),
                ("dropout0.3", ("--rdrop-dropout", "0.3")), ("dropout0.4", ("--rdrop-dropout", "0.4"))],
    "passes": [("m3", ("--rdrop-flags=--rdrop-passes 3",))],
    "divergence": [("js", ("--rdrop-flags=--rdrop-divergence js",)),
                   ("kl-detached", ("--rdrop-flags=--rdrop-divergence kl-detached",))],
}
SETTINGS = tuple(setting for group in GROUPS.values() for setting in group)
GROUP_NAMES = {group: [name for name, _ in settings] for group, settings in GROUPS.items()}


def plot(content):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = content["settings"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(settings) + 2), 4.5))
    ax.axhline(0, color="grey", lw=0.8)
    for i, s in enumerate(settings):
        deltas = [r["delta_bleu"] for r in s["per_seed"].values()]
        ax.plot([i] * len(deltas), deltas, "o", color="tab:red", alpha=0.5)
        ax.plot([i], [s["mean_delta_bleu"]], "D", color="tab:red", ms=8)
    ax.set_xticks(range(len(settings)), [s["name"] for s in settings], rotation=30, ha="right")
    ax.set(ylabel="test BLEU gain over the tuned baseline", title=f"R-Drop ablations ({content['mode']} mode; "
           "points: seeds, diamonds: means)")
    ax.grid(alpha=0.3, axis="y")
    return fig


def line(content, s):
    return f"{s['name']:<14} delta BLEU {s['mean_delta_bleu']:+.2f}  p {s['p_values']}  train {s['train_seconds_mean']:.0f}s"


def main(argv=None):
    return sweep.main(TARGET, argv, __doc__, "ablations", "settings", SETTINGS, plot, line, groups=GROUP_NAMES)


if __name__ == "__main__":
    sys.exit(main())
