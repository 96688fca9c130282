"""Pseudo views: unseen viewpoints between the training cameras, where priors (depth,
diffusion) still constrain the Gaussians although no photograph exists."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recon.geometry import quat_to_rotmat, rotmat_to_quat
from recon.types import Camera


def interpolated_camera(cameras: Sequence[Camera], generator: torch.Generator, jitter: float,
                        size: tuple[int, int] | None = None) -> Camera:
    """A camera between two random cameras of ``cameras`` (normalised-lerp rotation, lerp
    centre) moved by Gaussian noise of std ``jitter`` (world units), with the first one's
    intrinsics, at ``size`` = (width, height) when given. Draws from ``generator`` only."""
    V = len(cameras)
    i, j = torch.randint(V, (2,), generator=generator).tolist()
    t = float(torch.rand((), generator=generator))
    a, b = cameras[i], cameras[j]
    qa, qb = rotmat_to_quat(a.T_cam_world[:3, :3]), rotmat_to_quat(b.T_cam_world[:3, :3])
    qb = qb if float((qa * qb).sum()) >= 0 else -qb
    q = (1 - t) * qa + t * qb  # normalised lerp: the views are close enough for nlerp
    R = quat_to_rotmat(q / q.norm())  # [3, 3]
    centre = (1 - t) * a.centre + t * b.centre
    centre = centre + jitter * torch.randn(3, generator=generator)
    T = torch.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ centre
    cam = Camera(a.K, T, a.width, a.height)
    return cam if size is None or size == (a.width, a.height) else cam.scaled(*size)
