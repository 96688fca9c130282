"""Every real scene in ../shared/data loads with the right counts, resolutions and geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_scene

from recon.data import detect_format, load_scene
from recon.data.common import camera_normalisation, w2c_opencv_to_c2w_opengl
from recon.data.llff import llff_to_opencv, opencv_to_llff
from recon.data.splits import select_split

pytestmark = pytest.mark.shared_data


def _project(view, points):  # points [M, 3] -> (uv [M, 2], z [M])
    T = view.camera.T_cam_world.double()
    cam = points.double() @ T[:3, :3].T + T[:3, 3]
    uv = cam @ view.camera.K.double().T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


@pytest.mark.parametrize(
    "name, n, size, fmt",
    [
        ("llff_fern", 20, (504, 378), "llff"),
        ("llff_flower", 34, (504, 378), "llff"),
        ("llff_leaves", 26, (800, 600), "llff"),
        ("llff_orchids", 25, (800, 600), "llff"),
    ],
)
def test_llff_scenes(name, n, size, fmt):
    root = shared_scene(name)
    assert detect_format(root) == fmt
    scene = load_scene(root, downscale=4)
    assert len(scene) == n and scene.format == fmt
    w, h = round(size[0] / 4), round(size[1] / 4)
    assert {(v.width, v.height) for v in scene.views} == {(w, h)}
    # focal from the pose file (given for 4032x3024) scaled to the loaded width
    raw = np.load(root / "poses_bounds.npy")
    f_file = raw[0, 14]
    assert float(scene.views[0].camera.K[0, 0]) == pytest.approx(f_file * w / raw[0, 9], rel=1e-4)
    assert float(scene.views[0].camera.K[0, 2]) == pytest.approx(w / 2)
    # forward-facing: every camera looks the same way, and the near bound lies in front
    axes = torch.stack([v.camera.T_world_cam[:3, 2] for v in scene.views])  # [N, 3] forward
    assert float((axes @ axes.mean(0)).min()) > 0.9 * float(axes.mean(0).norm())
    near, far = scene.meta["bounds"]
    assert 0 < near < far
    # a point on the mean optical axis at mid-depth is in front of every camera and near
    # the image centre of all of them
    centres = torch.stack([v.camera.centre for v in scene.views])
    target = centres.mean(0) + axes.mean(0) / axes.mean(0).norm() * (near + far) / 4
    for v in scene.views:
        uv, z = _project(v, target[None])
        assert float(z[0]) > 0
        assert 0 < float(uv[0, 0]) < v.width and 0 < float(uv[0, 1]) < v.height


def test_llff_convention_round_trip_and_fern_protocol():
    root = shared_scene("llff_fern")
    raw = np.load(root / "poses_bounds.npy")[:, :15].reshape(-1, 3, 5)
    for pose in raw:
        T = llff_to_opencv(pose)
        assert np.allclose(opencv_to_llff(T, pose[:, 4]), pose, atol=1e-6)
    scene = load_scene(root, normalise=False, downscale=8)
    # unnormalised world frame: camera centres are the pose file's translation column
    for v, pose in zip(scene.views, raw):
        assert np.allclose(v.camera.centre.numpy(), pose[:, 3], atol=1e-4)
    split = select_split(scene, "llff", 3)
    assert split.train == (1, 10, 19) and split.test == (0, 8, 16)  # image001/010/019 as in the papers
    assert [scene.views[i].name for i in split.train] == ["image001", "image010", "image019"]


def test_dtu_projection_reproduces_world_mat():
    root = shared_scene("dtu_scan24")
    assert detect_format(root) == "dtu"
    scene = load_scene(root, normalise=False)
    assert len(scene) == 49 and {(v.width, v.height) for v in scene.views} == {(400, 300)}
    cams = np.load(root / "cameras_sphere.npz")
    for i in (0, 22, 25, 48):
        v = scene.views[i]
        K_full = v.camera.K.double().numpy().copy()
        K_full[:2] *= 4  # the file's matrices are for 1600x1200
        P = K_full @ v.camera.T_cam_world.double().numpy()[:3]
        W = cams[f"world_mat_{i}"][:3].astype(np.float64)
        assert np.allclose(P / P[2, 3], W / W[2, 3], rtol=1e-4, atol=1e-4 * np.abs(W / W[2, 3]).max())
    # masks: one per view, bool, threshold 128
    assert all(v.mask is not None and v.mask.dtype == torch.bool for v in scene.views)
    assert 0.05 < float(scene.views[25].mask.float().mean()) < 0.9
    # the normalised frame is the file's scale_mat: the unit sphere's centre is the origin
    norm = load_scene(root, downscale=4)
    S = cams["scale_mat_0"]
    assert norm.normalisation.centre == pytest.approx(tuple(S[:3, 3]), rel=1e-5)
    for v in norm.views:  # the object centre projects into every image, in front
        uv, z = _project(v, torch.zeros(1, 3))
        assert float(z[0]) > 0 and 0 < float(uv[0, 0]) < v.width and 0 < float(uv[0, 1]) < v.height
        assert bool(v.mask[int(uv[0, 1]), int(uv[0, 0])])  # ... onto the object mask
    split = select_split(norm, "dtu", 3)
    assert split.train == (25, 22, 28) and len(split.test) == 25 and not set(split.test) & {3, 4, 5, 36}


def test_blender_lego_round_trip_and_8_views():
    root = shared_scene("nerf_synthetic_lego")
    assert detect_format(root) == "blender"
    scene = load_scene(root, downscale=8, normalise=False)
    assert len(scene) == 125 and len(scene.split.train) == 100 and len(scene.split.test) == 25
    assert {(v.width, v.height) for v in scene.views} == {(100, 100)}
    meta = json.loads((root / "transforms_train.json").read_text())
    for k in (0, 26, 99):
        c2w = np.asarray(meta["frames"][k]["transform_matrix"])
        v = scene.views[scene.split.train[k]]
        assert v.name == f"train_{meta['frames'][k]['file_path'].split('/')[-1]}"
        assert np.allclose(w2c_opencv_to_c2w_opengl(v.camera.T_cam_world.double().numpy()), c2w, atol=1e-5)
        uv, z = _project(v, torch.zeros(1, 3))  # the model sits at the origin
        assert float(z[0]) > 0 and abs(float(uv[0, 0]) - 50) < 15 and abs(float(uv[0, 1]) - 50) < 15
    # composited on white; alpha is the mask
    v = scene.views[0]
    assert float(v.image[~v.mask].mean()) > 0.95 and 0.05 < float(v.mask.float().mean()) < 0.8
    # inward-facing cameras: the normalisation centres on the point they look at (the model)
    norm = camera_normalisation(scene.views)
    assert np.allclose(norm.centre, 0.0, atol=0.05) and 0.2 < norm.scale < 0.26  # cameras at radius ~4
    split = select_split(scene, "blender8", 8)
    assert [scene.views[i].name for i in split.train][:3] == ["train_r_26", "train_r_86", "train_r_2"]
    assert len(split.test) == 25 and scene.meta["missing"]  # 175 absent test images are skipped
