#!/usr/bin/env python3
"""What R-Drop costs end to end, and what the cheaper variants keep of its gain.

Trains, on a demo mode's data (quick by default) and seeds, the stock baseline, full R-Drop
and each variant of :data:`VARIANTS` (docs/criterions.md, "Cheaper variants") through the
translation demo (a sweep: examples/sweep.py; the analysis: examples/end_to_end_cost.py), so
the baselines are shared and every run is resumable.  Per variant and seed: test BLEU and chrF, the delta against the
seed's baseline with sacrebleu's paired bootstrap p, epochs, total training seconds, seconds
per update, validation loss at the baseline's training time and the seconds to reach the
baseline's best validation loss.  Over seeds: ``mean_delta_bleu``, ``gain_share`` (its mean
gain over full R-Drop's), ``time_ratio`` (its mean total training seconds over the
baseline's), ``seconds_per_update_ratio``.  Written to ``results/cost.json`` and
``results/cost.png`` (test-BLEU gain against training time, every seed a point, the means
marked, the baseline at (1, 0)).

The variants' settings are the grid itself; which one to recommend is read on validation,
never on the test set: ``chosen_on_validation`` names, among the variants whose mean training
time is at most ``AFFORDABLE`` (1.5) times the baseline's, the one with the best mean
validation score (the mode's metric: the loss in quick and medium).

Usage::

    python -m examples.translation.cost                      # every variant, the quick mode's seeds
    python -m examples.translation.cost --only every2        # one variant (and the shared baselines)
    python -m examples.translation.cost --summary            # only rebuild cost.json from results files
"""

import sys

from examples import sweep
from examples.end_to_end_cost import main as cost_main
from examples.end_to_end_cost import variant
from examples.translation import demo

TARGET = sweep.Target(demo, scores=("bleu", "chrf"), valid_key="best_valid",
                      selection=lambda mode: demo.selected_by(demo.MODES[mode]))

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


def main(argv=None):
    return cost_main(TARGET, argv, __doc__, VARIANTS)


if __name__ == "__main__":
    sys.exit(main())
