"""SIFT triangulation with known poses, and pose recovery with pycolmap: accuracy against
known geometry (generated plane, procedural scene, LLFF fern) and the failure message."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import shared_scene
from test_stereo import PLANE_DEPTH, PLANE_SLOPE, plane_views

from recon.errors import ReconError
from recon.geometry import umeyama
from recon.priors.sfm import reconstruct, recover_poses, rotation_only_matches, triangulate_sift


def _frame_points(views) -> torch.Tensor:
    """Camera centres and a point ahead of each on its optical axis ([2V, 3]): the look-ahead
    distance is the cameras' spread in that frame, so the set maps exactly under a similarity
    and pins down rotation even for nearly collinear centres."""
    c = torch.stack([v.camera.centre for v in views]).double()  # [V, 3]
    spread = (c - c.mean(0)).norm(dim=1).mean()
    axes = torch.stack([v.camera.T_cam_world[2, :3] for v in views]).double()
    return torch.cat([c, c + axes * spread])


def rotation_errors_deg(truth, recovered) -> list[float]:
    """Per-view rotation error after aligning the recovered frame to the true one."""
    _, R, _ = umeyama(_frame_points(recovered), _frame_points(truth))
    errors = []
    for v, w in zip(truth, recovered):
        D = v.camera.T_cam_world[:3, :3].double() @ (w.camera.T_cam_world[:3, :3].double() @ R.T).T
        errors.append(float(torch.rad2deg(torch.arccos(((torch.trace(D) - 1) / 2).clamp(-1, 1)))))
    return errors


def test_triangulated_sift_points_lie_on_the_plane():
    views = plane_views(size=(192, 144))
    points, colors = triangulate_sift(views)
    assert points.shape[0] > 100 and points.shape == colors.shape
    err = (points[:, 2] - (PLANE_DEPTH + PLANE_SLOPE * points[:, 0])).abs() / PLANE_DEPTH
    assert err.median() < 0.005 and (err < 0.02).float().mean() > 0.95
    assert colors.min() >= 0 and colors.max() <= 1


def test_triangulation_rejects_matches_that_contradict_the_poses():
    views = plane_views(size=(192, 144))
    # swap the outer cameras: every match now violates the epipolar geometry
    swapped = [replace(views[0], camera=views[2].camera), views[1], replace(views[2], camera=views[0].camera)]
    good, _ = triangulate_sift(views)
    bad, _ = triangulate_sift(swapped)
    assert len(bad) < 0.1 * len(good)


def test_textureless_views_give_no_points():
    points, colors = triangulate_sift(plane_views(n=2, size=(64, 48), texture=False))
    assert points.shape == (0, 3) and colors.shape == (0, 3)


def test_unrelated_views_fail_with_the_view_names_and_a_suggestion():
    a, b, c = (plane_views(n=1, size=(160, 120), seed=s)[0] for s in (1, 2, 3))  # three different textures
    views = [replace(a, name="north"), replace(b, name="south"), replace(c, name="east")]
    # each view is named with its verified matches with every neighbour
    with pytest.raises(ReconError, match=r"view north could not be registered \(0 verified matches with south, "
                                         r"0 verified matches with east.*view east.*--stereo-model"):
        recover_poses(views)
    with pytest.raises(ReconError, match="at least 2 views"):
        recover_poses(views[:1])


@pytest.mark.shared_data
@pytest.mark.parametrize("indices", [(1, 10, 19), (2, 9, 16, 18)], ids=["llff3", "four"])
def test_recover_poses_on_fern(indices):
    from recon.data import load_scene

    truth = load_scene(shared_scene("llff_fern")).subset(list(indices))
    blind = [replace(v, camera=replace(v.camera, T_cam_world=torch.eye(4))) for v in truth]
    recovered = recover_poses(blind)
    assert [v.name for v in recovered] == [v.name for v in truth]
    # measured: 0.7-1.5 degrees (the reference poses are COLMAP's own, from all 20 images)
    assert max(rotation_errors_deg(truth, recovered)) < 3.0
    f_true, f_rec = float(truth[0].camera.K[0, 0]), float(recovered[0].camera.K[0, 0])
    assert abs(f_rec / f_true - 1) < 0.25  # measured 5-15 % with a shared SIMPLE_PINHOLE camera
    for v in recovered:
        assert v.camera.width == 504 and v.camera.height == 378
        assert torch.isfinite(v.camera.T_cam_world).all()


@pytest.mark.slow
def test_recover_poses_on_the_synthetic_scene():
    from recon.data.synthetic import make_synthetic_scene

    truth = make_synthetic_scene(seed=0, n_views=24, width=640, height=480).subset([0, 1, 2, 3])
    recovered = recover_poses([replace(v, depth=None, mask=None) for v in truth])
    assert max(rotation_errors_deg(truth, recovered)) < 1.0  # measured 0.16-0.33 degrees
    assert abs(float(recovered[0].camera.K[0, 0]) / float(truth[0].camera.K[0, 0]) - 1) < 0.03


# ---- depth-reversal guard: views whose matches a pure camera rotation explains ------------


def _project(K, R, t, X):
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:3]


def test_a_pure_rotation_explains_rotated_views_and_gives_their_focal_but_not_a_step_sideways():
    import numpy as np
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    size, f = (504, 378), 430.0
    K = np.array([[f, 0, 252], [0, f, 189], [0, 0, 1]])
    R = Rotation.from_euler("xyz", [1.0, 6.0, 0.5], degrees=True).as_matrix()
    far = rng.uniform([-25, -18, 40], [25, 18, 60], (400, 3))  # a distant scene, cameras 0.3 apart
    x1 = _project(K, np.eye(3), np.zeros(3), far)
    x2 = _project(K, R, np.array([0.3, 0, 0]), far) + rng.normal(0, 0.3, (400, 2))
    focal, explained = rotation_only_matches(x1, x2, size, size, 4.0)
    assert explained >= 390 and abs(focal / f - 1) < 0.05  # parallax 2-3 px: below the 4 px threshold
    near = rng.uniform([-2, -1.5, 2], [2, 1.5, 6], (400, 3))  # depth 2-6, the same step: 20-60 px of parallax
    x1 = _project(K, np.eye(3), np.zeros(3), near)
    x2 = _project(K, R, np.array([0.3, 0, 0]), near) + rng.normal(0, 0.3, (400, 2))
    _, explained = rotation_only_matches(x1, x2, size, size, 4.0)
    assert explained < 0.4 * 400  # measured 110 (points near the mean depth); the guard refuses above 70 %


def test_views_taken_from_one_spot_fail_naming_the_views_and_their_matches():
    """A camera panning in place over the generated scene (each image is an exact rotation
    warp K R K^-1 of one rendered view): no parallax fixes the positions, so SfM must refuse
    with the views and their matches, not return a model (the mapper of this guard's
    predecessor failed here with an unrelated message, or returned arbitrary centres)."""
    import cv2
    import numpy as np
    from scipy.spatial.transform import Rotation

    from recon.data.synthetic import make_synthetic_scene

    v = make_synthetic_scene(seed=0, n_views=1, width=400, height=300).views[0]
    K = v.camera.K.double().numpy()
    views = []
    for i, yaw in enumerate((-5.0, 0.0, 5.0)):
        Hm = K @ Rotation.from_euler("xy", [0.4 * i, yaw], degrees=True).as_matrix() @ np.linalg.inv(K)
        image = cv2.warpPerspective(v.image.numpy(), Hm, (v.width, v.height), flags=cv2.INTER_LINEAR)
        guess = torch.tensor([[480.0, 0, 200], [0, 480.0, 150], [0, 0, 1]])  # the 1.2 x max-side prior
        views.append(replace(v, name=f"pan{i}", image=torch.from_numpy(image), depth=None, mask=None,
                             camera=replace(v.camera, K=guess, T_cam_world=torch.eye(4))))
    with pytest.raises(ReconError, match=r"rotation alone.*view pan\d \(\d+ of \d+ verified matches with pan\d.*"
                                         r"--stereo-model") as info:
        reconstruct(views)
    assert info.value.exit_code == 2
    # the rotation-only focal is the renderer's, not the prior's (the message quotes it)
    focal = float(K[0, 0])
    quoted = float(str(info.value).split("focal ~")[1].split(" px")[0])
    assert abs(quoted / focal - 1) < 0.05, (quoted, focal)


# ---- a small step sideways: real but tiny parallax ------------------------------------


def _stepped_views(step: float, noise: float):
    """Three views of one rendered image of the generated scene as a camera turning (yaw
    -5/0/5 degrees) while stepping ``step`` sideways (camera x): each image is the rendered
    one re-projected through its exact depth (a small-motion backward warp), so the known
    poses hold to a fraction of a pixel, and the parallax is the step's alone (depth 2.5-6:
    ~3 px between neighbours for step 0.04; a pure rotation explains 96% of the verified
    matches, as on LLFF leaves). Returns (blind views with the 1.2 x max-side focal prior,
    true cameras)."""
    import cv2
    import numpy as np
    from scipy.spatial.transform import Rotation

    from recon.data.synthetic import make_synthetic_scene
    from recon.types import Camera

    v = make_synthetic_scene(seed=0, n_views=1, width=400, height=300).views[0]
    K = v.camera.K.double().numpy()
    depth0 = v.depth.double().numpy()
    depth0 = np.where(depth0 > 0, depth0, 1e4)  # sky: at infinity
    u, w = np.meshgrid(np.arange(v.width) + 0.5, np.arange(v.height) + 0.5)
    rays = np.stack([u, w, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # [H, W, 3] target rays (z = 1)
    g = torch.Generator().manual_seed(3)
    views, truth = [], []
    for i, yaw in enumerate((-5.0, 0.0, 5.0)):
        R = Rotation.from_euler("xy", [0.3 * i, yaw], degrees=True).as_matrix()  # camera 0 -> camera i
        t = np.array([step * (i - 1), 0.0, 0.0])
        src = rays @ R  # R^T r per pixel
        lam = np.full(u.shape, 4.0)
        for _ in range(4):  # depth along the target ray that lands on the rendered surface
            X0 = lam[..., None] * src - (R.T @ t)
            x0 = X0 @ K.T
            px, py = x0[..., 0] / x0[..., 2], x0[..., 1] / x0[..., 2]
            d = depth0[np.clip(py.astype(int), 0, v.height - 1), np.clip(px.astype(int), 0, v.width - 1)]
            lam = (d + (R.T @ t)[2]) / src[..., 2]
        image = cv2.remap(v.image.numpy(), (px - 0.5).astype(np.float32), (py - 0.5).astype(np.float32),
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        image = (torch.from_numpy(image) + noise * torch.randn(image.shape, generator=g)).clamp(0, 1)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        T = torch.from_numpy(T).float() @ v.camera.T_cam_world
        truth.append(Camera(K=v.camera.K, T_cam_world=T, width=v.width, height=v.height))
        f = 1.2 * max(v.width, v.height)
        guess = torch.tensor([[f, 0, v.width / 2], [0, f, v.height / 2], [0, 0, 1.0]])
        views.append(replace(v, name=f"step{i}", image=image, depth=None, mask=None,
                             camera=replace(v.camera, K=guess, T_cam_world=torch.eye(4))))
    return views, truth


def test_a_small_step_while_turning_is_refused_not_posed():
    """A small step sideways while turning, with image noise: real parallax (~3 px between
    neighbours), but a pure rotation explains most verified matches, so the guard refuses
    and names the views. (An experimental route that fixed the rotation-only focal and posed
    such views returned MIRRORED cameras here, 412 px vs the true 384, and was reverted.)"""
    views, _ = _stepped_views(step=0.04, noise=0.02)
    with pytest.raises(ReconError, match=r"rotation alone.*view step\d \(\d+ of \d+ verified matches with step\d.*"
                                         r"--stereo-model") as info:
        reconstruct(views, num_threads=1)
    assert info.value.exit_code == 2
