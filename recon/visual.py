"""Colour maps for images people look at: one depth colouring for the run folder's depth
PNGs and the viewer's depth mode, so both show a scene the same way."""

from __future__ import annotations

import torch
from torch import Tensor


def colour_depth(depth: Tensor) -> Tensor:
    """[H, W] z-depth -> [H, W, 3] float turbo colour map of inverse depth (near = warm),
    robust to outliers (2nd-98th percentile of the valid pixels); black where depth is 0
    (nothing rendered / unknown)."""
    import matplotlib

    depth = depth.detach().float().cpu()
    valid = depth > 0
    inv = torch.where(valid, 1.0 / depth.clamp_min(1e-6), 0.0)
    if bool(valid.any()):
        lo, hi = torch.quantile(inv[valid], torch.tensor([0.02, 0.98])).tolist()
        t = ((inv - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
    else:
        t = torch.zeros_like(depth)
    rgb = torch.from_numpy(matplotlib.colormaps["turbo"](t.numpy())[..., :3]).float()
    return rgb * valid[..., None]
