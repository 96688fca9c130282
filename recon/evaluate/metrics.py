"""Image metrics for novel-view evaluation: PSNR, SSIM, LPIPS and their masked variants.

Which implementation computes each number is stated in ``METRIC_IMPLEMENTATIONS`` and
copied into every report, because sparse-view papers disagree on exactly this.

Metric styles (``style=``):

* ``None``: full-image PSNR, SSIM and LPIPS only.
* ``"dtu"`` (RegNeRF / FreeNeRF DTU protocol): ``psnr_masked`` is the PSNR of the mean
  squared error over object-mask pixels only; ``ssim_masked`` and ``lpips_masked`` are
  computed on both images composited on ``background`` outside the mask.
* ``"spare"`` (AIM 2024 SpaRe challenge): ``psnr_masked`` (PSNR-M) over object-mask
  pixels; ``ssim_masked`` (SSIM-M) and ``lpips_masked`` (LPIPS-M) on both images cropped to
  the object's tight bounding box; full-image values are reported beside them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from recon.errors import ReconError

SSIM_KERNEL = 11  # the standard Gaussian window (Wang et al. 2004)
SSIM_SIGMA = 1.5

METRIC_IMPLEMENTATIONS = {
    "psnr": "10*log10(1/MSE), images in [0,1], MSE over all pixels and channels (float64)",
    "psnr_masked": "10*log10(1/MSE) with the MSE over object-mask pixels only (all channels)",
    "ssim": (
        "torchmetrics.functional.image.structural_similarity_index_measure "
        f"(gaussian window {SSIM_KERNEL}x{SSIM_KERNEL}, sigma {SSIM_SIGMA}, k1=0.01, k2=0.03, "
        "data_range=1.0, reflect padding of half a window, mean over every pixel and RGB channel; "
        "torchmetrics 1.x keeps the border, unlike skimage's valid-region mean)"
    ),
    "lpips": (
        "recon.evaluate.lpips: LPIPS v0.1 (Zhang et al. 2018) with torchvision-layout "
        "AlexNet/VGG16 features and the lpips package's linear layers, inputs scaled to [-1,1]"
    ),
    "dtu_masked": "PSNR over mask pixels; SSIM/LPIPS on both images composited on the background",
    "spare_masked": "PSNR-M over mask pixels; SSIM-M/LPIPS-M inside the mask's tight bounding box",
}

STYLES = (None, "dtu", "spare")

# A scorer maps (pred [H, W, 3], gt [H, W, 3]) in [0, 1] to a distance (see recon.evaluate.lpips).
LpipsScorer = Callable[[Tensor, Tensor], float]


def _check_pair(pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ReconError(f"prediction must have shape [H, W, 3], got {list(pred.shape)}; pass one RGB image")
    if pred.shape != gt.shape:
        raise ReconError(
            f"prediction {list(pred.shape)} and ground truth {list(gt.shape)} differ in shape; "
            "render at the ground-truth resolution"
        )
    if mask is not None and tuple(mask.shape) != tuple(gt.shape[:2]):
        raise ReconError(f"mask shape {list(mask.shape)} does not match image {list(gt.shape[:2])}")


def psnr(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1]; over mask pixels only when a mask is given.
    Identical images give +inf (reported as such, never clamped to a made-up value)."""
    diff = (pred.double() - gt.double()) ** 2  # [H, W, 3]
    if mask is not None:
        if not bool(mask.any()):
            return float("nan")
        diff = diff[mask.bool()]  # [M, 3]
    mse = float(diff.mean())
    return float("inf") if mse == 0.0 else -10.0 * math.log10(mse)


def ssim(pred: Tensor, gt: Tensor) -> float:
    """SSIM with the standard 11x11 Gaussian window (sigma 1.5), RGB averaged. Images
    smaller than the window (tiny SpaRe boxes) are first padded by edge replication,
    because torchmetrics' reflect padding needs at least half a window of pixels."""
    p = pred.permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    g = gt.permute(2, 0, 1)[None].float()
    h, w = p.shape[-2:]
    need = SSIM_KERNEL
    if h < need or w < need:
        pad_h, pad_w = max(0, need - h), max(0, need - w)
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        p = torch.nn.functional.pad(p, pads, mode="replicate")
        g = torch.nn.functional.pad(g, pads, mode="replicate")
    value = structural_similarity_index_measure(
        p, g, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL, data_range=1.0
    )
    return float(value)


def mask_bbox(mask: Tensor) -> tuple[int, int, int, int] | None:
    """Tight bounding box (row0, row1, col0, col1), end-exclusive, of a bool mask [H, W]."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def composite(image: Tensor, mask: Tensor, background: Sequence[float]) -> Tensor:
    """image [H, W, 3] with pixels outside mask [H, W] replaced by the background colour."""
    bg = image.new_tensor(tuple(background)).expand_as(image)  # [H, W, 3]
    return torch.where(mask.bool()[..., None], image, bg)


def _lpips(scorer: LpipsScorer | None, pred: Tensor, gt: Tensor) -> float | None:
    return None if scorer is None else float(scorer(pred, gt))


def image_metrics(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor | None = None,
    *,
    style: str | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    lpips: LpipsScorer | None = None,
) -> dict:
    """Metrics of one rendered view. pred, gt [H, W, 3] float in [0, 1]; mask [H, W] bool.

    Returns ``psnr``, ``ssim``, ``lpips`` (None without a scorer) and, for a masked style,
    ``psnr_masked``, ``ssim_masked``, ``lpips_masked``.
    """
    if style not in STYLES:
        raise ReconError(f"unknown metric style {style!r}; use one of None, 'dtu', 'spare'")
    _check_pair(pred, gt, mask)
    pred = pred.detach().float().clamp(0.0, 1.0).cpu()
    gt = gt.detach().float().clamp(0.0, 1.0).cpu()
    out: dict = {
        "psnr": psnr(pred, gt),
        "ssim": ssim(pred, gt),
        "lpips": _lpips(lpips, pred, gt),
    }
    if style is None:
        return out
    if mask is None:
        raise ReconError(f"metric style {style!r} needs an object mask for every test view; the view has none")
    mask = mask.bool().cpu()
    if not bool(mask.any()):
        raise ReconError(f"metric style {style!r}: the object mask of this view is empty; check the mask files")
    out["psnr_masked"] = psnr(pred, gt, mask)
    if style == "dtu":
        p_c, g_c = composite(pred, mask, background), composite(gt, mask, background)
        out["ssim_masked"] = ssim(p_c, g_c)
        out["lpips_masked"] = _lpips(lpips, p_c, g_c)
    else:  # spare: crop to the tight bounding box of the object
        r0, r1, c0, c1 = mask_bbox(mask)  # type: ignore[misc]
        p_b, g_b = pred[r0:r1, c0:c1], gt[r0:r1, c0:c1]  # [h, w, 3]
        out["ssim_masked"] = ssim(p_b, g_b)
        out["lpips_masked"] = _lpips(lpips, p_b, g_b)
    return out


def summarise(per_view: Sequence[dict]) -> dict:
    """Mean of every numeric metric over views. A metric that is None for any view
    (LPIPS without weights) stays None: a mean over a subset would be a different number.
    Infinite PSNR (a perfect view) makes the mean infinite, as it should."""
    if not per_view:
        return {}
    keys = [k for k in per_view[0] if k not in ("name", "view")]
    out: dict = {"num_views": len(per_view)}
    for key in keys:
        values = [d.get(key) for d in per_view]
        if any(v is None for v in values):
            out[key] = None
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(sum(values) / len(values))
    return out


def load_lpips(net: str = "alex", weights_path: str | None = None):
    """LPIPS scorer from local weights, or None with the reason: ``(scorer, reason)``.
    See recon.evaluate.lpips.find_lpips for where weights are looked for."""
    from recon.evaluate.lpips import find_lpips

    return find_lpips(net, weights_path)
