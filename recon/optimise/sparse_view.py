"""Regularisers against overfitting a few views, as small functions the trainer calls.

* ``drop_gaussians``: DropGaussian / DropoutGS. Each training step a random fraction of the
  Gaussians is made transparent and the others' opacity is scaled by ``1 / (1 - rate)`` so
  the expected coverage is unchanged; the survivors must explain the view on their own,
  which stops small groups of Gaussians co-adapting to one training image. Off at test time
  (the trainer only calls it in the training step).
* ``decay_opacities_``: Binocular3DGS's opacity decay. Multiplying every opacity by a factor
  < 1 every few steps lets the photometric gradient restore the Gaussians the views need,
  while the floaters nothing supports fade below the pruning threshold.
* ``shifted_camera``: the virtual right-eye camera of the binocular consistency loss
  (``recon.optimise.losses.binocular_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.types import Camera

# Opacity logit of a dropped Gaussian: sigmoid(-30) ~ 1e-13, far below the rasteriser's
# alpha threshold, so it is skipped and receives no gradient this step.
_DROPPED_LOGIT = -30.0
# Compensated opacities are capped below 1 so their logit stays finite.
_MAX_OPACITY = 0.999


def drop_gaussians(opacity_logits: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Opacity logits [N] with a random ``rate`` of the Gaussians dropped and the rest
    compensated (opacity / (1 - rate), capped at 0.999). Differentiable in the kept logits;
    ``rate <= 0`` returns the input unchanged."""
    if rate <= 0:
        return opacity_logits
    if rate >= 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    keep = torch.rand(opacity_logits.shape, generator=generator).to(opacity_logits.device) >= rate  # [N]
    opacity = (torch.sigmoid(opacity_logits) / (1.0 - rate)).clamp(max=_MAX_OPACITY)
    return torch.where(keep, torch.logit(opacity), torch.full_like(opacity_logits, _DROPPED_LOGIT))


@torch.no_grad()
def decay_opacities_(opacity_logits: Tensor, factor: float) -> None:
    """In place: opacity <- factor * opacity for every Gaussian (logits [N])."""
    if not 0 < factor <= 1:
        raise ValueError(f"opacity decay factor must be in (0, 1], got {factor}")
    if factor == 1:
        return
    opacity_logits.copy_(torch.logit(torch.sigmoid(opacity_logits) * factor, eps=1e-12))


def shifted_camera(cam: Camera, baseline: float) -> Camera:
    """The camera translated by ``baseline`` (world units) along its own x axis (right in
    OpenCV's x-right, y-down, z-forward frame), same orientation and intrinsics: the second
    eye of a rectified stereo pair, so a point at depth z moves ``fx * baseline / z`` pixels
    to the left in its image."""
    shift = torch.eye(4, dtype=cam.T_cam_world.dtype)
    shift[0, 3] = -baseline  # x_virtual = x_cam - baseline
    return Camera(cam.K, shift @ cam.T_cam_world, cam.width, cam.height, cam.distortion)


def drop_occluded(depth: Tensor, window: int = 5, tolerance: float = 0.05) -> Tensor:
    """Sparse splatted depth [H, W] (0 = none) without the points that show through gaps
    of a nearer surface: a pixel is kept only if its depth is within ``tolerance``
    (relative) of the nearest depth in its ``window`` x ``window`` neighbourhood. Without
    this, pseudo views far from the training views get background depth on foreground
    surfaces, and a depth loss there pulls the surfaces back."""
    if window <= 1:
        return depth
    inf = torch.where(depth > 0, depth, torch.full_like(depth, float("inf")))
    nearest = -torch.nn.functional.max_pool2d(-inf[None, None], window, stride=1, padding=window // 2)[0, 0]
    keep = (depth > 0) & (depth <= nearest * (1.0 + tolerance))
    return torch.where(keep, depth, torch.zeros_like(depth))
