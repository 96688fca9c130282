"""Loss terms of the fit, as pure functions of tensors.

Images are [H, W, 3] or [B, H, W, 3] float in [0, 1]; depths are [H, W]. Every function
returns a scalar tensor and is differentiable in its first argument. Nothing here reads
configuration: the trainer passes weights and options in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.optimise import _fused_ssim

# Standard SSIM constants (Wang et al. 2004) for images in [0, 1].
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
# Depths closer than this are treated as "no depth" when turned into disparity.
_MIN_DEPTH = 1e-6


def _as_bchw(img: Tensor) -> Tensor:
    """[H, W, 3] or [B, H, W, 3] -> [B, 3, H, W]."""
    if img.dim() == 3:
        img = img[None]
    return img.permute(0, 3, 1, 2)


def l1(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error; ``mask`` ([..., H, W] bool) restricts it to True pixels."""
    err = (pred - gt).abs()  # [..., H, W, 3]
    if mask is None:
        return err.mean()
    weight = mask[..., None].to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def _gaussian_1d(size: int, sigma: float, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # [S]


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Valid-region Gaussian blur of [B, C, H, W] as two 1-D passes (S times cheaper than
    the 2-D window, which matters at full resolution on a CPU)."""
    C, S = x.shape[1], g.shape[0]
    x = F.conv2d(x, g.view(1, 1, 1, S).expand(C, 1, 1, S), groups=C)
    return F.conv2d(x, g.view(1, 1, S, 1).expand(C, 1, S, 1), groups=C)


def _ssim_window(height: int, width: int, like: Tensor) -> Tensor:
    """The 1-D window [S]: 11 taps (sigma 1.5), shrunk to the largest odd size the image fits."""
    size = min(_SSIM_WINDOW, width, height)
    size -= 1 - size % 2  # odd window
    return _gaussian_1d(size, _SSIM_SIGMA, like)


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean SSIM with an 11x11 Gaussian window (sigma 1.5), valid-region only like
    torchmetrics, so the fit and the evaluation agree on what SSIM means. On CPU float32
    images it runs as one compiled kernel with an analytic backward (recon.optimise._fused_ssim,
    the same quantity; tests/test_ssim_fused.py checks both against each other)."""
    x, y = (pred[None], gt[None]) if pred.dim() == 3 else (pred, gt)  # [B, H, W, 3]
    g = _ssim_window(x.shape[1], x.shape[2], x)
    if _fused_ssim.usable(x, y):
        return _fused_ssim.mean_ssim(x, y, g, _SSIM_C1, _SSIM_C2)
    return _ssim_torch(x, y, g)


def _ssim_torch(pred: Tensor, gt: Tensor, g: Tensor) -> Tensor:
    """``ssim`` in torch ops (any device and dtype; differentiable in both images)."""
    x, y = _as_bchw(pred), _as_bchw(gt)  # [B, 3, H, W]
    # One blur call for the five statistics: [B, 15, H, W].
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), g)
    mu_x, mu_y, exx, eyy, exy = stats.split(x.shape[1], dim=1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + _SSIM_C1) * (2 * sxy + _SSIM_C2)
    den = (mu_x**2 + mu_y**2 + _SSIM_C1) * (sxx + syy + _SSIM_C2)
    return (num / den).mean()


def photometric(pred: Tensor, gt: Tensor, ssim_weight: float, mask: Tensor | None = None) -> Tensor:
    """The 3DGS photometric loss ``(1 - w) * L1 + w * (1 - SSIM)``."""
    loss = (1.0 - ssim_weight) * l1(pred, gt, mask)
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim(pred, gt))
    return loss


def mutual_photometric(a: Tensor, b: Tensor, ssim_weight: float) -> Tensor:
    """``photometric(a, b, ssim_weight)`` with its gradient in both images (two renders compared with each
    other, recon.optimise.coreg). The fused CPU SSIM differentiates its first argument only; SSIM is
    symmetric in its arguments, so SSIM(a, b.detach()) + SSIM(b, a.detach()) - SSIM(a, b).detach() has
    the value SSIM(a, b) and its full gradient in a and in b (tests/test_coreg.py checks it against torch)."""
    loss = (1.0 - ssim_weight) * l1(a, b)
    if ssim_weight > 0:
        both = ssim(a, b.detach()) + ssim(b, a.detach())
        loss = loss + ssim_weight * (1.0 - (both - both.detach() / 2))
    return loss


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1] (float64 MSE over every pixel and channel, or over the
    pixels of ``mask`` [H, W] only). The one PSNR of recon: the trainer's readout and the
    evaluation (recon.evaluate.metrics) both call it. Identical images give +inf; an empty
    mask gives nan."""
    diff = (pred.detach().double() - gt.detach().double()) ** 2  # [..., H, W, 3]
    if mask is not None:
        if not bool(mask.any()):
            return float("nan")
        diff = diff[mask.bool()]  # [M, 3]
    mse = float(diff.mean())
    return float("inf") if mse <= 0.0 else -10.0 * math.log10(mse)


def _flat_indices(mask: Tensor) -> Tensor:
    """Flat indices [P] of the True pixels of ``mask`` [H, W], for ``_gather``."""
    return mask.reshape(-1).nonzero().squeeze(1)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x[mask]`` for ``idx = _flat_indices(mask)``: the same values in the same order, but one nonzero() serves
    every image sharing the mask, and the backward is an index_add (boolean indexing's is an accumulating index_put)."""
    return x.reshape(-1).index_select(0, idx)


def _comparable(rendered: Tensor, prior: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Puts rendered z-depth and a prior in the same monotone space: a "disparity" prior
    (larger = nearer, e.g. monocular models) is compared with rendered inverse depth."""
    if kind == "depth":
        return rendered, prior
    if kind == "disparity":
        return 1.0 / rendered.clamp_min(_MIN_DEPTH), prior
    raise ValueError(f"depth prior kind must be 'depth' or 'disparity', got {kind!r}")


def pearson_depth_loss(
    rendered: Tensor, prior: Tensor, kind: str = "depth", valid: Tensor | None = None
) -> Tensor:
    """``1 - Pearson(rendered, prior)`` over valid pixels: invariant to the prior's scale
    and shift, so monocular or sparse MVS depth can guide without metric agreement.

    rendered, prior: [H, W]; valid: [H, W] bool (defaults to prior > 0 and rendered > 0).
    """
    if valid is None:
        valid = (prior > 0) & (rendered.detach() > 0)
    idx = _flat_indices(valid)  # [P]
    if idx.numel() < 16:  # too few pixels for a meaningful correlation
        return rendered.sum() * 0.0
    a, b = _comparable(_gather(rendered, idx), _gather(prior, idx), kind)  # [P], [P]
    a = a - a.mean()
    b = b - b.mean()
    corr = (a * b).sum() / (a.norm() * b.norm() + 1e-8)
    return 1.0 - corr


def depth_ranking_loss(
    rendered: Tensor,
    prior: Tensor,
    kind: str = "depth",
    valid: Tensor | None = None,
    *,
    num_pairs: int = 4096,
    window: int = 8,
    margin: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Local depth-ranking loss (SparseNeRF / RDG-GS style): for random pixel pairs at
    most ``window`` pixels apart, if the prior says pixel a is nearer than pixel b, the
    rendered depth must say so too; violations are penalised by a hinge.

    rendered, prior: [H, W]; valid: [H, W] bool (defaults to prior > 0).
    """
    if kind not in ("depth", "disparity"):
        raise ValueError(f"depth prior kind must be 'depth' or 'disparity', got {kind!r}")
    H, W = rendered.shape
    if valid is None:
        valid = prior > 0
    dev = rendered.device
    ya = torch.randint(0, H, (num_pairs,), generator=generator).to(dev)
    xa = torch.randint(0, W, (num_pairs,), generator=generator).to(dev)
    off = torch.randint(-window, window + 1, (2, num_pairs), generator=generator).to(dev)
    yb = (ya + off[0]).clamp(0, H - 1)
    xb = (xa + off[1]).clamp(0, W - 1)
    keep = valid[ya, xa] & valid[yb, xb]
    if int(keep.sum()) == 0:
        return rendered.sum() * 0.0
    ra, rb = rendered[ya, xa][keep], rendered[yb, xb][keep]  # rendered z-depth
    pa, pb = prior[ya, xa][keep], prior[yb, xb][keep]
    # Nearer-than in the prior's own space: smaller depth, or larger disparity.
    a_nearer = pa < pb if kind == "depth" else pa > pb
    differs = pa != pb
    sign = torch.where(a_nearer, 1.0, -1.0)  # +1: want ra < rb
    violation = torch.relu(sign * (ra - rb) + margin)  # [P]
    return (violation * differs).sum() / differs.sum().clamp_min(1)


def opacity_regulariser(opacity_logits: Tensor) -> Tensor:
    """Mean opacity: pushes unneeded Gaussians towards transparency so pruning removes
    the floaters that sparse views cannot constrain."""
    return torch.sigmoid(opacity_logits).mean()


def scale_regulariser(log_scales: Tensor, max_scale: float, max_ratio: float = 10.0) -> Tensor:
    """Penalises Gaussians larger than ``max_scale`` (scene units) and needle-like ones
    (largest / smallest axis above ``max_ratio``); both become floaters in new views."""
    scales = torch.exp(log_scales)  # [N, 3]
    too_big = torch.relu(scales.max(dim=-1).values - max_scale).mean()
    ratio = scales.max(dim=-1).values / scales.min(dim=-1).values.clamp_min(1e-8)
    too_thin = torch.relu(ratio - max_ratio).mean() / max_ratio
    return too_big + too_thin


def warp_from_shifted(shifted: Tensor, depth: Tensor, fx: float, baseline: float) -> tuple[Tensor, Tensor]:
    """Warps the image of a camera shifted by ``baseline`` along the source camera's x axis
    (``recon.optimise.sparse_view.shifted_camera``) back into the source view through the
    source view's z-depth: source pixel (u, v) at depth z sees what the shifted camera sees
    at (u - fx * baseline / z, v). Differentiable in both ``shifted`` and ``depth``.

    shifted: [H, W, 3]; depth: [H, W] (0 = nothing rendered). Returns the warped image
    [H, W, 3] and a [H, W] bool mask of pixels with depth whose sample lies inside the image.
    """
    H, W = depth.shape
    has_depth = depth.detach() > _MIN_DEPTH
    disparity = fx * baseline / depth.clamp_min(_MIN_DEPTH)  # [H, W] pixels
    u = torch.arange(W, dtype=depth.dtype, device=depth.device)[None, :] - disparity  # [H, W]
    v = torch.arange(H, dtype=depth.dtype, device=depth.device)[:, None].expand(H, W)
    # align_corners=True maps pixel index 0 and W-1 to -1 and 1: index arithmetic is exact
    grid = torch.stack([2 * u / max(W - 1, 1) - 1, 2 * v / max(H - 1, 1) - 1], dim=-1)  # [H, W, 2]
    warped = F.grid_sample(shifted.permute(2, 0, 1)[None], grid[None], mode="bilinear",
                           padding_mode="border", align_corners=True)[0].permute(1, 2, 0)  # [H, W, 3]
    inside = (u.detach() >= 0) & (u.detach() <= W - 1) & has_depth
    return warped, inside


def binocular_loss(shifted: Tensor, depth: Tensor, target: Tensor, fx: float, baseline: float,
                   ssim_weight: float = 0.0) -> Tensor:
    """Binocular consistency (Binocular3DGS): the shifted camera's render warped into the
    training view through the rendered depth must reproduce the training image. A wrong
    depth samples the wrong pixels, so the loss supervises geometry with no extra prior.

    shifted: [H, W, 3] render of the shifted camera; depth: [H, W] rendered source depth;
    target: [H, W, 3] training image. ``ssim_weight`` > 0 adds D-SSIM (with the pixels
    without a valid warp filled in from the target, so they score as matches).
    """
    warped, valid = warp_from_shifted(shifted, depth, fx, baseline)
    loss = (1.0 - ssim_weight) * l1(warped, target, valid)
    if ssim_weight > 0:
        filled = torch.where(valid[..., None], warped, target)
        loss = loss + ssim_weight * (1.0 - ssim(filled, target))
    return loss


def metric_depth_loss(rendered: Tensor, prior: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean relative error ``|rendered - prior| / prior`` over valid pixels, for a prior in
    the scene's own metric frame (multi-view stereo points, not a monocular guess): unlike
    Pearson it also fixes the absolute depth, so a floater in front of the surface costs
    its full error. rendered, prior: [H, W]; valid: [H, W] bool (defaults to both > 0)."""
    if valid is None:
        valid = (prior > 0) & (rendered.detach() > 0)
    idx = _flat_indices(valid)  # [P]
    if idx.numel() == 0:
        return rendered.sum() * 0.0
    r, p = _gather(rendered, idx), _gather(prior, idx)
    return ((r - p).abs() / p.clamp_min(_MIN_DEPTH)).mean()
