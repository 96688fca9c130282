"""Learning-rate, spherical-harmonic, resolution and diffusion-loss schedules: pure
functions of the iteration, so a resumed fit picks up exactly where it stopped."""

from __future__ import annotations

import math

from recon.optimise.config import DiffusionConfig


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


def diffusion_weight(step: int, c: DiffusionConfig) -> float:
    """Weight of the diffusion pseudo-view loss at ``step``: 0 before ``c.start`` and after
    ``c.stop``, a linear warm-up over ``c.warmup`` steps to ``c.weight``, then constant, or
    a linear decay to ``c.final_weight`` at ``c.stop`` when both are set."""
    if step < c.start or (c.stop is not None and step > c.stop):
        return 0.0
    w = c.weight * (1.0 if c.warmup <= 0 else min(1.0, (step - c.start + 1) / c.warmup))
    if c.final_weight is not None and c.stop is not None and c.stop > c.start + c.warmup \
            and step >= c.start + c.warmup:
        frac = (step - c.start - c.warmup) / (c.stop - c.start - c.warmup)
        w = c.weight + (c.final_weight - c.weight) * min(1.0, frac)
    return float(w)


def diffusion_refresh_due(step: int, c: DiffusionConfig) -> bool:
    """True on the steps where the refined pseudo targets are re-rendered and refined:
    ``c.start`` and every ``c.every`` steps after it, while the loss has weight."""
    return diffusion_weight(step, c) > 0 and (step - c.start) % max(c.every, 1) == 0
