"""Image metrics for novel-view evaluation: PSNR, two SSIMs, two LPIPS networks, and their
masked variants, each under a name that says which implementation it is.

Sparse-view papers disagree on exactly these details, so every variant is reported side by
side and ``METRIC_IMPLEMENTATIONS`` (copied into every report) states what each computes:

* ``ssim_3dgs``: the 3DGS repository's ``ssim`` (11x11 Gaussian window, sigma 1.5, zero
  padding, mean over the whole map): what FSGS, DNGaussian, CoR-GS and Binocular3DGS report.
* ``ssim_skimage``: ``skimage.metrics.structural_similarity`` with its defaults (7x7
  uniform window, sample covariance, mean over the valid region): RegNeRF / FreeNeRF.
* ``lpips_vgg`` (most sparse-view tables) and ``lpips_alex`` (SpaRe), null with the reason
  when their weights are not found locally.

Metric styles (``style=``), chosen by the split protocol (``metric_style_for``):

* ``None``: full-image metrics only.
* ``"dtu"`` (RegNeRF / FreeNeRF DTU protocol): ``psnr_masked`` is the PSNR of the mean
  squared error over object-mask pixels only; the masked SSIMs and LPIPS are computed on
  both images composited on ``background`` outside the mask.
* ``"spare"`` (AIM 2024 SpaRe challenge): ``psnr_masked`` (PSNR-M) over object-mask
  pixels; SSIM-M and LPIPS-M on both images cropped to the object's tight bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ReconError
from recon.optimise.losses import psnr

__all__ = [
    "HEADLINE",
    "LPIPS_NETS",
    "METRIC_IMPLEMENTATIONS",
    "STYLES",
    "composite",
    "headline_keys",
    "image_metrics",
    "load_lpips",
    "mask_bbox",
    "metric_style_for",
    "psnr",
    "ssim_3dgs",
    "ssim_skimage",
    "summarise",
]

SSIM_3DGS_WINDOW = 11  # graphdeco-inria/gaussian-splatting utils/loss_utils.py: gaussian(11, 1.5)
SSIM_3DGS_SIGMA = 1.5
SSIM_SKIMAGE_WINDOW = 7  # skimage.metrics.structural_similarity's default win_size
_C1, _C2 = 0.01**2, 0.03**2  # K1 = 0.01, K2 = 0.03, data range 1

LPIPS_NETS = ("vgg", "alex")

METRIC_IMPLEMENTATIONS = {
    "psnr": "recon.optimise.losses.psnr: 10*log10(1/MSE), images in [0,1], float64 MSE over all pixels and channels",
    "psnr_masked": "the same PSNR with the MSE over object-mask pixels only (all channels)",
    "ssim_3dgs": (
        f"3DGS repository ssim: {SSIM_3DGS_WINDOW}x{SSIM_3DGS_WINDOW} Gaussian window, sigma {SSIM_3DGS_SIGMA}, "
        "zero padding of half a window, C1=0.01^2, C2=0.03^2, mean over every pixel and RGB channel "
        "(FSGS, DNGaussian, CoR-GS, Binocular3DGS)"
    ),
    "ssim_skimage": (
        f"skimage.metrics.structural_similarity defaults: {SSIM_SKIMAGE_WINDOW}x{SSIM_SKIMAGE_WINDOW} uniform "
        "window, sample covariance (N/(N-1)), K1=0.01, K2=0.03, data_range=1, mean over the valid region "
        "and the RGB channels (RegNeRF, FreeNeRF); null for images under 7 pixels"
    ),
    "lpips_vgg": (
        "recon.evaluate.lpips: LPIPS v0.1 (Zhang et al. 2018), VGG16 features + lpips linear layers, inputs "
        "in [-1,1], spatial mean; checked against the lpips package on identical weights"
    ),
    "lpips_alex": "as lpips_vgg with AlexNet features (the SpaRe challenge's LPIPS)",
    "dtu_masked": "*_masked: PSNR over mask pixels; SSIM/LPIPS on both images composited on the background",
    "spare_masked": "*_masked: PSNR-M over mask pixels; SSIM-M/LPIPS-M inside the mask's tight bounding box",
}

STYLES = (None, "dtu", "spare")
_PROTOCOL_STYLES = {"dtu": "dtu", "spare": "spare"}

# The columns a table leads with, per style: named for what they are.
HEADLINE = {
    None: {"psnr": "psnr", "ssim": "ssim_3dgs", "lpips": "lpips_vgg"},
    "dtu": {"psnr": "psnr_masked", "ssim": "ssim_3dgs_masked", "lpips": "lpips_vgg_masked"},
    "spare": {"psnr": "psnr_masked", "ssim": "ssim_3dgs_masked", "lpips": "lpips_alex_masked"},
}

# A scorer maps (pred [H, W, 3], gt [H, W, 3]) in [0, 1] to a distance (see recon.evaluate.lpips).
LpipsScorer = Callable[[Tensor, Tensor], float]


def format_metric(value, missing: str = "n/a") -> str:
    """One metric value as text for people (terminal and report.html): 4 decimals, and
    "inf" (a pixel-perfect view's PSNR), "nan" or ``missing`` (not computed) spelled out."""
    if value is None:
        return missing
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def metric_style_for(protocol: str | None) -> str | None:
    """Metric style of a split protocol: the one map used by `recon fit`, `recon eval` and bench."""
    return _PROTOCOL_STYLES.get(protocol or "")


def headline_keys(style: str | None) -> dict[str, str]:
    return dict(HEADLINE[style])


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


def _bchw(img: Tensor) -> Tensor:
    return img.permute(2, 0, 1)[None].double()  # [H, W, 3] -> [1, 3, H, W]


def ssim_3dgs(pred: Tensor, gt: Tensor) -> float:
    """SSIM as the 3DGS repository computes it (utils/loss_utils.py ``ssim``): a normalised
    11x11 Gaussian window (sigma 1.5) applied with zero padding, so border windows see zeros."""
    x, y = _bchw(pred), _bchw(gt)  # [1, 3, H, W]
    coords = torch.arange(SSIM_3DGS_WINDOW, dtype=torch.float64) - SSIM_3DGS_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_3DGS_SIGMA**2))
    g = g / g.sum()  # [S]
    pad = SSIM_3DGS_WINDOW // 2
    # The 2-D window is the outer product g g^T, so two 1-D passes with the same zero padding
    # give the same blur (to float64 rounding) at a fifth of the cost (25 DTU views add up).
    row = g.view(1, 1, 1, -1).expand(3, 1, 1, SSIM_3DGS_WINDOW)
    col = g.view(1, 1, -1, 1).expand(3, 1, SSIM_3DGS_WINDOW, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, row, padding=(0, pad), groups=3), col, padding=(pad, 0), groups=3)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * sxy + _C2)) / ((mu_x**2 + mu_y**2 + _C1) * (sxx + syy + _C2))
    return float(ssim_map.mean())


def ssim_skimage(pred: Tensor, gt: Tensor) -> float | None:
    """``skimage.metrics.structural_similarity(pred, gt, channel_axis=-1, data_range=1.0)``
    with its defaults, in torch: 7x7 uniform window, sample covariance, mean over the region
    where the window fits (skimage filters with reflection, then crops those borders, which
    is the same as a valid-only filter). None when the image is smaller than the window
    (skimage raises there)."""
    w = SSIM_SKIMAGE_WINDOW
    if min(pred.shape[0], pred.shape[1]) < w:
        return None
    x, y = _bchw(pred), _bchw(gt)

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, w, stride=1)

    cov_norm = w * w / (w * w - 1.0)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + _C1) * (2 * vxy + _C2)) / ((ux**2 + uy**2 + _C1) * (vx + vy + _C2))
    return float(s.mean())


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


def _lpips(scorers: Mapping[str, LpipsScorer | None], pred: Tensor, gt: Tensor, suffix: str = "") -> dict:
    return {f"lpips_{net}{suffix}": (None if scorers.get(net) is None else float(scorers[net](pred, gt)))
            for net in LPIPS_NETS}


def _region_metrics(pred: Tensor, gt: Tensor, scorers: Mapping[str, LpipsScorer | None], suffix: str = "") -> dict:
    return {f"ssim_3dgs{suffix}": ssim_3dgs(pred, gt), f"ssim_skimage{suffix}": ssim_skimage(pred, gt),
            **_lpips(scorers, pred, gt, suffix)}


def image_metrics(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor | None = None,
    *,
    style: str | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    lpips: Mapping[str, LpipsScorer | None] | None = None,
) -> dict:
    """Metrics of one rendered view. pred, gt [H, W, 3] float in [0, 1]; mask [H, W] bool;
    ``lpips``: scorer per network ("vgg", "alex"), None or missing = not available.

    Returns ``psnr``, ``ssim_3dgs``, ``ssim_skimage``, ``lpips_vgg``, ``lpips_alex`` (None
    without a scorer) and, for a masked style, the same keys with ``_masked``.
    """
    if style not in STYLES:
        raise ReconError(f"unknown metric style {style!r}; use one of None, 'dtu', 'spare'")
    _check_pair(pred, gt, mask)
    scorers = dict(lpips or {})
    pred = pred.detach().float().clamp(0.0, 1.0).cpu()
    gt = gt.detach().float().clamp(0.0, 1.0).cpu()
    out: dict = {"psnr": psnr(pred, gt), **_region_metrics(pred, gt, scorers)}
    if style is None:
        return out
    if mask is None:
        raise ReconError(f"metric style {style!r} needs an object mask for every test view; the view has none")
    mask = mask.bool().cpu()
    if not bool(mask.any()):
        raise ReconError(f"metric style {style!r}: the object mask of this view is empty; check the mask files")
    out["psnr_masked"] = psnr(pred, gt, mask)
    if style == "dtu":
        p_m, g_m = composite(pred, mask, background), composite(gt, mask, background)
    else:  # spare: crop to the tight bounding box of the object
        r0, r1, c0, c1 = mask_bbox(mask)  # type: ignore[misc]
        p_m, g_m = pred[r0:r1, c0:c1], gt[r0:r1, c0:c1]  # [h, w, 3]
    out.update(_region_metrics(p_m, g_m, scorers, "_masked"))
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
