"""Gaussians from a coloured point cloud (MVS, SIFT or any other prior).

Each point becomes one isotropic Gaussian whose size is the mean distance to its three
nearest neighbours (as in 3DGS), so dense regions start with small splats and sparse
regions with large ones. A cloud that cannot seed an optimisation (empty, non-finite,
collapsed to a point) falls back to random init with a warning instead of failing.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from recon.init.isotropic import MIN_POINTS, check_opacity, isotropic_gaussians
from recon.init.random import random_gaussians
from recon.types import Gaussians

# A cloud whose extent is below this fraction of its distance from the origin (or below
# an absolute floor) has collapsed to a point: it carries no geometry worth keeping.
DEGENERATE_EXTENT = 1e-6


def _degenerate_reason(points: Tensor) -> str | None:
    if points.ndim != 2 or points.shape[-1] != 3:
        return f"points must have shape [M, 3], got {list(points.shape)}"
    if points.shape[0] < MIN_POINTS:
        return f"only {points.shape[0]} points (need at least {MIN_POINTS})"
    extent = float((points.max(0).values - points.min(0).values).norm())
    scale = max(float(points.abs().max()), 1.0)
    if extent <= DEGENERATE_EXTENT * scale:
        return f"all {points.shape[0]} points collapse to one location (extent {extent:.2e})"
    return None


def gaussians_from_points(
    points: Tensor,
    colors: Tensor,
    sh_degree: int,
    *,
    opacity: float = 0.1,
    scale_factor: float = 1.0,
    fallback_n: int = 10_000,
    fallback_centre: Tensor | None = None,
    fallback_radius: float | None = None,
    generator: torch.Generator | None = None,
) -> Gaussians:
    """points [M, 3], colors [M, 3] in [0, 1] -> Gaussians (float32, CPU) as
    ``recon.init.isotropic.isotropic_gaussians`` builds them. Non-finite rows are dropped.
    When what remains is empty or degenerate, warns and returns ``random_gaussians(fallback_n, ...)`` in a ball around
    ``fallback_centre`` (default: the finite points' mean, else the origin) of radius
    ``fallback_radius`` (default: the cloud's extent, else 1)."""
    check_opacity(opacity)
    points = torch.as_tensor(points).detach().float().cpu()
    colors = torch.as_tensor(colors).detach().float().cpu()
    if points.ndim == 2 and colors.shape != points.shape:
        raise ValueError(f"colors must have shape {list(points.shape)} like points, got {list(colors.shape)}")
    if points.ndim == 2 and points.shape[-1] == 3 and points.shape[0] > 0:
        finite = torch.isfinite(points).all(-1) & torch.isfinite(colors).all(-1)  # [M]
        points, colors = points[finite], colors[finite]
    reason = _degenerate_reason(points)
    if reason is not None:
        return _fallback(points, reason, sh_degree, opacity, fallback_n, fallback_centre, fallback_radius, generator)
    return isotropic_gaussians(points, colors, sh_degree, opacity=opacity, scale_factor=scale_factor)


def _fallback(
    points: Tensor,
    reason: str,
    sh_degree: int,
    opacity: float,
    n: int,
    centre: Tensor | None,
    radius: float | None,
    generator: torch.Generator | None,
) -> Gaussians:
    usable = points.ndim == 2 and points.shape[-1] == 3 and points.shape[0] > 0
    if centre is None:
        centre = points.mean(0) if usable else torch.zeros(3)
    if radius is None:
        extent = float((points.max(0).values - points.min(0).values).norm()) if usable else 0.0
        radius = extent if extent > 0 else 1.0
    warnings.warn(
        f"initial point cloud is unusable ({reason}); falling back to {n} random Gaussians "
        f"in a ball of radius {radius:.3g} around {[round(float(c), 3) for c in centre]}",
        RuntimeWarning,
        stacklevel=3,
    )
    return random_gaussians(n, centre, radius, sh_degree, generator, opacity=opacity)
