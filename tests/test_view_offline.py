"""Viewer pieces that need no server: splat conversion, camera conversions, run folders,
camera paths and path videos (also through `recon view --path-video`)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.errors import ConfigError, SceneError
from recon.geometry import look_at
from recon.types import Camera, Gaussians, RenderSettings


def make_gaussians(n: int = 300, seed: int = 0, sh_bands: int = 4) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.3,  # [N, 3]
        log_scales=torch.full((n, 3), -2.5) + 0.3 * torch.randn(n, 3, generator=gen),  # [N, 3]
        quats=torch.randn(n, 4, generator=gen),  # [N, 4]
        opacity_logits=torch.randn(n, generator=gen) + 1.0,  # [N]
        sh=torch.randn(n, sh_bands, 3, generator=gen) * 0.5,  # [N, K, 3]
    )


def ring_cameras(n: int = 4, radius: float = 2.0, height: float = -0.4, width: int = 40, height_px: int = 30,
                 span: float = 1.5) -> tuple[Camera, ...]:
    """Cameras on an arc around the origin, looking at it; world up is -y (OpenCV-like)."""
    K = torch.tensor([[40.0, 0.0, width / 2], [0.0, 40.0, height_px / 2], [0.0, 0.0, 1.0]])
    cams = []
    for a in np.linspace(0.0, span, n):
        eye = torch.tensor([radius * math.sin(a), height, -radius * math.cos(a)])
        cams.append(Camera(K, look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0])), width, height_px))
    return tuple(cams)


def reference_render(g, cams, settings):
    from recon.render import render

    return render(g, cams, replace(settings, backend="reference"))


# ----------------------------------------------------------------------------- splats
def test_splat_arrays_match_the_gaussian_definition():
    from recon.geometry import quat_to_rotmat
    from recon.view.scene import SH_C0, splat_arrays

    g = make_gaussians(50)
    arrays = splat_arrays(g)
    for i in (0, 7, 49):
        R = quat_to_rotmat(g.quats[i])
        S = torch.diag(torch.exp(g.log_scales[i]))
        cov = (R @ S @ S @ R.T).numpy()
        np.testing.assert_allclose(arrays.covariances[i], cov, rtol=1e-4, atol=1e-7)
        assert np.all(np.linalg.eigvalsh(arrays.covariances[i].astype(np.float64)) > 0)
    np.testing.assert_allclose(arrays.rgbs, (0.5 + SH_C0 * g.sh[:, 0]).clamp(0, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(arrays.opacities[:, 0], torch.sigmoid(g.opacity_logits).numpy(), atol=1e-6)
    assert arrays.centers.dtype == np.float32 and arrays.centers.shape == (50, 3)


def test_viser_camera_round_trip_and_projection():
    from recon.view.scene import camera_from_viser, camera_wxyz_position, vertical_fov

    cam = ring_cameras(3)[1]
    wxyz, pos = camera_wxyz_position(cam)
    back = camera_from_viser(wxyz, pos, vertical_fov(cam), cam.width, cam.height)
    np.testing.assert_allclose(back.T_cam_world.numpy(), cam.T_cam_world.numpy(), atol=1e-5)
    np.testing.assert_allclose(back.K.numpy(), cam.K.numpy(), atol=1e-4)
    np.testing.assert_allclose(pos, cam.centre.numpy(), atol=1e-6)


def test_colourise_modes():
    from recon.types import RenderOutput
    from recon.view.scene import colourise

    depth = torch.linspace(1, 2, 12).reshape(1, 3, 4)
    depth[0, 0, 0] = 0.0  # unknown
    out = RenderOutput(rgb=torch.rand(1, 3, 4, 3), depth=depth, alpha=torch.rand(1, 3, 4),
                       means2d=torch.zeros(1, 0, 2), radii=torch.zeros(1, 0, dtype=torch.int32),
                       visible=torch.zeros(1, 0, dtype=torch.bool))
    d = colourise(out, "depth")
    assert d.shape == (3, 4, 3) and d.dtype == np.uint8
    assert (d[0, 0] == 0).all() and d[1:].std() > 10  # unknown black, the rest a colour ramp
    a = colourise(out, "alpha")
    np.testing.assert_allclose(a[..., 0], (out.alpha[0].numpy() * 255).round(), atol=1)
    with pytest.raises(ValueError, match="render mode"):
        colourise(out, "normals")


# ----------------------------------------------------------------------------- run folders
def write_run(folder: Path, g: Gaussians, train: tuple[Camera, ...], test: tuple[Camera, ...]) -> Path:
    """A run folder as `recon fit` writes it (point_cloud.ply + cameras.json)."""
    from recon.export.ply import write_ply

    folder.mkdir(parents=True, exist_ok=True)
    write_ply(folder / "point_cloud.ply", g)
    entries = [{"name": f"{s}{i}", "split": s, "K": c.K.tolist(), "T_cam_world": c.T_cam_world.tolist(),
                "width": c.width, "height": c.height}
               for s, cams in (("train", train), ("test", test)) for i, c in enumerate(cams)]
    (folder / "cameras.json").write_text(json.dumps({"convention": "OpenCV", "cameras": entries}))
    return folder


def test_load_run_folder_and_bare_ply(tmp_path: Path):
    from recon.view.finished_run import load_run

    g, cams = make_gaussians(120), ring_cameras(4)
    run = write_run(tmp_path / "run", g, cams[:3], cams[3:])
    contents = load_run(run)
    assert contents.cameras.train_names == ("train0", "train1", "train2")
    assert contents.cameras.test_names == ("test0",)
    np.testing.assert_allclose(contents.cameras.test[0].T_cam_world.numpy(), cams[3].T_cam_world.numpy(), atol=1e-6)
    np.testing.assert_allclose(contents.gaussians.means.numpy(), g.means.numpy(), atol=1e-6)
    assert contents.gaussians.sh_degree == 1
    bare = load_run(run / "point_cloud.ply")  # a PLY beside cameras.json still gets the cameras
    assert len(bare.gaussians) == 120 and bare.run_dir is None and len(bare.cameras.train) == 3
    assert contents.background == bare.background == (0.0, 0.0, 0.0)  # no metrics.json: black


def test_finished_run_viewer_draws_the_background_the_fit_rendered(tmp_path: Path):
    """An LLFF fit renders on its training images' mean colour (render.background=mean),
    Blender on white: the viewer must show the same where no Gaussian covers a pixel."""
    from recon.view import finished_run

    g, cams = make_gaussians(50), ring_cameras(3)
    run = write_run(tmp_path / "run", g, cams[:2], cams[2:])
    settings = {"sh_degree": 1, "background": [0.42, 0.39, 0.3], "near": 0.01, "far": 100.0}
    (run / "metrics.json").write_text(json.dumps({"protocol": {"render_settings": settings}}))
    contents = finished_run.load_run(run)
    assert contents.background == pytest.approx((0.42, 0.39, 0.3))
    seen = {}

    class Recorder:
        def __init__(self, server, **kwargs):
            seen.update(kwargs)

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    class Server:
        def __init__(self, *args, **kwargs):
            self.gui = self

        def add_folder(self, *args, **kwargs):
            import contextlib

            return contextlib.nullcontext()

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    import unittest.mock as mock

    with mock.patch.object(finished_run, "SceneView", Recorder), mock.patch.object(finished_run, "ViewerServer", Server):
        finished_run.RunViewer(contents, announce=False)
    assert seen["background"] == pytest.approx((0.42, 0.39, 0.3))


def test_bad_runs_raise_clear_errors(tmp_path: Path):
    from recon.view.finished_run import load_run

    with pytest.raises(SceneError, match="no such run folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="no point_cloud.ply"):
        load_run(tmp_path / "empty")
    run = write_run(tmp_path / "run", make_gaussians(10), ring_cameras(2), ())
    (run / "cameras.json").write_text(json.dumps([{"name": "a", "split": "train", "K": [[1, 0], [0, 1]],
                                                   "T_cam_world": np.eye(4).tolist(), "width": 4, "height": 3}]))
    with pytest.raises(SceneError, match="cameras.json camera 0: K must be 3x3"):
        load_run(run)
    (run / "cameras.json").write_text('[{"name": "a", "split": "train"}]')
    with pytest.raises(SceneError, match="lacks key 'K'"):
        load_run(run)


# ----------------------------------------------------------------------------- camera paths
def _project(cam: Camera, point: np.ndarray) -> np.ndarray:
    p = cam.T_cam_world.double().numpy() @ np.append(point, 1.0)
    uv = cam.K.double().numpy() @ (p[:3] / p[2])
    return np.array([uv[0], uv[1], p[2]])


def test_orbit_circles_the_focus_point_at_the_input_distance():
    from recon.view.path import focus_point, orbit_path

    cams = ring_cameras(5, radius=2.0, height=-0.4)
    np.testing.assert_allclose(focus_point(cams), np.zeros(3), atol=1e-6)
    path = orbit_path(cams, 12)
    centres = np.stack([c.centre.numpy() for c in path])
    np.testing.assert_allclose(np.linalg.norm(centres[:, [0, 2]], axis=1), 2.0, atol=1e-4)
    np.testing.assert_allclose(centres[:, 1], -0.4, atol=1e-4)  # the input cameras' height
    # The arc sweeps the inputs' azimuths (0 to 1.5 rad) plus 15% each side, and back.
    azimuth = np.arctan2(centres[:, 0], -centres[:, 2])
    assert azimuth.min() == pytest.approx(-0.225, abs=1e-3) and azimuth.max() == pytest.approx(1.725, abs=0.05)
    for cam in path:  # every frame looks at the focus point, upright
        u, v, z = _project(cam, np.zeros(3))
        assert z > 0 and abs(u - cam.width / 2) < 1e-3 and abs(v - cam.height / 2) < 1e-3
        up_img = _project(cam, np.array([0.0, -0.2, 0.0]))
        assert up_img[1] < v  # world up (-y) appears up in the image


def test_azimuth_range_spans_the_inputs():
    from recon.view.path import azimuth_range

    start, end = azimuth_range(np.array([0.1, 0.5, -0.3]))
    assert (start, end) == pytest.approx((2 * math.pi - 0.3, 2 * math.pi + 0.5))
    start, end = azimuth_range(np.linspace(0, 2 * math.pi, 8, endpoint=False))  # all around
    assert end - start == pytest.approx(2 * math.pi)


def test_spiral_stays_near_forward_facing_inputs():
    from recon.view.path import spiral_path

    K = torch.tensor([[40.0, 0, 20], [0, 40.0, 15], [0, 0, 1]])
    eyes = [torch.tensor([x, y, -3.0]) for x, y in ((-0.3, 0.0), (0.3, 0.1), (0.0, -0.2), (0.1, 0.2))]
    cams = [Camera(K, look_at(e, torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, -1.0, 0.0])), 40, 30)
            for e in eyes]
    path = spiral_path(cams, 30)
    centres = np.stack([c.centre.numpy() for c in path])
    assert np.abs(centres[:, :2]).max() < 0.6 and np.ptp(centres[:, 0]) > 0.2  # moves, within the spread
    for cam in path:  # every frame looks at the point the inputs converge on
        u, v, z = _project(cam, np.array([0.0, 0.0, 2.0]))
        assert z > 0 and abs(u - cam.width / 2) < 1e-3 and abs(v - cam.height / 2) < 1e-3
        assert _project(cam, np.array([0.0, -0.3, 2.0]))[1] < v  # world up (-y) appears up
        assert np.linalg.det(cam.T_cam_world[:3, :3].double().numpy()) > 0.999  # a rotation


def test_camera_path_rejects_bad_requests():
    from recon.view.path import camera_path

    with pytest.raises(ConfigError, match="--path 'zigzag'"):
        camera_path("zigzag", ring_cameras(2), 5)
    with pytest.raises(ConfigError, match="--frames"):
        camera_path("orbit", ring_cameras(2), 0)
    with pytest.raises(SceneError, match="cameras.json"):
        camera_path("orbit", (), 5)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_render_path_writes_a_video(tmp_path: Path, suffix: str):
    import imageio.v3 as iio

    from recon.view.path import orbit_path, render_path

    g = make_gaussians(200)
    path = orbit_path(ring_cameras(3, width=40, height_px=30), 4)
    out = render_path(g, path, tmp_path / f"orbit{suffix}", fps=10, max_side=40,
                      render_fn=reference_render, settings=RenderSettings(background=(1.0, 1.0, 1.0)),
                      progress=False)
    frames = iio.imread(out, index=None)  # [F, H, W, C]
    assert frames.shape[0] == 4 and frames.shape[1:3] == (30, 40)
    direct = reference_render(g, [path[2]], RenderSettings(background=(1.0, 1.0, 1.0))).rgb[0].numpy() * 255
    err = np.abs(frames[2, ..., :3].astype(float) - direct).mean()
    assert err < (12.0 if suffix == ".mp4" else 8.0), err  # lossy codecs, same picture
    assert frames[0, ..., :3].std() > 5.0  # the Gaussians are in view
    with pytest.raises(ConfigError, match=".mp4 or .gif"):
        render_path(g, path, tmp_path / "orbit.avi", render_fn=reference_render, progress=False)


def test_recon_view_path_video_cli(tmp_path: Path, monkeypatch):
    from recon import cli
    from recon.view import scene

    monkeypatch.setattr(scene, "default_render_fn", reference_render)
    monkeypatch.setattr("recon.view.path.default_render_fn", reference_render)
    cams = ring_cameras(4, width=40, height_px=30)
    run = write_run(tmp_path / "run", make_gaussians(100), cams[:3], cams[3:])
    out = tmp_path / "clip.gif"
    assert cli.main(["view", str(run), "--path-video", str(out), "--frames", "4", "--size", "40"]) == 0
    assert iio_frames(out) == 4
    assert cli.main(["view", str(tmp_path / "nope")]) == 2  # a one-line ReconError, exit code 2


def iio_frames(path: Path) -> int:
    import imageio.v3 as iio

    return int(iio.imread(path, index=None).shape[0])
