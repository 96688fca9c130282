"""Isotropic Gaussians from a clean point cloud: the 3DGS recipe that every init method ends in.

Each point becomes one Gaussian whose size is the mean distance to its three nearest
neighbours, with identity rotation, one opacity and its colour as the SH DC term.
``recon.init.points`` checks and cleans a prior's cloud (falling back to random init) and
``recon.init.random`` samples one; both build their Gaussians here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from recon.types import Gaussians

SH_C0 = 0.28209479177387814  # zeroth-order SH basis constant: colour = 0.5 + SH_C0 * dc
KNN_NEIGHBOURS = 3  # neighbours averaged for the initial scale (3DGS uses 3)
MIN_POINTS = 4  # fewer points than this cannot give a neighbour-based scale


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


def check_opacity(opacity: float) -> None:
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")


def isotropic_gaussians(points: Tensor, colors: Tensor, sh_degree: int, *, opacity: float = 0.1,
                        scale_factor: float = 1.0) -> Gaussians:
    """points [M, 3] (finite, at least MIN_POINTS, not collapsed), colors [M, 3] in [0, 1]
    -> Gaussians (float32, CPU): log scales log(scale_factor * mean 3-NN distance) on all
    three axes, identity rotations, logit(opacity), SH DC = the colour, higher bands zero."""
    check_opacity(opacity)
    points = torch.as_tensor(points).detach().float().cpu()
    colors = torch.as_tensor(colors).detach().float().cpu()
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
