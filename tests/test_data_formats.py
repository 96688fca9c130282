"""Every loader reads back what the writers wrote from the synthetic scene (round trip
through each format's own camera convention), and format-specific options work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.data import detect_format, load_scene
from recon.data.splits import select_split
from recon.data.synthetic import make_synthetic_scene
from recon.data.writers import write_scene

PNG_STEP = 1.0 / 255 + 1e-6  # 8-bit quantisation


@pytest.fixture(scope="module")
def scene():
    return make_synthetic_scene(seed=1, n_views=5, width=64, height=48)


def _same_cameras(a, b, atol=2e-4):
    assert (a.width, a.height) == (b.width, b.height)
    assert torch.allclose(a.camera.K, b.camera.K, rtol=1e-5, atol=1e-3), (a.camera.K, b.camera.K)
    assert torch.allclose(a.camera.T_cam_world, b.camera.T_cam_world, atol=atol), (a.name, a.camera.T_cam_world, b.camera.T_cam_world)


@pytest.mark.parametrize(
    "fmt, detected, masks, depth",
    [
        ("llff", "llff", False, False),
        ("nerfstudio", "nerfstudio", True, True),
        ("colmap", "colmap", False, False),
        ("colmap_bin", "colmap", False, False),
        ("dtu", "dtu", True, False),
        ("spare", "spare", False, False),
    ],
)
def test_round_trip(scene, tmp_path, fmt, detected, masks, depth):
    write_scene(scene, tmp_path / fmt, fmt)
    assert detect_format(tmp_path / fmt) == detected
    back = load_scene(tmp_path / fmt, normalise=False)
    assert back.format == detected and len(back) == len(scene)
    for a, b in zip(scene.views, back.views):
        _same_cameras(a, b)
        assert float((a.image - b.image).abs().max()) <= PNG_STEP
        if masks:
            assert torch.equal(a.mask, b.mask)
        if depth:
            assert torch.allclose(a.depth, b.depth, atol=float(a.depth.max()) / 60000 + 1e-6)


def test_blender_round_trip_composites_alpha(scene, tmp_path):
    write_scene(scene, tmp_path / "b", "blender")
    back = load_scene(tmp_path / "b", normalise=False, background=(0.0, 0.0, 0.0))
    assert back.format == "blender" and len(back.split.train) == len(scene)
    for a, i in zip(scene.views, back.split.train):
        b = back.views[i]
        _same_cameras(a, b)
        assert torch.equal(a.mask, b.mask)
        assert float((a.image - b.image)[a.mask].abs().max()) <= PNG_STEP
        assert float(b.image[~a.mask].max()) == 0.0  # composited on the chosen (black) background


def test_normalised_load_keeps_projections(scene, tmp_path):
    # Normalising moves and scales the world, not the images: a world point and its
    # normalised image project to the same pixel.
    write_scene(scene, tmp_path / "n", "nerfstudio")
    s = load_scene(tmp_path / "n")
    point = torch.tensor([[0.2, -0.1, 0.3]], dtype=torch.float64)
    pn = s.normalisation.to_normalised(point)
    for a, b in zip(scene.views, s.views):
        def proj(view, p):
            T = view.camera.T_cam_world.double()
            c = p @ T[:3, :3].T + T[:3, 3]
            uv = c @ view.camera.K.double().T
            return uv[:, :2] / uv[:, 2:], c[:, 2]
        (uv_a, z_a), (uv_b, z_b) = proj(a, point), proj(b, pn)
        assert torch.allclose(uv_a, uv_b, atol=1e-3)
        assert torch.allclose(z_a * s.normalisation.scale, z_b, rtol=1e-4)
        assert torch.allclose(a.depth * s.normalisation.scale, b.depth, rtol=1e-3, atol=float(a.depth.max()) / 60000 * s.normalisation.scale + 1e-5)


def test_downscale_and_width_rescale_intrinsics(scene, tmp_path):
    write_scene(scene, tmp_path / "d", "dtu")
    half = load_scene(tmp_path / "d", normalise=False, downscale=2)
    fixed = load_scene(tmp_path / "d", normalise=False, width=32)
    for s in (half, fixed):
        v = s.views[0]
        assert (v.width, v.height) == (32, 24) and v.mask.shape == (24, 32)
        assert torch.allclose(v.camera.K, scene.views[0].camera.scaled(32, 24).K, atol=1e-3)


def test_llff_images_n_folder_rescales_focal(scene, tmp_path):
    # Poses written for 64x48; an images_2 folder with 32x24 copies must halve the focal.
    root = write_scene(scene, tmp_path / "l", "llff")
    (root / "images_2").mkdir()
    from PIL import Image

    for p in sorted((root / "images").iterdir()):
        Image.open(p).resize((32, 24), Image.BOX).save(root / "images_2" / p.name)
    s = load_scene(root, images="images_2", normalise=False)
    assert s.meta["images_folder"] == "images_2" and s.views[0].width == 32
    assert float(s.views[0].camera.K[0, 0]) == pytest.approx(float(scene.views[0].camera.K[0, 0]) / 2, rel=1e-5)


def test_spare_split_file_and_light(scene, tmp_path):
    root = write_scene(scene, tmp_path / "scan9", "spare")
    (tmp_path / "Track1_split_x.json").write_text('{"scan9": {"input_views": [3, 1, 4], "test_views": [0, 2], "dataset": "dtu"}}')
    s = load_scene(root)
    assert s.format == "spare" and s.views[0].name == "rect_001_3_r5000"
    split = select_split(s, "spare", 3)
    assert split.train == (3, 1, 4) and split.test == (0, 2)
    with pytest.raises(Exception, match="light=5"):
        load_scene(root, light=5)


def test_plain_folder_is_unposed(scene, tmp_path):
    root = write_scene(scene, tmp_path / "p", "colmap")
    s = load_scene(root / "images")
    assert s.format == "images" and not s.posed and len(s) == len(scene)
    assert float(s.views[0].camera.K[0, 0]) == pytest.approx(1.2 * 64)


def test_colmap_distortion_survives(scene, tmp_path):
    from dataclasses import replace

    views = tuple(replace(v, camera=replace(v.camera, distortion=torch.tensor([0.01, -0.002, 0.0005, 0.0]))) for v in scene.views)
    root = write_scene(replace(scene, views=views), tmp_path / "c", "colmap")
    # written and read back exactly when asked to keep the distortion ...
    back = load_scene(root, normalise=False, format="colmap", undistort=False)
    assert torch.allclose(back.views[0].camera.distortion, views[0].camera.distortion, atol=1e-7)
    root2 = write_scene(replace(scene, views=views), tmp_path / "ns", "nerfstudio")
    kept = load_scene(root2, undistort=False)
    assert torch.allclose(kept.views[2].camera.distortion, views[2].camera.distortion, atol=1e-7)
    # ... and by default the images are undistorted on load, so what we fit is pinhole
    for loaded in (load_scene(root, normalise=False, format="colmap"), load_scene(root2)):
        assert all(v.camera.distortion is None for v in loaded.views)
        assert loaded.meta["undistorted_views"] == len(views)


def test_farthest_split_spreads_views(scene):
    split = select_split(scene, "farthest", 3)
    assert len(set(split.train)) == 3 and set(split.train).isdisjoint(split.test)
    assert len(split.train) + len(split.test) == len(scene)
    centres = torch.stack([v.camera.centre for v in scene.views])
    chosen = centres[list(split.train)]
    # the chosen cameras are further apart than the closest pair of cameras overall
    pair = torch.cdist(centres, centres) + torch.eye(len(centres)) * 1e9
    assert float(torch.pdist(chosen).min()) > float(pair.min())
    assert "farthest" in split.description


@settings(max_examples=40, deadline=None)
@given(
    q=st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: sum(x * x for x in q) > 0.1),
    t=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
)
def test_pose_conventions_round_trip(q, t):
    # OpenCV world-to-camera -> OpenGL camera-to-world (Blender/nerfstudio) and LLFF 3x5 and back.
    from recon.data.common import c2w_opengl_to_w2c_opencv, w2c_opencv_to_c2w_opengl
    from recon.data.llff import llff_to_opencv, opencv_to_llff
    from recon.geometry import quat_to_rotmat

    T = np.eye(4)
    T[:3, :3] = quat_to_rotmat(torch.tensor(q, dtype=torch.float64)).numpy()
    T[:3, 3] = t
    c2w_gl = w2c_opencv_to_c2w_opengl(T)
    assert np.allclose(c2w_opengl_to_w2c_opencv(c2w_gl), T, atol=1e-9)
    # OpenGL looks down -z: its -z column is OpenCV's forward (+z) axis in world
    assert np.allclose(-c2w_gl[:3, 2], T[2, :3], atol=1e-9)
    llff = opencv_to_llff(T, (48, 64, 50.0))
    assert np.allclose(llff_to_opencv(llff), T, atol=1e-9)
    assert np.allclose(llff[:, 0], T[1, :3], atol=1e-9)  # LLFF's first column points down (OpenCV y)


def test_nerfstudio_shared_intrinsics_and_instant_ngp_angles(scene, tmp_path):
    import json
    import math

    root = write_scene(scene, tmp_path / "ngp", "nerfstudio")
    doc = json.loads((root / "transforms.json").read_text())
    K = scene.views[0].camera.K
    # instant-ngp style: one shared field of view at the top level, nothing per frame
    frames = [{"file_path": f["file_path"], "transform_matrix": f["transform_matrix"]} for f in doc["frames"]]
    ngp = {"camera_angle_x": 2 * math.atan(64 / (2 * float(K[0, 0]))), "frames": frames}
    (root / "transforms.json").write_text(json.dumps(ngp))
    back = load_scene(root, normalise=False)
    for a, b in zip(scene.views, back.views):
        _same_cameras(a, b)
        assert b.mask is None and b.depth is None
    # nerfstudio style: shared fl_x/cx at the top for images twice the loaded size
    shared = {"fl_x": 2 * float(K[0, 0]), "fl_y": 2 * float(K[1, 1]), "cx": 64.0, "cy": 48.0, "w": 128, "h": 96, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(shared))
    back = load_scene(root, normalise=False)
    assert torch.allclose(back.views[3].camera.K, K, atol=1e-3)


def test_raw_dtu_layout_finds_calibration_two_levels_up(scene, tmp_path):
    # <dtu>/Rectified/scan1/rect_XXX_3_r5000.png with <dtu>/Calibration/cal18/pos_XXX.txt
    flat = write_scene(scene, tmp_path / "flat", "spare")
    scan = tmp_path / "dtu" / "Rectified" / "scan1"
    cal = tmp_path / "dtu" / "Calibration" / "cal18"
    scan.mkdir(parents=True)
    cal.mkdir(parents=True)
    for p in flat.iterdir():
        p.rename((cal if p.suffix == ".txt" else scan) / p.name)
    back = load_scene(scan, normalise=False)
    assert back.format == "spare" and len(back) == len(scene)
    _same_cameras(scene.views[2], back.views[2])


def test_colmap_smaller_images_rescale_intrinsics(scene, tmp_path):
    from PIL import Image

    root = write_scene(scene, tmp_path / "c2", "colmap_bin")
    (root / "images_2").mkdir()
    for p in sorted((root / "images").iterdir()):
        Image.open(p).resize((32, 24), Image.BOX).save(root / "images_2" / p.name)
    back = load_scene(root, images="images_2", normalise=False)
    assert back.views[0].width == 32
    assert torch.allclose(back.views[1].camera.K, scene.views[1].camera.scaled(32, 24).K, atol=1e-3)


def test_colmap_points_follow_the_normalisation(scene, tmp_path):
    from dataclasses import replace

    v = scene.views[0]
    ii, jj = torch.nonzero(v.depth > 0, as_tuple=True)
    pick = torch.randperm(len(ii))[:50]
    pix = torch.stack([jj[pick] + 0.5, ii[pick] + 0.5, torch.ones(50)], -1).double()  # [50, 3]
    cam = (torch.linalg.inv(v.camera.K.double()) @ pix.T).T * v.depth[ii[pick], jj[pick], None].double()
    world = (cam - v.camera.T_cam_world.double()[:3, 3]) @ v.camera.T_cam_world.double()[:3, :3]  # [50, 3]
    meta = dict(scene.meta, points=world.float(), point_colors=v.image[ii[pick], jj[pick]])
    root = write_scene(replace(scene, meta=meta), tmp_path / "pts", "colmap")
    raw = load_scene(root, normalise=False)
    order = torch.cdist(raw.meta["points"].double(), world).argmin(1)  # COLMAP may reorder ids
    assert torch.allclose(raw.meta["points"].double(), world[order], atol=1e-5)
    assert torch.allclose(raw.meta["point_colors"], v.image[ii[pick], jj[pick]][order], atol=1 / 255 + 1e-6)
    norm = load_scene(root)
    assert torch.allclose(norm.meta["points"].double(), norm.normalisation.to_normalised(raw.meta["points"].double()), atol=1e-5)
    # normalised points still project where they did: onto pixels with the same depth ordering
    T = norm.views[0].camera.T_cam_world.double()
    z = norm.meta["points"].double() @ T[2, :3] + T[2, 3]
    z_raw = raw.meta["points"].double() @ raw.views[0].camera.T_cam_world.double()[2, :3] + raw.views[0].camera.T_cam_world.double()[2, 3]
    assert torch.allclose(z, z_raw * norm.normalisation.scale, rtol=1e-4)


def test_farthest_split_never_repeats_a_view_and_spreads_unposed_input():
    """Coincident camera centres (e.g. unposed photos, all at the identity) must not make
    farthest-point sampling pick one view three times."""
    from dataclasses import replace

    from recon.data.splits import select_split
    from recon.data.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(n_views=6, width=32, height=24)
    same_place = tuple(replace(v, camera=replace(v.camera, T_cam_world=torch.eye(4))) for v in scene.views)
    posed_but_coincident = replace(scene, views=same_place)
    split = select_split(posed_but_coincident, "farthest", 3)
    assert len(set(split.train)) == 3 and not set(split.train) & set(split.test)
    unposed = replace(scene, views=same_place, posed=False)
    split = select_split(unposed, "farthest", 3)
    assert split.train == (0, 2, 5) or split.train == (0, 3, 5)  # linspace over file order
    assert "unposed" in split.description
