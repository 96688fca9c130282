"""Captures with lens distortion are undistorted on load, so what we fit and score is what
the pinhole rasteriser renders: a nerfstudio / COLMAP capture written with distorted photos
must load as pinhole views that agree with the true scene geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon.data import load_scene
from recon.data.synthetic import make_synthetic_scene
from recon.data.undistort import distort_view, undistort_view
from recon.data.writers import write_scene
from recon.types import Scene

COEFFS = (-0.18, 0.04, 0.002, -0.0015)  # k1 k2 p1 p2: a phone-like barrel distortion


@pytest.fixture(scope="module")
def truth() -> Scene:
    return make_synthetic_scene(seed=3, n_views=3, width=128, height=96, layout="forward")


def _colour_error(view, truth_view) -> float:
    """Median colour difference between ``view`` read as a pinhole image with its own K and
    the pinhole truth: both cameras share the pose, so a pixel maps to the truth by the
    homography K_truth K_view^-1 (bilinear lookup in the truth image)."""
    import torch.nn.functional as F

    H, W = view.height, view.width
    ii, jj = torch.meshgrid(torch.arange(4, H - 4) + 0.5, torch.arange(4, W - 4) + 0.5, indexing="ij")
    pix = torch.stack([jj, ii, torch.ones_like(ii)], -1).double()  # [h, w, 3]
    Hm = truth_view.camera.K.double() @ torch.linalg.inv(view.camera.K.double())
    q = pix @ Hm.T
    u, v = q[..., 0] / q[..., 2], q[..., 1] / q[..., 2]  # truth pixel coordinates (centres at +0.5)
    grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1)[None].float()
    b = F.grid_sample(truth_view.image.permute(2, 0, 1)[None], grid, align_corners=False)[0].permute(1, 2, 0)
    a = view.image[4:H - 4, 4:W - 4]
    return float((a - b).abs().mean())


def test_undistort_inverts_distort_and_drops_the_coefficients(truth):
    v = truth.views[0]
    distorted = distort_view(v, COEFFS)
    assert distorted.camera.distortion is not None
    assert _colour_error(distorted, v) > 0.012  # the distorted photo does not match a pinhole render (~0.02)
    back = undistort_view(distorted, COEFFS)
    assert back.camera.distortion is None and back.image.shape == v.image.shape
    assert not torch.allclose(back.camera.K, v.camera.K)  # cropped to valid pixels: a longer focal length
    assert _colour_error(back, v) < 0.007  # ~0.004: resampling blur only


@pytest.mark.parametrize("fmt", ["nerfstudio", "colmap"])
def test_distorted_capture_loads_as_pinhole_views(tmp_path, truth, fmt):
    distorted = Scene(views=tuple(distort_view(v, COEFFS) for v in truth.views), format="synthetic", root=None)
    folder = write_scene(distorted, tmp_path / fmt, fmt)
    if fmt == "nerfstudio":  # the writer stores k1 k2 p1 p2 per frame
        frame = json.loads((folder / "transforms.json").read_text())["frames"][0]
        assert frame["k1"] == pytest.approx(COEFFS[0])
    scene = load_scene(folder, normalise=False)
    assert scene.meta["undistorted_views"] == len(truth)
    assert all(v.camera.distortion is None for v in scene.views)
    for loaded, v in zip(scene.views, truth.views):
        assert _colour_error(loaded, v) < 0.008

    kept = load_scene(folder, normalise=False, undistort=False)  # opt-out keeps the coefficients
    assert kept.meta["undistorted_views"] == 0
    assert np.allclose(kept.views[0].camera.distortion.numpy(), COEFFS, atol=1e-6)
