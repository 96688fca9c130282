"""Learning-rate and spherical-harmonic schedules: pure functions of the iteration, so a
resumed fit picks up exactly where it stopped."""

from __future__ import annotations

import math


def exp_decay(step: int, total: int, lr_init: float, lr_final: float) -> float:
    """Log-linear interpolation from ``lr_init`` (step 0) to ``lr_final`` (step ``total``),
    the 3DGS schedule for Gaussian centres."""
    if total <= 0 or lr_init <= 0 or lr_final <= 0:
        return lr_init
    t = min(max(step / total, 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(lr_init) + t * math.log(lr_final))


def sh_degree_at(step: int, interval: int, max_degree: int) -> int:
    """Active SH degree: 0 for the first ``interval`` steps, then one more band each
    ``interval`` steps (view-dependent colour is learned after the base colour)."""
    if interval <= 0:
        return max_degree
    return min(max_degree, step // interval)


def resolution_factor_at(step: int, schedule) -> float:
    """Image downscale factor at ``step`` from ``optim.resolution_schedule``: pairs
    (start step, factor), the last pair whose start has been reached wins (1 = full size)."""
    factor = 1.0
    for start, f in sorted(schedule):
        if step >= start:
            factor = float(f)
    return factor
