#!/usr/bin/env python3
"""What R-Drop costs end to end in language modelling, and what the cheaper variants keep of
its gain.

Trains, on a demo mode's data (quick by default) and seeds, the stock baseline, full R-Drop
and each variant of :data:`VARIANTS` (docs/criterions.md, "Cheaper variants"; the encoder
variant does not apply to a decoder-only model) through the language-model demo (a sweep:
examples/sweep.py; the analysis: examples/end_to_end_cost.py), so the baselines are shared
and every run is resumable.  Per variant and seed: test perplexity, its change against the
seed's baseline with the demo's paired block-bootstrap p, epochs, total training seconds,
seconds per update, validation loss at the baseline's training time and the seconds to reach
the baseline's best validation loss.  Over seeds: ``mean_delta_ppl``, ``gain_share`` (its
mean perplexity reduction over full R-Drop's), ``time_ratio`` (its mean total training
seconds over the baseline's), ``seconds_per_update_ratio``.  Written to
``results/cost.json`` and ``results/cost.png``.

Which variant to recommend is read on validation, never on the test set:
``chosen_on_validation`` names, among the variants whose mean training time is at most
``AFFORDABLE`` (1.5) times the baseline's, the one with the best mean validation loss.

Usage::

    python -m examples.language_model.cost                      # every variant, the quick mode's seeds
    python -m examples.language_model.cost --only fraction0.25  # one variant (and the shared baselines)
    python -m examples.language_model.cost --summary            # only rebuild cost.json from results files
"""

import sys

from examples import sweep
from examples.end_to_end_cost import main as cost_main
from examples.end_to_end_cost import variant
from examples.language_model import demo

TARGET = sweep.Target(demo, scores=("ppl",), valid_key="best_valid_loss", selection=lambda mode: "loss")

VARIANTS = (
    variant("full"),
    variant("fraction0.25", "--rdrop-fraction", "0.25"),
    variant("fraction0.5", "--rdrop-fraction", "0.5"),
    variant("every2", "--rdrop-every", "2"),
)


def main(argv=None):
    return cost_main(TARGET, argv, __doc__, VARIANTS)


if __name__ == "__main__":
    sys.exit(main())
