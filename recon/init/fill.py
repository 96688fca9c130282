"""Initial points where multi-view stereo found none (``init.fill_stride``).

The plane sweep keeps a pixel only when its match is textured, confident and confirmed by
another view: 20-35% of the pixels of a 3-view LLFF scene. The rest (textureless walls,
surfaces near the frame edges that one training view alone sees) start without a single
Gaussian; densification then stretches neighbours over them from the training view, at no
particular depth, and a novel view sees them smeared or not at all. Here each training
view's depth map is completed by push-pull interpolation of its valid inverse depths (the
standard scattered-data fill: average down a pyramid, then fill every hole from the finest
level that has data) and the hole pixels, on a ``stride`` grid, become points with their
image colour.

Only the Gaussians are seeded from these guesses: the depth priors and the prior points that
the pseudo views reproject stay the stereo's own (``recon.init.initialise``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.geometry import unproject_depth
from recon.types import View


def fill_depth(depth: Tensor) -> Tensor:
    """z-depth [H, W] (0 = unknown) -> [H, W] with every pixel set: known pixels unchanged,
    unknown ones interpolated in inverse depth by push-pull. All zeros stays all zeros."""
    valid = depth > 0
    if not bool(valid.any()):
        return depth.clone()
    inv = torch.where(valid, 1.0 / depth.clamp_min(1e-12), torch.zeros_like(depth))[None, None].double()
    weight = valid[None, None].double()
    levels = [(inv, weight)]  # (weighted inverse-depth sum, weight), finest first
    while max(levels[-1][0].shape[-2:]) > 1:  # down to one pixel, which then has data
        s, w = levels[-1]
        kernel = tuple(min(2, n) for n in s.shape[-2:])
        levels.append((F.avg_pool2d(s, kernel, ceil_mode=True), F.avg_pool2d(w, kernel, ceil_mode=True)))
    filled = None
    for s, w in reversed(levels):  # pull: coarsest to finest
        mean = s / w.clamp_min(1e-12)
        if filled is not None:
            up = F.interpolate(filled, size=s.shape[-2:], mode="bilinear", align_corners=False)
            mean = torch.where(w > 0, mean, up)
        filled = mean
    out = 1.0 / filled[0, 0].clamp_min(1e-12)
    return torch.where(valid, depth, out.to(depth.dtype))


def near_valid(valid: Tensor, max_gap: int) -> Tensor:
    """[H, W] bool -> [H, W] bool: pixels within ``max_gap`` pixels (Chebyshev) of a valid one."""
    k = 2 * max_gap + 1
    return F.max_pool2d(valid[None, None].float(), k, stride=1, padding=max_gap)[0, 0] > 0


def hole_points(views: Sequence[View], depths: Sequence[Tensor], stride: int,
                max_gap: int = 0) -> tuple[Tensor, Tensor]:
    """Points [M, 3] and colours [M, 3] for the pixels without stereo depth on a ``stride``
    grid of each view (depth maps at the views' resolution, 0 = invalid), placed at the
    filled depth. Views whose stereo found nothing give no points. ``max_gap`` > 0 seeds only
    holes within that many pixels of a stereo pixel: interpolation between stereo depths, not
    extrapolation over wide empty regions (DTU's black curtain, which push-pull would put at
    the object's depth, in front of it for a novel view)."""
    if stride < 1:
        raise ValueError(f"fill stride must be >= 1, got {stride}")
    if max_gap < 0:
        raise ValueError(f"fill max_gap must be >= 0, got {max_gap}")
    points, colours = [], []
    for view, depth in zip(views, depths):
        if depth.shape != (view.height, view.width):
            raise ValueError(f"depth of {view.name} is {list(depth.shape)}, the view is {view.height}x{view.width}")
        if not bool((depth > 0).any()):
            continue
        grid = torch.zeros_like(depth, dtype=torch.bool)
        grid[stride // 2::stride, stride // 2::stride] = True
        holes = grid & (depth <= 0)  # [H, W]
        if max_gap > 0:
            holes &= near_valid(depth > 0, max_gap)
        sparse = torch.where(holes, fill_depth(depth), torch.zeros_like(depth))
        points.append(unproject_depth(view.camera.K, view.camera.T_cam_world, sparse.float()))
        colours.append(view.image[holes].float())  # row-major, as unproject_depth
    if not points:
        return torch.zeros(0, 3), torch.zeros(0, 3)
    return torch.cat(points), torch.cat(colours)
