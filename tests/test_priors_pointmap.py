"""Pointmap global alignment on synthetic pointmaps from known cameras (with per-group
scales, noise and outliers), and the loader's messages when a model is missing."""

from __future__ import annotations

import math

import pytest
import torch

from recon.errors import MissingDependencyError, ReconError
from recon.geometry import invert_pose, look_at, umeyama
from recon.priors.pointmap import (
    AlignSettings,
    PointmapGroup,
    PointmapModel,
    align_pointmaps,
    all_pairs,
    cameras_from_alignment,
    load_pointmap_model,
)
from recon.priors.pointmap_align import estimate_focal

H, W, FOCAL = 20, 28, 24.0


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _rig(n_views: int, seed: int = 0):
    """Known cameras on an arc looking at the origin and per-view world pointmaps of a
    wavy surface 2.5-3.5 units away: (T_cam_world [V, 4, 4], world points V x [H, W, 3])."""
    g = torch.Generator().manual_seed(seed)
    Ts, world = [], []
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    for v in range(n_views):
        a = -0.6 + 1.2 * v / (n_views - 1)
        eye = torch.tensor([3 * math.sin(a), -0.3 + 0.15 * v, -3 * math.cos(a)])
        T = look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
        depth = 3 + 0.4 * torch.sin(xs / 5 + v) * torch.cos(ys / 4) + 0.1 * torch.rand(H, W, generator=g)
        cam = torch.stack([(xs - W / 2) / FOCAL * depth, (ys - H / 2) / FOCAL * depth, depth], -1)
        T_wc = invert_pose(T)
        Ts.append(T)
        world.append(cam @ T_wc[:3, :3].T + T_wc[:3, 3])
    return torch.stack(Ts), world


def _pair_groups(Ts, world, *, noise: float, outliers: float, seed: int = 1):
    """DUSt3R-like groups: both views of each ordered pair in the first camera's frame,
    each group at its own random scale, with Gaussian noise and gross outliers."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for i, j in all_pairs(len(Ts)):
        scale = math.exp(0.5 * float(torch.randn(1, generator=g)))
        pts = torch.stack([world[i], world[j]]) @ Ts[i][:3, :3].T + Ts[i][:3, 3]  # [2, H, W, 3]
        pts = scale * (pts + noise * torch.randn(pts.shape, generator=g))
        bad = torch.rand(2, H, W, generator=g) < outliers
        pts[bad] = scale * 3 * torch.randn(int(bad.sum()), 3, generator=g)
        conf = 1 + 2 * torch.rand(2, H, W, generator=g)  # outliers are not flagged by confidence
        groups.append(PointmapGroup((i, j), pts, conf))
    return groups


def _angle_deg(Ra, Rb):
    cos = ((Ra @ Rb.mT).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def _check_against_truth(res, Ts, world):
    V = len(Ts)
    R_est, R_true = res.T_cam_world[:, :3, :3], Ts[:, :3, :3]
    # Relative rotations do not depend on the world frame the alignment chose.
    for i in range(V):
        for j in range(i + 1, V):
            err = _angle_deg(R_est[i] @ R_est[j].T, R_true[i] @ R_true[j].T)
            assert err < 1.0, f"views {i},{j}: relative rotation off by {float(err):.2f} deg"
    # One similarity maps estimated camera centres onto the true ones ...
    c_est = torch.stack([invert_pose(T)[:3, 3] for T in res.T_cam_world])
    c_true = torch.stack([invert_pose(T)[:3, 3] for T in Ts])
    s, R, t = umeyama(c_est, c_true)
    spread = (c_true - c_true.mean(0)).norm(dim=-1).mean()
    assert ((s * c_est @ R.T + t) - c_true).norm(dim=-1).max() < 0.03 * spread
    # ... and the same similarity maps the estimated pointmaps onto the true surface.
    p_est = torch.stack(res.world_points).reshape(-1, 3)
    p_true = torch.stack(world).reshape(-1, 3)
    err = ((s * p_est @ R.T + t) - p_true).norm(dim=-1)
    assert err.median() < 0.01 * 3.0, f"median point error {float(err.median()):.4f}"
    # Same similarity for the rotations: R_est_world = R_true_world R^T.
    assert _angle_deg(R_est @ R.T, R_true).max() < 1.0


def test_alignment_recovers_cameras_from_noisy_pairs_with_outliers():
    Ts, world = _rig(4)
    groups = _pair_groups(Ts, world, noise=0.015, outliers=0.05)
    res = align_pointmaps(groups, 4, settings=AlignSettings(iterations=200))
    _check_against_truth(res, Ts, world)
    torch.testing.assert_close(res.K[:, 0, 0], torch.full((4,), FOCAL), rtol=0.02, atol=0)
    assert res.losses[-1] < res.losses[0]
    # Fused cloud: confident pixels only, with colours.
    assert res.points.shape[1] == 3 and res.points.shape == res.colors.shape
    assert 0.5 * 4 * H * W < res.points.shape[0] < 4 * H * W


def test_single_group_with_intrinsics_like_vggt():
    Ts, world = _rig(3, seed=2)
    pts = torch.stack(world) @ Ts[0][:3, :3].T + Ts[0][:3, 3]  # every view in camera 0's frame
    pts = 0.3 * (pts + 0.01 * torch.randn(pts.shape))
    K = torch.tensor([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1.0]]).expand(3, 3, 3)
    group = PointmapGroup((0, 1, 2), pts, torch.ones(3, H, W), intrinsics=K)
    images = [torch.rand(H * 2, W * 2, 3) for _ in range(3)]
    res = align_pointmaps([group], 3, images=images, settings=AlignSettings(iterations=100))
    _check_against_truth(res, Ts, world)
    cams = cameras_from_alignment(res, [(W * 2, H * 2)] * 3)
    assert cams[1].width == 2 * W and float(cams[1].K[0, 0]) == pytest.approx(2 * float(res.K[1, 0, 0]))


def test_estimate_focal_is_robust_to_outliers():
    Ts, world = _rig(3)
    cam = world[0] @ Ts[0][:3, :3].T + Ts[0][:3, 3]
    bad = torch.rand(H, W) < 0.2
    cam[bad] = torch.randn(int(bad.sum()), 3)  # some land at z ~ 0, where x/z explodes
    assert estimate_focal(cam, torch.ones(H, W)) == pytest.approx(FOCAL, rel=0.01)


def test_disconnected_or_malformed_groups_raise():
    Ts, world = _rig(4)
    groups = [g for g in _pair_groups(Ts, world, noise=0.0, outliers=0.0) if set(g.views) in ({0, 1}, {2, 3})]
    with pytest.raises(ReconError, match=r"views \[.*\] share no group"):
        align_pointmaps(groups, 4, settings=AlignSettings(iterations=0))
    with pytest.raises(ReconError, match=r"views \[2, 3\] appear in no group"):
        align_pointmaps(groups[:1], 4)
    with pytest.raises(ReconError, match=r"group 0: points must have shape \[2, H, W, 3\]"):
        align_pointmaps([PointmapGroup((0, 1), torch.zeros(2, H, W), torch.ones(2, H, W))], 2)


def test_loader_says_what_is_missing(tmp_path):
    with pytest.raises(MissingDependencyError, match="not found"):
        load_pointmap_model(tmp_path / "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth")
    ckpt = tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth"
    ckpt.write_bytes(b"")
    # None of these packages is on PyPI; this machine has none of them installed.
    try:
        import mast3r  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="'mast3r' package is not installed"):
            load_pointmap_model(ckpt)
    with pytest.raises(ReconError, match="cannot tell the family"):
        load_pointmap_model(ckpt.rename(tmp_path / "weights.pth"))


def test_a_model_object_feeds_the_alignment():
    """Any object with predict() is a PointmapModel: a stand-in that returns the synthetic
    pairs goes through the same path a real DUSt3R adapter would."""
    Ts, world = _rig(3, seed=3)

    class Oracle:
        name = "oracle"

        def predict(self, images, pairs=None):
            return _pair_groups(Ts, world, noise=0.005, outliers=0.0)

    model = Oracle()
    assert isinstance(model, PointmapModel)
    res = align_pointmaps(model.predict([torch.rand(H, W, 3)] * 3), 3, settings=AlignSettings(iterations=100))
    _check_against_truth(res, Ts, world)
