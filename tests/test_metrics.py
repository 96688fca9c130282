"""Image metrics: PSNR/SSIM against independent computations, masked styles, summaries."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recon.errors import ReconError
from recon.evaluate.metrics import (
    METRIC_IMPLEMENTATIONS,
    image_metrics,
    mask_bbox,
    psnr,
    ssim_3dgs,
    ssim_skimage,
    summarise,
)


def _pair(h=48, w=64, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(h, w, 3, generator=g)
    pred = (gt + noise * torch.randn(h, w, 3, generator=g)).clamp(0, 1)
    return pred, gt


def _ssim_3dgs_reference(img1, img2):
    """graphdeco-inria/gaussian-splatting utils/loss_utils.py ``ssim`` as written there:
    [3, H, W] float32 images, gaussian(11, 1.5) window, conv2d with padding 5 (zeros)."""
    gauss = torch.tensor([math.exp(-((x - 11 // 2) ** 2) / float(2 * 1.5**2)) for x in range(11)])
    gauss = gauss / gauss.sum()
    _1d = gauss.unsqueeze(1)
    _2d = _1d.mm(_1d.t()).float().unsqueeze(0).unsqueeze(0)
    window = _2d.expand(3, 1, 11, 11).contiguous()
    img1, img2 = img1.permute(2, 0, 1).float(), img2.permute(2, 0, 1).float()
    mu1 = F.conv2d(img1, window, padding=5, groups=3)
    mu2 = F.conv2d(img2, window, padding=5, groups=3)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    sigma1_sq = F.conv2d(img1 * img1, window, padding=5, groups=3) - mu1_sq
    sigma2_sq = F.conv2d(img2 * img2, window, padding=5, groups=3) - mu2_sq
    sigma12 = F.conv2d(img1 * img2, window, padding=5, groups=3) - mu1_mu2
    C1, C2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu1_mu2 + C1) * (2 * sigma12 + C2)) / ((mu1_sq + mu2_sq + C1) * (sigma1_sq + sigma2_sq + C2))
    return float(ssim_map.mean())


def test_psnr_matches_definition():
    pred, gt = _pair()
    mse = float(((pred.double() - gt.double()) ** 2).mean())
    assert psnr(pred, gt) == pytest.approx(-10 * math.log10(mse), rel=1e-9)
    assert psnr(gt, gt) == math.inf


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_ssim_3dgs_matches_the_3dgs_repository(noise):
    pred, gt = _pair(noise=noise)
    assert ssim_3dgs(pred, gt) == pytest.approx(_ssim_3dgs_reference(pred, gt), abs=1e-6)
    assert ssim_3dgs(gt, gt) == pytest.approx(1.0, abs=1e-9)
    assert "zero padding" in METRIC_IMPLEMENTATIONS["ssim_3dgs"]


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_ssim_skimage_matches_scikit_image(noise):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    pred, gt = _pair(noise=noise, h=37, w=53)  # odd sizes: the valid-region crop must line up
    ref = skimage_metrics.structural_similarity(pred.numpy().astype("float64"), gt.numpy().astype("float64"),
                                                channel_axis=-1, data_range=1.0)
    assert ssim_skimage(pred, gt) == pytest.approx(float(ref), abs=1e-9)
    assert ssim_skimage(pred[:5], gt[:5]) is None  # smaller than the 7x7 window: skimage raises


def test_the_two_ssims_differ():
    """They are different numbers: a table must say which one it reports."""
    pred, gt = _pair(noise=0.1)
    assert abs(ssim_3dgs(pred, gt) - ssim_skimage(pred, gt)) > 1e-3


def test_metrics_order_with_noise():
    gt = _pair()[1]
    lo = image_metrics(_pair(noise=0.02)[0], gt)
    hi = image_metrics(_pair(noise=0.2)[0], gt)
    assert lo["psnr"] > hi["psnr"] and lo["ssim_3dgs"] > hi["ssim_3dgs"] and lo["ssim_skimage"] > hi["ssim_skimage"]
    assert lo["lpips_vgg"] is None and lo["lpips_alex"] is None  # no scorer: null, never a made-up number


def test_dtu_style_ignores_background_errors():
    pred, gt = _pair()
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:30, 12:40] = True
    exact_inside = torch.where(mask[..., None], gt, pred)  # errors only outside the mask
    out = image_metrics(exact_inside, gt, mask, style="dtu", background=(0, 0, 0))
    assert out["psnr_masked"] == math.inf
    assert out["ssim_3dgs_masked"] == pytest.approx(1.0, abs=1e-6)
    assert out["ssim_skimage_masked"] == pytest.approx(1.0, abs=1e-6)
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
    assert out["ssim_3dgs_masked"] == pytest.approx(ssim_3dgs(pred[5:40, 20:55], gt[5:40, 20:55]))
    assert set(out) >= {"psnr", "ssim_3dgs", "lpips_alex", "psnr_masked", "ssim_3dgs_masked", "lpips_alex_masked"}
    # a tiny object still yields the 3DGS SSIM (zero padding), not a crash; skimage's is null
    tiny = torch.zeros(60, 70, dtype=torch.bool)
    tiny[30:34, 30:33] = True
    out = image_metrics(pred, gt, tiny, style="spare")
    assert 0 < out["ssim_3dgs_masked"] <= 1 and out["ssim_skimage_masked"] is None


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
    views = [{"name": "a", "psnr": 20.0, "ssim_3dgs": 0.5, "lpips_vgg": None},
             {"name": "b", "psnr": 30.0, "ssim_3dgs": 0.7, "lpips_vgg": None}]
    s = summarise(views)
    assert s == {"num_views": 2, "psnr": 25.0, "ssim_3dgs": pytest.approx(0.6), "lpips_vgg": None}
    assert summarise([]) == {}
