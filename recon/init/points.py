"""Gaussians from a coloured point cloud (MVS, SIFT or any other prior).

Each point becomes one isotropic Gaussian whose size is the mean distance to its three
nearest neighbours (as in 3DGS), so dense regions start with small splats and sparse
regions with large ones. A cloud that cannot seed an optimisation (empty, non-finite,
collapsed to a point) falls back to random init with a warning instead of failing.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from recon.types import Gaussians

SH_C0 = 0.28209479177387814  # zeroth-order SH basis constant: colour = 0.5 + SH_C0 * dc
KNN_NEIGHBOURS = 3  # neighbours averaged for the initial scale (3DGS uses 3)
MIN_POINTS = 4  # fewer points than this cannot give a neighbour-based scale
# A cloud whose extent is below this fraction of its distance from the origin (or below
# an absolute floor) has collapsed to a point: it carries no geometry worth keeping.
DEGENERATE_EXTENT = 1e-6


def rgb_to_sh_dc(colors: Tensor) -> Tensor:
    """[M, 3] RGB in [0, 1] -> [M, 3] degree-0 SH coefficient that renders that colour."""
    return (colors - 0.5) / SH_C0


def knn_log_scales(points: Tensor, k: int = KNN_NEIGHBOURS) -> Tensor:
    """[M, 3] -> [M] log of the mean distance to the k nearest other points.

    Duplicate points would give log(0); distances are floored at a small fraction of the
    cloud extent so every Gaussian keeps a finite, positive size."""
    m = int(points.shape[0])
    if m < 2:
        return torch.zeros(m, dtype=torch.float32)
    pts = points.detach().cpu().double().numpy()
    k_eff = min(k, m - 1)
    dist, _ = cKDTree(pts).query(pts, k=k_eff + 1)  # [M, k+1], column 0 is the point itself
    mean_dist = dist[:, 1:].mean(axis=1)  # [M]
    extent = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    floor = max(extent * 1e-4, 1e-8)
    mean_dist = np.maximum(mean_dist, floor)
    return torch.from_numpy(np.log(mean_dist)).float()


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
    """points [M, 3], colors [M, 3] in [0, 1] -> Gaussians (float32, CPU).

    Scales are log(scale_factor * mean 3-NN distance) on all three axes, rotations are the
    identity, opacities are logit(opacity), SH DC reproduces the colour and higher bands
    start at zero. Non-finite rows are dropped. When what remains is empty or degenerate,
    warns and returns ``random_gaussians(fallback_n, ...)`` in a ball around
    ``fallback_centre`` (default: the finite points' mean, else the origin) of radius
    ``fallback_radius`` (default: the cloud's extent, else 1)."""
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
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

    m = points.shape[0]
    log_scales = knn_log_scales(points) + math.log(scale_factor)  # [M]
    num_sh = (sh_degree + 1) ** 2
    sh = torch.zeros(m, num_sh, 3)  # [M, K, 3]
    sh[:, 0] = rgb_to_sh_dc(colors.clamp(0.0, 1.0))
    quats = torch.zeros(m, 4)  # [M, 4]
    quats[:, 0] = 1.0
    return Gaussians(
        means=points.clone(),  # [M, 3]
        log_scales=log_scales[:, None].repeat(1, 3),  # [M, 3]
        quats=quats,
        opacity_logits=torch.full((m,), math.log(opacity / (1.0 - opacity))),  # [M]
        sh=sh,
    )


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
    from recon.init.random import random_gaussians  # local: random.py reuses knn_log_scales

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
