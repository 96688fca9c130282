"""Image metrics: PSNR/SSIM against independent computations, masked styles, summaries."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recon.errors import ReconError
from recon.evaluate.metrics import METRIC_IMPLEMENTATIONS, image_metrics, mask_bbox, psnr, ssim, summarise


def _pair(h=48, w=64, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(h, w, 3, generator=g)
    pred = (gt + noise * torch.randn(h, w, 3, generator=g)).clamp(0, 1)
    return pred, gt


def _ssim_reference(a, b):
    """Plain-torch SSIM with an 11x11 Gaussian window (sigma 1.5) on reflect-padded
    images, averaged over every pixel (what torchmetrics 1.x does)."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g1 = torch.exp(-(x**2) / (2 * 1.5**2))
    g1 = g1 / g1.sum()
    win = (g1[:, None] * g1[None, :]).expand(3, 1, 11, 11)
    a = F.pad(a.double().permute(2, 0, 1)[None], (5, 5, 5, 5), mode="reflect")
    b = F.pad(b.double().permute(2, 0, 1)[None], (5, 5, 5, 5), mode="reflect")
    conv = lambda t: F.conv2d(t, win, groups=3)  # noqa: E731
    mu_a, mu_b = conv(a), conv(b)
    s_aa = conv(a * a) - mu_a**2
    s_bb = conv(b * b) - mu_b**2
    s_ab = conv(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return float(m.mean())


def test_psnr_matches_definition():
    pred, gt = _pair()
    mse = float(((pred.double() - gt.double()) ** 2).mean())
    assert psnr(pred, gt) == pytest.approx(-10 * math.log10(mse), rel=1e-9)
    assert psnr(gt, gt) == math.inf


def test_ssim_standard_window_matches_reference():
    pred, gt = _pair(noise=0.1)
    assert ssim(pred, gt) == pytest.approx(_ssim_reference(pred, gt), abs=1e-5)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-6)
    assert "11x11" in METRIC_IMPLEMENTATIONS["ssim"] and "torchmetrics" in METRIC_IMPLEMENTATIONS["ssim"]


def test_metrics_order_with_noise():
    gt = _pair()[1]
    lo = image_metrics(_pair(noise=0.02)[0], gt)
    hi = image_metrics(_pair(noise=0.2)[0], gt)
    assert lo["psnr"] > hi["psnr"] and lo["ssim"] > hi["ssim"]
    assert lo["lpips"] is None  # no scorer: null, never a made-up number


def test_dtu_style_ignores_background_errors():
    pred, gt = _pair()
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:30, 12:40] = True
    exact_inside = torch.where(mask[..., None], gt, pred)  # errors only outside the mask
    out = image_metrics(exact_inside, gt, mask, style="dtu", background=(0, 0, 0))
    assert out["psnr_masked"] == math.inf
    assert out["ssim_masked"] == pytest.approx(1.0, abs=1e-6)
    assert out["psnr"] < 40  # the full image still sees the background error


def test_dtu_masked_psnr_is_over_mask_pixels():
    pred, gt = _pair()
    mask = torch.rand(48, 64) > 0.5
    mse = float(((pred - gt).double() ** 2)[mask].mean())
    out = image_metrics(pred, gt, mask, style="dtu")
    assert out["psnr_masked"] == pytest.approx(-10 * math.log10(mse), rel=1e-9)


def test_spare_style_crops_to_tight_bbox():
    pred, gt = _pair(h=60, w=70)
    mask = torch.zeros(60, 70, dtype=torch.bool)
    mask[5:40, 20:55] = True
    mask[5, 20] = True
    assert mask_bbox(mask) == (5, 40, 20, 55)
    out = image_metrics(pred, gt, mask, style="spare")
    assert out["ssim_masked"] == pytest.approx(ssim(pred[5:40, 20:55], gt[5:40, 20:55]))
    assert set(out) >= {"psnr", "ssim", "lpips", "psnr_masked", "ssim_masked", "lpips_masked"}
    # a tiny object still yields an SSIM (window padding), not a crash
    tiny = torch.zeros(60, 70, dtype=torch.bool)
    tiny[30:34, 30:33] = True
    assert 0 < image_metrics(pred, gt, tiny, style="spare")["ssim_masked"] <= 1


def test_bad_inputs_raise_recon_errors():
    pred, gt = _pair()
    with pytest.raises(ReconError, match="differ in shape"):
        image_metrics(pred[:10], gt)
    with pytest.raises(ReconError, match="needs an object mask"):
        image_metrics(pred, gt, style="dtu")
    with pytest.raises(ReconError, match="empty"):
        image_metrics(pred, gt, torch.zeros(48, 64, dtype=torch.bool), style="spare")
    with pytest.raises(ReconError, match="unknown metric style"):
        image_metrics(pred, gt, style="llff")


def test_summarise_means_and_nulls():
    views = [{"name": "a", "psnr": 20.0, "ssim": 0.5, "lpips": None},
             {"name": "b", "psnr": 30.0, "ssim": 0.7, "lpips": None}]
    s = summarise(views)
    assert s == {"num_views": 2, "psnr": 25.0, "ssim": pytest.approx(0.6), "lpips": None}
    assert summarise([]) == {}
