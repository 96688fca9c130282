"""Sparse-view regularisers: Gaussian dropout, opacity decay, the shifted camera and the
binocular consistency loss (values on constructed cases), then their effect in short fits
of the procedural scene, whose exact depth tells a right geometry from a wrong one."""

from __future__ import annotations

import math

import pytest
import torch

from recon.optimise import losses
from recon.optimise.sparse_view import decay_opacities_, drop_gaussians, shifted_camera
from recon.types import Camera

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_drop_gaussians_drops_the_rate_and_keeps_expected_opacity():
    logits = torch.full((20000,), math.log(0.3 / 0.7), requires_grad=True)  # opacity 0.3
    out = drop_gaussians(logits, 0.2, _gen())
    opacity = torch.sigmoid(out)
    dropped = opacity < 1e-6
    assert abs(float(dropped.float().mean()) - 0.2) < 0.015
    assert torch.allclose(opacity[~dropped], torch.tensor(0.3 / 0.8), atol=1e-5)
    assert abs(float(opacity.detach().mean()) - 0.3) < 0.01  # compensated: same expected coverage
    out.sum().backward()
    assert (logits.grad[~dropped] > 0).all() and (logits.grad[dropped] == 0).all()
    assert drop_gaussians(logits, 0.0, _gen()) is logits  # off: untouched
    # different steps drop different Gaussians
    assert not torch.equal(drop_gaussians(logits, 0.2, _gen(1)) < -20, drop_gaussians(logits, 0.2, _gen(2)) < -20)
    with pytest.raises(ValueError, match="dropout rate"):
        drop_gaussians(logits, 1.0)


def test_opacity_decay_scales_every_opacity():
    opacity = torch.tensor([0.01, 0.3, 0.9, 0.999])
    logits = torch.logit(opacity)
    decay_opacities_(logits, 0.5)
    assert torch.allclose(torch.sigmoid(logits), opacity * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="decay factor"):
        decay_opacities_(logits, 0.0)


def test_shifted_camera_moves_points_left_by_the_disparity():
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    T = torch.eye(4)
    T[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.3, 0.1], [0.3, 0, -0.2], [-0.1, 0.2, 0]]))
    T[:3, 3] = torch.tensor([0.2, -0.1, 1.0])
    cam = Camera(K, T, 64, 48)
    shifted = shifted_camera(cam, 0.05)
    X = torch.tensor([0.3, 0.2, 2.5])

    def project(c):
        p = c.T_cam_world[:3, :3] @ X + c.T_cam_world[:3, 3]
        return (K @ (p / p[2]))[:2], p[2]

    (uv, z), (uv_s, z_s) = project(cam), project(shifted)
    assert torch.allclose(uv_s, uv - torch.tensor([100.0 * 0.05 / float(z), 0.0]), atol=1e-4)
    assert torch.allclose(z_s, z) and torch.allclose(shifted.centre - cam.centre, 0.05 * cam.T_world_cam[:3, 0])


def _stereo_pair(depth: float, fx: float = 80.0, baseline: float = 0.1, H: int = 24, W: int = 64):
    """A fronto-parallel textured plane seen by the source camera and one shifted right by
    ``baseline``: shifted(u') = source(u' + fx * baseline / depth)."""
    f = lambda u: torch.stack([0.5 + 0.4 * torch.sin(0.37 * u), 0.5 + 0.3 * torch.cos(0.21 * u + 1),  # noqa: E731
                               0.5 + 0.2 * torch.sin(0.11 * u)], -1)
    u = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
    return f(u), f(u + fx * baseline / depth), fx, baseline


def test_binocular_loss_is_zero_at_the_true_depth_and_recovers_it():
    source, shifted, fx, b = _stereo_pair(depth=2.0)
    true = torch.full((24, 64), 2.0)
    warped, valid = losses.warp_from_shifted(shifted, true, fx, b)
    assert valid[:, :4].sum() == 0 and valid[:, 10:].all()  # 4 px disparity: the left edge has no match
    assert float(losses.binocular_loss(shifted, true, source, fx, b)) < 1e-5
    assert float(losses.binocular_loss(shifted, true * 1.3, source, fx, b)) > 0.02
    # Its gradient alone moves a wrong depth to the true one.
    depth = torch.full((24, 64), 2.6, requires_grad=True)
    opt = torch.optim.Adam([depth], lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        losses.binocular_loss(shifted, depth, source, fx, b, ssim_weight=0.2).backward()
        opt.step()
    assert float((depth.detach()[:, 10:] - 2.0).abs().median()) < 0.05
