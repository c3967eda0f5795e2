"""What R-Drop costs end to end, and what the cheaper variants keep of its gain: the analysis
the translation and language-model cost sweeps share (``python -m examples.translation.cost``,
``python -m examples.language_model.cost``).

A cost sweep is a sweep (examples/sweep.py) whose settings are variants of R-Drop: full R-Drop
at the mode's settings and the same with more R-Drop flags (docs/criterions.md, "Cheaper
variants").  Beyond the sweep's per-setting figures it records, per variant, ``gain_share``
(its mean gain in the first test score over full R-Drop's: the share of full R-Drop's gain it
keeps, for a perplexity as for BLEU), ``seconds_per_update_ratio`` (against the baseline's)
and which variant to recommend, read on validation alone, never on the test set:
``chosen_on_validation`` names, among the variants whose mean training time is at most
:data:`AFFORDABLE` times the baseline's, the one with the best mean validation score of the
metric that picks the checkpoints.
"""

from examples import sweep
from examples.common.fairseq_log import HIGHER_IS_BETTER

AFFORDABLE = 1.5  # "at an affordable cost": at most this multiple of the baseline's training time

SCORE_NAMES = {"bleu": "BLEU", "chrf": "chrF", "ppl": "perplexity"}


def variant(name, *flags):
    """A variant: R-Drop at the mode's settings with more R-Drop ``flags``."""
    return name, (("--rdrop-flags=" + " ".join(flags),) if flags else ())


def shares(content, metric):
    """Each variant's share of full R-Drop's mean gain and its seconds per update against the
    baseline's, and the variant chosen on validation ``metric`` (the fields beyond the sweep's)."""
    score = content["scores"][0]
    full = next((v for v in content["variants"] if v["name"] == "full"), None)
    for v in content["variants"]:
        gain, full_gain = v[f"mean_delta_{score}"], full and full[f"mean_delta_{score}"]
        v["gain_share"] = round(gain / full_gain, 3) if full_gain else None
        per_update = sweep.mean(s["seconds_per_update"] for s in v["per_seed"].values())
        v["seconds_per_update_ratio"] = round(per_update / content["baseline"]["seconds_per_update_mean"], 3)
    content["chosen_on_validation"] = choose(content["variants"], metric)
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
    """The test-score gain against the training time ratio, every seed a point, each variant's
    mean a diamond, the baseline a star at (1, 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = content["scores"][0]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.plot([1.0], [0.0], "k*", ms=12, label="baseline")
    for i, v in enumerate(content["variants"]):
        points = list(v["per_seed"].values())
        ax.plot([p["time_ratio"] for p in points], [p[f"delta_{score}"] for p in points], "o", color=f"C{i}",
                alpha=0.5, ms=5)
        ax.plot([v["time_ratio"]], [v[f"mean_delta_{score}"]], "D", color=f"C{i}", ms=9, label=v["name"])
    lower = " (lower is better)" if score == "ppl" else ""
    ax.set(xlabel="total training time / the baseline's (points: per seed; diamonds: means)",
           ylabel=f"test {SCORE_NAMES.get(score, score)} change against the baseline{lower}",
           title=f"What R-Drop costs end to end ({content['mode']} mode)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def line(content, v):
    """How the sweep prints variant ``v`` of ``content``."""
    score = content["scores"][0]
    share = "-" if v["gain_share"] is None else f"{v['gain_share']:.3f}"
    return (f"{v['name']:<28} delta {SCORE_NAMES.get(score, score)} {v[f'mean_delta_{score}']:+.2f}  "
            f"gain share {share}  time x{v['time_ratio']:.2f}  s/update x{v['seconds_per_update_ratio']:.2f}  "
            f"p {v['p_values']}" + ("  <- chosen on validation" if v["chosen_on_validation"] else ""))


def main(target, argv, doc, variants):
    """The cost sweep of ``target``'s demo over ``variants``: ``<results>/cost.json``, ``cost.png``."""
    return sweep.main(target, argv, doc, "cost", "variants", variants, plot, line,
                      finish=lambda content: shares(content, target.selection(content["mode"])))
