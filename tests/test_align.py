"""Unposed evaluation: Umeyama alignment of recovered cameras and test-pose mapping and
refinement."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.errors import ReconError
from recon.evaluate.align import (
    align_centres,
    map_camera_to_reconstruction,
    pose_errors,
    refine_test_pose,
)
from recon.geometry import invert_pose, look_at, make_pose, quat_to_rotmat, se3_exp
from recon.types import Camera, Gaussians, RenderSettings


def _ring(n: int, radius: float = 4.0, width: int = 40, height: int = 30) -> list[Camera]:
    K = torch.tensor([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = torch.tensor([radius * math.cos(a), radius * math.sin(a), 1.0 + 0.3 * i])
        T = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        cams.append(Camera(K=K, T_cam_world=T, width=width, height=height))
    return cams


def _to_reconstruction_frame(cams: list[Camera], s: float, R: torch.Tensor, t: torch.Tensor) -> list[Camera]:
    """What an SfM run would return: the same cameras in a frame with x_est = s R x_gt + t."""
    out = []
    for c in cams:
        T_world_cam = invert_pose(c.T_cam_world)
        centre = s * R @ T_world_cam[:3, 3] + t
        R_wc = R @ T_world_cam[:3, :3]
        out.append(replace(c, T_cam_world=invert_pose(make_pose(R_wc, centre))))
    return out


@settings(max_examples=20, deadline=None)
@given(
    q=st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda v: sum(x * x for x in v) > 0.1),
    s=st.floats(0.1, 10.0),
    t=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
)
def test_alignment_recovers_similarity_and_test_poses(q, s, t):
    gt = _ring(6)
    R = quat_to_rotmat(torch.tensor(q))
    est = _to_reconstruction_frame(gt, s, R, torch.tensor(t))
    train_est, train_gt = est[:4], gt[:4]
    sim = align_centres(torch.stack([c.centre for c in train_est]), torch.stack([c.centre for c in train_gt]))
    assert sim.scale == pytest.approx(1.0 / s, rel=1e-3)
    errors = pose_errors(train_est, train_gt, sim)
    assert errors["ate"] < 1e-3 and errors["rotation_error_deg"] < 0.1
    # a held-out ground-truth test pose mapped into the reconstruction frame matches the
    # pose the reconstruction itself would use, up to the camera-space scale (same image)
    for g, e in zip(gt[4:], est[4:]):
        mapped = map_camera_to_reconstruction(g, sim).T_cam_world
        assert torch.allclose(mapped[:3, :3], e.T_cam_world[:3, :3], atol=1e-3)
        assert torch.allclose(mapped[:3, 3] * sim.scale * s, e.T_cam_world[:3, 3] * 1.0, atol=2e-3 * max(1, s))


def test_degenerate_inputs_raise():
    with pytest.raises(ReconError, match="at least 3"):
        align_centres(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ReconError, match="equal N"):
        align_centres(torch.zeros(4, 3), torch.zeros(5, 3))


def test_se3_exp_is_rigid():
    T = se3_exp(torch.tensor([0.1, -0.2, 0.3, 1.0, 2.0, -0.5]))
    assert torch.allclose(T[:3, :3] @ T[:3, :3].T, torch.eye(3), atol=1e-5)
    assert torch.allclose(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def _blob_scene(n: int = 300) -> Gaussians:
    g = torch.Generator().manual_seed(3)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2.0  # [N, 3] in a 2-unit cube
    colours = torch.rand(n, 3, generator=g)
    sh = ((colours - 0.5) / 0.28209479)[:, None, :]  # [N, 1, 3] DC only
    return Gaussians(
        means=means,
        log_scales=torch.full((n, 3), math.log(0.12)),
        quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        opacity_logits=torch.full((n,), 2.0),
        sh=sh,
    )


def test_photometric_refinement_reduces_error():
    from recon.render import render

    gaussians = _blob_scene()
    cam = _ring(1, radius=4.0, width=32, height=24)[0]
    settings_ = RenderSettings(backend="reference")
    target = render(gaussians, [cam], settings_).rgb[0].detach()  # [H, W, 3]
    perturbed = replace(cam, T_cam_world=se3_exp(torch.tensor([0.02, -0.015, 0.01, 0.08, -0.05, 0.0])) @ cam.T_cam_world)
    refined, record = refine_test_pose(gaussians, perturbed, target, steps=25, lr=8e-3, settings=settings_)
    assert record["l1_after"] < 0.6 * record["l1_before"]
    before = (perturbed.centre - cam.centre).norm()
    after = (refined.centre - cam.centre).norm()
    assert after < before


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (w, x, y, z), [..., 4]
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], -1)


def test_unposed_run_is_scored_in_the_ground_truth_frame(tmp_path):
    """A run whose reconstruction lives in a similarity-transformed frame scores exactly
    like the same Gaussians rendered at the ground-truth test cameras."""
    import json

    from recon.data import load_scene
    from recon.data.synthetic import make_synthetic_scene
    from recon.evaluate.align import evaluate_unposed
    from recon.evaluate.metrics import psnr
    from recon.evaluate.spare import write_layout
    from recon.export.ply import write_ply
    from recon.geometry import rotmat_to_quat
    from recon.render import render

    scene = make_synthetic_scene(seed=2, n_views=7, width=32, height=24, n_objects=2)
    write_layout(tmp_path / "data", {"s": (scene, "SpaRe")}, {1: {"s": {"input_views": [0, 2, 4], "test_views": [1, 3]}}})
    gt = load_scene(tmp_path / "data" / "s", format="spare")  # normalised ground-truth frame
    g = _blob_scene(200)
    g.means = g.means * 0.5
    s, R, t = 2.5, quat_to_rotmat(torch.tensor([0.9, 0.2, -0.3, 0.1])), torch.tensor([1.0, -2.0, 0.5])
    est = Gaussians(means=s * g.means @ R.T + t, log_scales=g.log_scales + math.log(s),
                    quats=_quat_mul(rotmat_to_quat(R).expand(len(g), 4), g.quats), opacity_logits=g.opacity_logits, sh=g.sh)
    run = tmp_path / "run"
    run.mkdir()
    write_ply(run / "point_cloud.ply", est)
    train = [gt.views[i] for i in (0, 2, 4, 5)]
    est_cams = _to_reconstruction_frame([v.camera for v in train], s, R, t)
    (run / "cameras.json").write_text(json.dumps({"cameras": [
        {"name": v.name, "split": "train", "K": c.K.tolist(), "T_cam_world": c.T_cam_world.tolist(),
         "width": c.width, "height": c.height} for v, c in zip(train, est_cams)]}))
    test_names = [gt.views[1].name, gt.views[3].name]
    (run / "scene.json").write_text(json.dumps({"scene": str(tmp_path / "data" / "s"), "format": "spare",
                                                "protocol": "farthest", "test_names": test_names, "image_size": [32, 24]}))
    result = evaluate_unposed(run, str(tmp_path / "data" / "s"), gt_format="spare")
    assert result["train_pose_errors"]["ate"] < 1e-3 and result["test_pose_refined"] is False
    settings_ = RenderSettings(background=(0.0, 0.0, 0.0))
    expected = [psnr(render(g, [gt.views[i].camera], settings_).rgb[0].clamp(0, 1), gt.views[i].image) for i in (1, 3)]
    assert result["metrics"]["psnr"] == pytest.approx(sum(expected) / 2, abs=0.02)
    refined = evaluate_unposed(run, str(tmp_path / "data" / "s"), gt_format="spare", refine_steps=2)
    assert refined["test_pose_refined"] is True and len(refined["refinement"]) == 2
    assert json.loads((run / "metrics.json").read_text())["test_aligned"]["test_pose_refined"] is True

    # The background the fit rendered (metrics.json), not the ground-truth scene's: llff3 fits on the mean
    # colour. Fainter Gaussians here, so the background shows through.
    faint = Gaussians(est.means, est.log_scales, est.quats, est.opacity_logits - 4.0, est.sh)
    write_ply(run / "point_cloud.ply", faint)
    grey = (0.5, 0.4, 0.3)
    (run / "metrics.json").write_text(json.dumps({"protocol": {"render_settings": {"background": list(grey)}}}))
    on_grey = evaluate_unposed(run, str(tmp_path / "data" / "s"), gt_format="spare")
    g_faint = Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits - 4.0, g.sh)
    scores = {bg: sum(psnr(render(g_faint, [gt.views[i].camera], RenderSettings(background=bg)).rgb[0].clamp(0, 1),
                           gt.views[i].image) for i in (1, 3)) / 2 for bg in (grey, (0.0, 0.0, 0.0))}
    assert on_grey["metrics"]["psnr"] == pytest.approx(scores[grey], abs=0.02)
    assert abs(scores[grey] - scores[(0.0, 0.0, 0.0)]) > 0.1  # the background shows
