"""When R-Drop is applied, to which share of a batch, and with which weight: a late start,
every-k steps, partial duplication and alpha warm-up."""

import math
from dataclasses import dataclass


def ramp(updates: int, warmup: int) -> float:
    """The share of a weight reached ``updates`` updates into a linear warm-up of ``warmup``
    updates (1 from the start where ``warmup`` is 0)."""
    return 1.0 if warmup == 0 else min(1.0, max(0, updates) / warmup)


@dataclass(frozen=True)
class RDropSchedule:
    """R-Drop settings shared by every criterion of this package.

    alpha:   weight of the symmetric KL term (>= 0).
    passes:  number of dropout copies m (>= 2).
    every:   apply R-Drop on every k-th update from ``start`` (updates start,
             start + k, start + 2k, ...), a plain single-pass loss otherwise (>= 1).
    warmup:  alpha grows linearly from 0 to ``alpha`` over this many updates,
             counted from ``start`` (0 = full alpha from the first R-Drop update).
    start:   the first update that runs R-Drop (>= 0); the updates before it are
             the stock criterion's.
    fraction: the share rho of each batch's sentences that runs the m copies
             (0 < rho <= 1); the others run once, with their cross-entropy only.
    """

    alpha: float = 0.0
    passes: int = 2
    every: int = 1
    warmup: int = 0
    start: int = 0
    fraction: float = 1.0

    def __post_init__(self):
        checks = (
            ("--rdrop-alpha", self.alpha, math.isfinite(self.alpha) and self.alpha >= 0,
             "must be a finite number >= 0"),
            ("--rdrop-passes", self.passes, self.passes >= 2,
             "must be >= 2 (R-Drop compares at least two dropout copies)"),
            ("--rdrop-every", self.every, self.every >= 1, "must be >= 1"),
            ("--rdrop-alpha-warmup", self.warmup, self.warmup >= 0, "must be >= 0"),
            ("--rdrop-start-update", self.start, self.start >= 0, "must be >= 0"),
            ("--rdrop-fraction", self.fraction, 0 < self.fraction <= 1,
             "must be in (0, 1]: the share of each batch's sentences that runs the copies"),
        )
        for flag, value, ok, why in checks:
            if not ok:
                raise ValueError(f"{flag}={value}: {why}")

    @classmethod
    def from_config(cls, cfg) -> "RDropSchedule":
        """The schedule of a criterion's dataclass (its ``rdrop_*`` flags)."""
        return cls(
            alpha=float(cfg.rdrop_alpha),
            passes=int(cfg.rdrop_passes),
            every=int(cfg.rdrop_every),
            warmup=int(cfg.rdrop_alpha_warmup),
            start=int(cfg.rdrop_start_update),
            fraction=float(cfg.rdrop_fraction),
        )

    def active(self, num_updates: int) -> bool:
        """Whether the update with this index (0-based) runs the m copies."""
        return num_updates >= self.start and (num_updates - self.start) % self.every == 0

    def alpha_at(self, num_updates: int) -> float:
        """Weight of the KL term at this update (0-based index)."""
        return self.alpha * ramp(num_updates - self.start, self.warmup)

    def ramp_at(self, num_updates: int, warmup: int) -> float:
        """The share reached at this update of a weight warmed up over ``warmup`` updates from
        the start (the semi-supervised weight's ramp-up)."""
        return ramp(num_updates - self.start, warmup)
