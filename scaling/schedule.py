"""Learning-rate schedules: the LR of each optimizer update as a pure function of the step.

The trainer sets every update's LR from ``lr_at``; a branch's resume check compares its trunk's
LRs before the branch point with its own through the same function.
"""

from __future__ import annotations

import math

from scaling.config import RunConfig, wsd_decay_start

__all__ = ["lr_at"]


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate of optimizer update ``step`` (0-based) of a run of ``cfg.steps`` updates.

    All schedules warm up linearly over ``warmup_steps`` (reaching the peak on the last warmup
    step), then:

    1. "cosine": half-cosine from the peak down to ``lr_min_ratio · peak``, reached exactly on
       the run's last update (Hoffmann et al. 2022 decay over the run's own length).
    2. "wsd": warmup-stable-decay, flat at the peak, then the last ``decay_fraction`` of the
       updates fall to ``lr_min_ratio · peak`` with shape "linear", "1-sqrt" or "cosine"
       (Hägele et al. 2024).
    3. "constant": flat at the peak.
    """
    tc, n = cfg.train, cfg.steps
    assert 0 <= step < n, (step, n)
    peak, low = tc.lr_peak, tc.lr_peak * tc.lr_min_ratio
    if step < tc.warmup_steps:
        return peak * (step + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return peak
    if tc.schedule == "cosine":
        span = n - 1 - tc.warmup_steps  # updates after the first post-warmup one
        progress = (step - tc.warmup_steps) / span if span > 0 else 1.0  # one update left: it ends low
        return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_start = wsd_decay_start(n, tc.warmup_steps, tc.decay_fraction)
    if step < decay_start:
        return peak
    progress = (step - decay_start + 1) / (n - decay_start)
    assert 0 < progress <= 1, progress
    shape = {"linear": 1.0 - progress, "1-sqrt": 1.0 - math.sqrt(progress),
             "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[tc.decay_shape]
    return low + (peak - low) * shape
