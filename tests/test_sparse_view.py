"""Sparse-view regularisers: Gaussian dropout, opacity decay, the shifted camera and the
binocular consistency loss (values on constructed cases), then their effect in short fits
of the procedural scene, whose exact depth tells a right geometry from a wrong one."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import depth_points

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
    def f(u):
        return torch.stack([0.5 + 0.4 * torch.sin(0.37 * u), 0.5 + 0.3 * torch.cos(0.21 * u + 1),
                            0.5 + 0.2 * torch.sin(0.11 * u)], -1)

    u = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
    return f(u), f(u + fx * baseline / depth), fx, baseline


def test_binocular_loss_is_zero_at_the_true_depth_and_recovers_it():
    source, shifted, fx, b = _stereo_pair(depth=2.0)
    true = torch.full((24, 64), 2.0)
    _, valid = losses.warp_from_shifted(shifted, true, fx, b)
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


@pytest.fixture(scope="module")
def scene():
    from recon.data.synthetic import make_synthetic_scene

    return make_synthetic_scene(seed=1, n_views=12, width=80, height=60)


def test_reprojected_depth_without_occluded_points_matches_the_true_depth(scene):
    from recon.geometry import zbuffer_depth
    from recon.optimise.sparse_view import drop_occluded

    # Points of two training views splatted into a third view: where the
    # foreground's splats leave gaps, background points show through.
    points = torch.cat([depth_points(scene.views[i])[0] for i in (0, 4)])
    target = scene.views[8]
    raw = zbuffer_depth(points, target.camera)
    filtered = drop_occluded(raw)
    truth = target.depth

    def rel_err(d):
        m = (d > 0) & (truth > 0)
        return (d[m] - truth[m]).abs() / truth[m], m

    e_raw, m_raw = rel_err(raw)
    e_f, m_f = rel_err(filtered)
    wrong_raw, wrong_f = float((e_raw > 0.1).float().mean()), float((e_f > 0.1).float().mean())
    assert wrong_raw > 0.01  # the see-through is real on this scene
    assert wrong_f < 0.5 * wrong_raw  # and the filter removes most of it
    assert m_f.sum() > 0.6 * m_raw.sum()  # while keeping most of the prior


def test_metric_depth_loss_is_relative_and_masked():
    prior = torch.full((8, 8), 2.0)
    assert float(losses.metric_depth_loss(prior * 1.1, prior)) == pytest.approx(0.1, abs=1e-6)
    prior[:4] = 0  # unknown pixels do not count
    rendered = torch.full((8, 8), 2.0)
    rendered[:4] = 9.0
    assert float(losses.metric_depth_loss(rendered, prior)) == 0.0


# ---- effect in short fits of the procedural scene ----------------------------------------

_TRAIN, _TEST = (0, 5, 10), (2, 7)
_FIT = ["optim.iterations=240", "densify.refine_start=80", "densify.refine_stop=200", "densify.refine_every=40",
        "pseudo.enabled=false", "depth.enabled=false", "optim.resolution_schedule=[[0,1]]", "log_every=1000",
        "checkpoint_every=1000"]


def _fit(scene, *overrides):
    """Fits 3 views from their exact points, displaced by noise so that the fit has to
    repair the geometry; returns the test views' (PSNR, mean |depth error|) and the result."""
    from recon.init.points import gaussians_from_points
    from recon.optimise.config import load_config
    from recon.optimise.trainer import TrainData, Trainer

    views = [scene.views[i] for i in _TRAIN]
    pts, cols = (torch.cat(t) for t in zip(*[depth_points(v, stride=2) for v in views]))
    pts = pts + 0.15 * torch.randn(pts.shape, generator=_gen(0))
    cfg = load_config("fast", [*_FIT, *overrides])
    data = TrainData(cameras=[v.camera for v in views], images=[v.image for v in views],
                     names=[v.name for v in views], depth_priors=[None] * 3, scene_scale=1.0)
    result = Trainer(cfg, gaussians_from_points(pts, cols, 1), data).run()
    return _score(scene, result.gaussians), result


def _score(scene, gaussians):
    from recon.render import render
    from recon.types import RenderSettings

    psnrs, errors = [], []
    with torch.no_grad():
        for i in _TEST:
            v = scene.views[i]
            out = render(gaussians, [v.camera], RenderSettings(sh_degree=1))
            psnrs.append(float(losses.psnr(out.rgb[0].clamp(0, 1), v.image)))
            m = v.depth > 0
            errors.append(float((out.depth[0] - v.depth).abs()[m].mean()))
    return sum(psnrs) / len(psnrs), sum(errors) / len(errors)


def _floaters(scene, g) -> int:
    """Opaque Gaussians (opacity > 0.1) whose centre lies well in front of the true surface
    (z < 0.8 x exact depth) in a test view: what shows up as floaters there."""
    from recon.geometry import project, world_to_camera

    n, opacity = 0, torch.sigmoid(g.opacity_logits)
    for i in _TEST:
        v = scene.views[i]
        uv, z = project(v.camera.K, world_to_camera(v.camera.T_cam_world, g.means).T)
        u, w = uv[0].long(), uv[1].long()
        inside = (z > 0) & (u >= 0) & (u < v.width) & (w >= 0) & (w < v.height)
        truth = torch.zeros_like(z)
        truth[inside] = v.depth[w[inside], u[inside]]
        n += int((inside & (truth > 0) & (z < 0.8 * truth) & (opacity > 0.1)).sum())
    return n


@pytest.fixture(scope="module")
def plain_fit(scene):
    return _fit(scene)


@pytest.mark.slow
def test_binocular_loss_improves_test_depth_and_colour(scene, plain_fit):
    (psnr0, err0), _ = plain_fit
    (psnr1, err1), _ = _fit(scene, "binocular.enabled=true", "binocular.start=80", "binocular.weight=1.0")
    assert err1 < 0.95 * err0  # geometry closer to the exact depth in the unseen views (measured -9%)
    assert psnr1 > psnr0 + 0.5  # measured +1.2 dB


@pytest.mark.slow
def test_opacity_decay_removes_floaters(scene, plain_fit):
    (psnr0, _), r0 = plain_fit
    (psnr1, _), r1 = _fit(scene, "regularise.opacity_decay=0.99")
    assert len(r1.gaussians) < 0.95 * len(r0.gaussians)  # measured 5838 vs 6547
    assert _floaters(scene, r1.gaussians) < 0.85 * _floaters(scene, r0.gaussians)  # measured 35 vs 45
    assert psnr1 > psnr0 - 0.6  # at this length it costs a little colour (measured -0.4 dB)


@pytest.mark.slow
def test_dropout_makes_the_fit_robust_to_missing_gaussians(scene, plain_fit):
    """Without co-adaptation, a random half of the Gaussians (opacity-compensated) renders
    the test views nearly as well as all of them."""
    from recon.types import Gaussians

    _, r0 = plain_fit
    _, r1 = _fit(scene, "regularise.dropout_rate=0.3")

    def loss_when_halved(g):
        h = Gaussians(g.means, g.log_scales, g.quats, drop_gaussians(g.opacity_logits, 0.5, _gen(3)), g.sh)
        return _score(scene, g)[0] - _score(scene, h)[0]

    assert loss_when_halved(r1.gaussians) < 0.7 * loss_when_halved(r0.gaussians)
