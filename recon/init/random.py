"""Random initialisation: the baseline every prior is measured against."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recon.init.isotropic import MIN_POINTS, isotropic_gaussians
from recon.types import Gaussians


def random_gaussians(
    n: int,
    centre: Tensor | tuple[float, float, float],
    radius: float,
    sh_degree: int,
    generator: torch.Generator | None = None,
    *,
    opacity: float = 0.1,
) -> Gaussians:
    """n Gaussians uniform in the ball of ``radius`` around ``centre`` [3], with uniform
    random colours; scales, rotations and opacities as ``isotropic_gaussians``.
    The same generator state gives the same Gaussians."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be positive and finite, got {radius}")
    centre = torch.as_tensor(centre, dtype=torch.float32).reshape(3)
    direction = torch.randn(n, 3, generator=generator)  # [n, 3]
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # cube root of a uniform variable gives a uniform density inside the ball
    r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)  # [n, 1]
    points = centre + direction * r  # [n, 3]
    colors = torch.rand(n, 3, generator=generator)  # [n, 3]
    if n < MIN_POINTS:  # too few for neighbour scales: give each its share of the ball
        g = isotropic_gaussians(
            torch.cat([points, centre + radius * torch.eye(3), centre[None]])[: max(n, 0) + 4],
            torch.cat([colors, torch.full((4, 3), 0.5)]),
            sh_degree,
            opacity=opacity,
        )
        return Gaussians(*(t[:n] for t in g.tensors()))
    return isotropic_gaussians(points, colors, sh_degree, opacity=opacity)
