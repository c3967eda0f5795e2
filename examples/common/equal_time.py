"""Equal-time figures: where R-Drop stands at the baseline's training time, and how long it
takes to reach the baseline's best.

Both come from the runs' validation curves, each epoch's row holding the validation
metric that picks the checkpoint and ``seconds``, the run's wall-clock seconds when the
epoch was done (:func:`examples.common.fairseq_log.parse_train_log`):

* ``valid_at_baseline_time``: the best validation value a run reached within the
  baseline's whole training time (the seconds of the baseline's last epoch); ``None``
  where not one epoch was done by then.  For the baseline it is its own best.
* ``seconds_to_baseline_best``: the seconds at the first epoch whose validation value is
  at least as good as the baseline's best; ``None`` where the run never reached it.  For
  the baseline it is the seconds of its best epoch.
"""


def _better_or_equal(a, b, higher):
    return a >= b if higher else a <= b


def _points(curve, metric):
    return [(row["seconds"], row[metric]) for row in curve
            if row.get(metric) is not None and row.get("seconds") is not None]


def best_of(values, higher):
    return max(values) if higher else min(values)


def equal_time(baseline_curve, curve, metric, higher):
    """``{"valid_at_baseline_time": v, "seconds_to_baseline_best": s}`` of the run whose
    validation ``curve`` it is, against ``baseline_curve`` (both lists of epoch rows);
    ``higher``: whether a higher ``metric`` is better.  Both ``None`` where the baseline's
    curve has no timed point."""
    base = _points(baseline_curve, metric)
    if not base:
        return {"valid_at_baseline_time": None, "seconds_to_baseline_best": None}
    budget = base[-1][0]
    target = best_of([v for _, v in base], higher)
    points = _points(curve, metric)
    within = [v for s, v in points if s <= budget]
    reached = [s for s, v in points if _better_or_equal(v, target, higher)]
    return {
        "valid_at_baseline_time": best_of(within, higher) if within else None,
        "seconds_to_baseline_best": reached[0] if reached else None,
    }
