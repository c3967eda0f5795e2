"""A demo's comparison over seeds, from the per-seed records of its runs: the printed table, the
curves' PNG and the results file."""

import datetime
import json
import logging
import os

from examples.common.base import COMPARISONS, RUN_LABELS, RUNS, pair_name, say
from examples.common.stages import atomic_write, unused_path, write_json
from examples.common.stats import mean_std

# the rows every demo's table ends with, and the figures averaged over seeds every demo has: the
# tested checkpoint's epoch and the training run's (see training.training_record)
TRAINING_ROWS = (
    ("its epoch", "best_epoch", "{:d}"),
    ("epochs", "epochs", "{:d}"),
    ("stopped early", "stopped_early", "{}"),
    ("train time (s)", "seconds", "{:.0f}"),
    # equal-time figures (examples/common/equal_time.py), on the validation metric that selects
    ("best valid within the baseline's time", "valid_at_baseline_time", "{:.3f}"),
    ("s to reach the baseline's best", "seconds_to_baseline_best", "{:.0f}"),
)
TRAINING_MEAN_KEYS = ("best_epoch", "epochs", "updates", "seconds")


def seed_table(per_seed, rows, p_values=None, runs=RUNS, pairs=COMPARISONS):
    """The printed comparison: for each row ``(label, key, format)`` of ``rows``, one line per
    seed (each run's value, then for each compared pair ``(a, b)`` the delta b - a and, where
    ``p_values[pair_name(pair)][key][seed]`` exists, the p-value), then the mean ± std over
    seeds and the mean deltas.  Returns the lines."""
    p_values = p_values or {}
    w, dw = (20, 10) if len(runs) == 2 else (15, 12)
    deltas_head = ["delta"] if len(pairs) == 1 else [f"{RUN_LABELS[b][:6]}-{RUN_LABELS[a][:4]}" for a, b in pairs]
    head = f"{'':22}" + "".join(f"{RUN_LABELS[run]:>{w}}" for run in runs) + "".join(
        f"{d:>{dw}}{'p':>9}" for d in deltas_head)
    lines = [head, "-" * (22 + len(runs) * w + len(pairs) * (dw + 9))]
    for label, key, f in rows:
        lines.append(label)
        values = {run: [res[run].get(key) for res in per_seed.values()] for run in runs}
        deltas = {(a, b): [None if x is None or y is None or isinstance(x, bool) else y - x
                           for x, y in zip(values[a], values[b])] for a, b in pairs}
        for i, seed in enumerate(per_seed):
            line = f"  seed {seed:<16}" + "".join(f"{_fmt(f, values[run][i]):>{w}}" for run in runs)
            for pair in pairs:
                p = p_values.get(pair_name(pair), {}).get(key, {}).get(seed)
                line += f"{_fmt_delta(f, deltas[pair][i]):>{dw}}{'' if p is None else f'{p:.4f}':>9}"
            lines.append(line)
        if len(per_seed) > 1 and all(isinstance(v, bool) for vs in values.values() for v in vs):
            lines.append(f"  {'in all':<21}" + "".join(f"{f'{sum(values[run])} of {len(values[run])}':>{w}}"
                                                      for run in runs))
        elif len(per_seed) > 1:
            line = f"  {'mean ± std':<21}" + "".join(f"{_fmt_mean_std(f, values[run]):>{w}}" for run in runs)
            for ds in deltas.values():
                mean_delta = None if None in ds else sum(ds) / len(ds)
                line += f"{_fmt_delta(f, mean_delta):>{dw}}{'':9}"
            lines.append(line.rstrip())
    return lines


def _fmt(f, v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f.format(v)


def _fmt_delta(f, d):
    if d is None or isinstance(d, bool):
        return "-"
    if "d" in f:
        return f"{d:+d}" if isinstance(d, int) else f"{d:+.1f}"
    return "+" + f.format(d) if d >= 0 else f.format(d)


def _fmt_mean_std(f, values):
    if any(v is None or isinstance(v, bool) for v in values):
        return "-"
    mean, std = mean_std(values)
    fmt = f.replace(":d", ":.1f")
    return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std))


def plot_seed_curves(per_seed, path, panels, title, alpha, runs=RUNS):
    """One panel per ``(metric, panel title, y label[, x])``: every seed's curve of each run
    (thin) and, against epochs, their mean over the seeds at each epoch that all of them
    reached (thick); ``x = "seconds"`` plots against the runs' training seconds instead."""
    # matplotlib logs at DEBUG (import, fonts) where logging is set up so
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # a panel only for what the runs logged (a mode that picks checkpoints by loss logs no BLEU)
    panels = [p for p in panels if any(e.get(p[0]) is not None for res in per_seed.values()
                                       for run in runs for e in res[run]["curve"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    colours = {"baseline": "tab:blue", "rdrop": "tab:red", "semi": "tab:green"}
    names = {"baseline": "baseline", "rdrop": f"R-Drop (alpha={alpha:g})",
             "semi": f"semi-supervised R-Drop (alpha={alpha:g})"}
    for ax, (key, panel_title, ylabel, *x_key) in zip(axes[0], panels):
        x = x_key[0] if x_key else "epoch"
        for run in runs:
            curves = [res[run]["curve"] for res in per_seed.values()]
            for i, curve in enumerate(curves):
                rows = [e for e in curve if e.get(key) is not None and e.get(x) is not None]
                ax.plot([e[x] for e in rows], [e[key] for e in rows], "-" if x == "epoch" else ".-",
                        lw=0.8 if x == "epoch" else 1.6,
                        alpha=0.45 if x == "epoch" else 0.8,
                        color=colours[run], label=f"{names[run]}, each seed" if i == 0 else None)
            if x != "epoch":
                continue
            common = sorted(set.intersection(*({e["epoch"] for e in c if e.get(key) is not None} for c in curves)))
            if common:
                by_epoch = [{e["epoch"]: e[key] for e in c if e.get(key) is not None} for c in curves]
                means = [sum(b[x] for b in by_epoch) / len(by_epoch) for x in common]
                ax.plot(common, means, "-", lw=2.4, color=colours[run],
                        label=f"{names[run]}, mean of {len(curves)} seed{'s' if len(curves) > 1 else ''}")
        # the first epoch's values dwarf the rest: scale the axis to the later epochs
        later = [e[key] for res in per_seed.values() for run in runs for e in res[run]["curve"]
                 if e.get(key) is not None and e["epoch"] > 1]
        if len(later) > 2:
            low, high = min(later), max(later)
            margin = 0.05 * (high - low or abs(high) or 1.0)
            ax.set_ylim(low - margin, high + margin)
        ax.set(title=panel_title, xlabel="epoch" if x == "epoch" else "training seconds (wall clock)",
               ylabel=ylabel)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def results_date(json_path):
    """``YYYYmmdd-HHMMSS`` of the results file's own ``date`` (when its run ended), else of its
    modification time (a fresh clone's files all carry the clone's)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            date = datetime.datetime.strptime(json.load(f)["date"], "%Y-%m-%dT%H:%M:%SZ")
    except (OSError, ValueError, KeyError, TypeError):
        date = datetime.datetime.fromtimestamp(os.path.getmtime(json_path))
    return date.strftime("%Y%m%d-%H%M%S")


def write_results(results_dir, stem, results, plot):
    """``<stem>.json`` and ``<stem>.png`` (via ``plot(path)``), earlier ones kept (never deleted) as
    ``<stem>.<date>.json`` and ``.png``, the date of the results they hold: they stay a pair."""
    os.makedirs(results_dir, exist_ok=True)
    json_path, png_path = (os.path.join(results_dir, f"{stem}.{ext}") for ext in ("json", "png"))
    earlier = [path for path in (json_path, png_path) if os.path.exists(path)]
    stamp = results_date(earlier[0]) if earlier else None
    for path in earlier:
        target = unused_path(os.path.join(results_dir, f"{stem}.{stamp}"), os.path.splitext(path)[1])
        os.replace(path, target)
        say(f"kept the previous {os.path.basename(path)} as {os.path.basename(target)}")
    plot(png_path)
    write_json(json_path, results)
    return json_path, png_path
