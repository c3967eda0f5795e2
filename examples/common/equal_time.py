"""Equal-time figures: where a run stands at the baseline's training time, and how long it takes to
reach the baseline's best, from the validation curves' ``seconds`` (the run's wall-clock seconds when
an epoch was done: :func:`examples.common.fairseq_log.parse_train_log`).

* ``valid_at_baseline_time``: the best validation value within the baseline's whole training time;
  ``None`` where not one epoch was done by then (the baseline's own best for the baseline);
* ``seconds_to_baseline_best``: the seconds at the first epoch at least as good as the baseline's
  best; ``None`` where never reached (the seconds of its best epoch for the baseline).
"""


def equal_time(baseline_curve, curve, metric, higher):
    """Both figures of the run of validation ``curve`` against ``baseline_curve`` (epoch rows;
    ``higher``: whether a higher ``metric`` is better); both ``None`` where the baseline's curve has
    no timed point."""
    sign = 1 if higher else -1  # on sign * value, higher is better

    def points(rows):
        return [(r["seconds"], sign * r[metric]) for r in rows
                if r.get(metric) is not None and r.get("seconds") is not None]

    base, run = points(baseline_curve), points(curve)
    if not base:
        return {"valid_at_baseline_time": None, "seconds_to_baseline_best": None}
    budget, target = base[-1][0], max(v for _, v in base)
    within = [v for s, v in run if s <= budget]
    reached = [s for s, v in run if v >= target]
    return {"valid_at_baseline_time": sign * max(within) if within else None,
            "seconds_to_baseline_best": reached[0] if reached else None}
