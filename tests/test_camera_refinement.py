"""Joint refinement of the training cameras (recon.optimise.camera_refinement): the focal scale
rendered as a camera-space stretch is the scaled focal, a focal that starts 5 % off moves
toward the truth, checkpoints carry it, and it stays off where the scene is posed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import depth_points

from recon.errors import ConfigError
from recon.init import gaussians_from_points
from recon.optimise.camera_refinement import (
    CameraRefinement,
    follow_refined_intrinsics,
    intrinsics_groups,
    with_focal_scale,
)
from recon.optimise.config import load_config
from recon.optimise.trainer import TrainData, Trainer
from recon.render import render
from recon.types import RenderSettings

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def forward():
    from recon.data.synthetic import make_synthetic_scene

    return make_synthetic_scene(seed=0, n_views=9, width=96, height=72, layout="forward")


def _train_data(scene, focal_factor: float) -> tuple[TrainData, object]:
    """Training views 1, 4, 7 with their true poses and the focal multiplied by ``focal_factor``
    (what an SfM focal estimate off by that much gives), and Gaussians on their exact depth."""
    views = [scene.views[i] for i in (1, 4, 7)]
    pts, cols = zip(*(depth_points(v, 2) for v in views))
    data = TrainData(cameras=[with_focal_scale(v.camera, focal_factor) for v in views],
                     images=[v.image for v in views], names=[v.name for v in views], scene_scale=1.0)
    return data, gaussians_from_points(torch.cat(pts), torch.cat(cols), 1)


def _fit_config(*extra):
    return load_config("fast", ["optim.iterations=300", "densify.enabled=false", "depth.enabled=false",
                                "pseudo.enabled=false", "log_every=100", "optim.resolution_schedule=[[0, 1]]", *extra])


def test_the_focal_stretch_renders_exactly_what_the_scaled_focal_renders(forward):
    """The rasteriser has no gradient for K, so the focal scale s is rendered as
    diag(s, s, 1, 1) @ T_cam_world: same image as the rigid camera with s * fx, s * fy (SH degree 0:
    the viewing direction, the one thing the stretch moves, plays no part), with a gradient for s."""
    data, g = _train_data(forward, 1.0)
    refinement = CameraRefinement(data.cameras, poses=True, focal=True, pose_lr=1e-4, focal_lr=1e-3)
    with torch.no_grad():
        refinement.log_focal.fill_(math.log(1.05))
        refinement.pose_deltas[1] = torch.tensor([0.01, -0.02, 0.005, 0.02, 0.0, -0.01])
    settings = RenderSettings(sh_degree=0)
    stretched = render(g, [refinement.render_camera(1, data.cameras[1])], settings).rgb  # [1, H, W, 3]
    rigid = refinement.refined_camera(1)
    assert torch.allclose(rigid.T_cam_world[:3, :3] @ rigid.T_cam_world[:3, :3].T, torch.eye(3), atol=1e-5)
    assert float(rigid.K[0, 0]) == pytest.approx(1.05 * float(data.cameras[1].K[0, 0]), rel=1e-6)
    assert torch.equal(rigid.K[:2, 2], data.cameras[1].K[:2, 2])  # principal point kept
    expected = render(g, [rigid], settings).rgb
    assert float((stretched.detach() - expected).abs().max()) < 1e-4
    assert float((stretched.detach() - render(g, [data.cameras[1]], settings).rgb).abs().max()) > 0.05  # s matters
    stretched.sum().backward()
    assert refinement.log_focal.grad is not None and float(refinement.log_focal.grad.abs()) > 0


@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_a_focal_five_percent_off_moves_toward_the_truth(forward, factor):
    data, g = _train_data(forward, factor)
    result = Trainer(_fit_config(), g, data, refine_poses=True, refine_focal=True).run()
    (group,) = result.camera_refinement["focal_groups"]
    true_fx = float(forward.views[1].camera.K[0, 0])
    assert group["initial_fx"] == pytest.approx(factor * true_fx, rel=1e-5) and group["views"] == [0, 1, 2]
    final = [float(c.K[0, 0]) for c in result.cameras]
    assert final == pytest.approx([group["final_fx"]] * 3, rel=1e-5)  # one shared scale
    assert abs(group["final_fx"] / true_fx - 1) < 0.5 * abs(factor - 1), group  # at least half the way (0.95: 1.001, 1.05: 1.015)


def test_without_focal_refinement_the_intrinsics_stay_as_given(forward):
    data, g = _train_data(forward, 0.95)
    result = Trainer(_fit_config("optim.iterations=20"), g, data, refine_poses=True).run()
    assert all(torch.equal(c.K, d.K) for c, d in zip(result.cameras, data.cameras))
    assert result.camera_refinement["focal"] is False and result.camera_refinement["poses"] is True
    assert result.camera_refinement["focal_groups"][0]["scale"] == 1.0


def test_views_with_different_intrinsics_get_their_own_focal_and_test_views_follow_their_group(forward):
    cams = [forward.views[i].camera for i in (1, 4, 7)]
    cams[2] = with_focal_scale(cams[2], 1.3)  # e.g. a zoomed photo whose EXIF says so
    assert intrinsics_groups(cams) == [0, 0, 1]
    refinement = CameraRefinement(cams, poses=False, focal=True, pose_lr=1e-4, focal_lr=1e-3)
    with torch.no_grad():
        refinement.log_focal.copy_(torch.tensor([math.log(1.1), math.log(0.9)]))
    refined = [refinement.refined_camera(v) for v in range(3)]
    other = with_focal_scale(cams[0], 2.0)  # intrinsics no training view has
    test, scales = follow_refined_intrinsics([forward.views[0].camera, cams[2], other], cams, refined)
    assert scales == [pytest.approx(1.1), pytest.approx(0.9), None]
    assert float(test[0].K[0, 0]) == pytest.approx(1.1 * float(cams[0].K[0, 0]), rel=1e-6)
    assert torch.equal(test[2].K, other.K) and torch.equal(test[0].T_cam_world, forward.views[0].camera.T_cam_world)


def test_a_resumed_fit_continues_the_focal_exactly(forward):
    data, g = _train_data(forward, 0.95)
    cfg = _fit_config("optim.iterations=12", "checkpoint_every=4")
    saved: list = []
    full = Trainer(cfg, g, data, refine_poses=True, refine_focal=True, checkpoint_fn=saved.append).run()
    assert "log_focal" in saved[0] and float(saved[0]["log_focal"].abs().max()) > 0
    trainer = Trainer(cfg, g, data, refine_poses=True, refine_focal=True)
    trainer.load_state_dict(saved[0])  # iteration 4
    resumed = trainer.run()
    assert resumed.camera_refinement["focal_groups"] == full.camera_refinement["focal_groups"]
    for x, y in zip(full.gaussians.tensors(), resumed.gaussians.tensors()):
        assert torch.equal(x, y)
    old = {k: v for k, v in saved[0].items() if k not in ("log_focal", "focal_opt")}  # before this feature
    Trainer(cfg, g, data, refine_poses=True, refine_focal=True).load_state_dict(old)


def test_refine_focal_setting():
    assert load_config("default").pose.refine_focal == "off"  # off until it helps (see recon.optimise.config)
    assert load_config("default", ["pose.refine_focal=auto"]).pose.refine_focal == "auto"
    assert load_config("default", ["pose.refine_focal=off"]).pose.refine_focal == "off"  # YAML's bare off
    assert load_config("default", ["pose.refine_focal=on"]).pose.refine_focal == "on"
    assert load_config("baseline-3dgs").pose.refine_focal == "off"
    with pytest.raises(ConfigError, match="pose.refine_focal"):
        load_config("default", ["pose.refine_focal=always"])
