"""A custom phone capture under the mission command (`recon fit CAPTURE --views 3`, no --config):
the generic preset is picked, the fit works at a resolution chosen from the capture's size
(longer side capped by configs/generic.yaml's data.max_side), the photographs are undistorted on
load (a straight edge bent by the lens is straight in what the fit sees), and metrics.json and the
printed summary say what was picked and why."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.data.common import make_camera
from recon.data.loading import LoaderOptions, load_with_options
from recon.data.undistort import distort_view
from recon.geometry import look_at
from recon.optimise.config import load_config
from recon.optimise.presets import choose_preset
from recon.types import View

W, H = 360, 640  # portrait, larger than the generic working size: the fit must downscale it
FOV_X = 50.0
COEFFS = (-0.25, 0.05, 0.001, -0.001)  # k1 k2 p1 p2: a strong barrel distortion
LINE_ROWS = (0.2, 0.5, 0.8)  # straight dark lines across the pinhole image, at these heights
SIGMA = 1.5  # line profile (pixels): antialiased, so its centre can be found to a fraction of a pixel


def _pinhole_lines() -> np.ndarray:
    """A white frame with dark horizontal lines: what a pinhole camera sees of straight edges."""
    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    dark = sum(np.exp(-0.5 * ((rows - f * H) / SIGMA) ** 2) for f in LINE_ROWS)
    image = np.repeat(1.0 - 0.9 * np.clip(dark, 0, 1), W, axis=1)
    return np.repeat(image[..., None], 3, axis=2).astype(np.float32)


def _write_capture(root: Path, n: int, style: str) -> Path:
    """``n`` distorted photographs and a transforms.json: nerfstudio style (camera_model OPENCV,
    fl_x per frame) or instant-ngp style (camera_angle_x and k1..p2 at the top level)."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    f = 0.5 * W / math.tan(math.radians(FOV_X) / 2)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    image = torch.from_numpy(_pinhole_lines())
    frames = []
    for i in range(n):
        a = math.radians(-30 + 60 * i / (n - 1))
        eye = torch.tensor([4 * math.cos(a), 4 * math.sin(a), 1.5], dtype=torch.float64)
        T = look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0, 1], dtype=torch.float64))
        view = distort_view(View(name=f"frame_{i:03d}", image=image, camera=make_camera(K, T.numpy(), W, H)), COEFFS)
        Image.fromarray((view.image.numpy() * 255 + 0.5).astype(np.uint8)).save(root / "images" / f"{view.name}.png")
        c2w = np.linalg.inv(T.numpy()) @ np.diag([1.0, -1, -1, 1])  # OpenCV -> OpenGL camera axes
        frame = {"file_path": f"images/{view.name}.png", "transform_matrix": c2w.tolist()}
        if style == "nerfstudio":
            frame.update(fl_x=f, fl_y=f, cx=W / 2, cy=H / 2, w=W, h=H)
        frames.append(frame)
    top = dict(zip(("k1", "k2", "p1", "p2"), COEFFS))
    if style == "nerfstudio":
        top["camera_model"] = "OPENCV"
    else:
        top.update(camera_angle_x=math.radians(FOV_X), w=W, h=H, aabb_scale=4)
    (root / "transforms.json").write_text(json.dumps({**top, "frames": frames}))
    return root


def _line_bend(image: torch.Tensor) -> float:
    """Largest departure (pixels) of any dark line from the straight line through its own
    centres: per column the darkness-weighted row inside a band around each line."""
    dark = 1.0 - image.mean(-1).double().numpy()  # [H, W]
    h, w = dark.shape
    cols = np.arange(int(0.1 * w), int(0.9 * w))
    worst = 0.0
    for f in LINE_ROWS:  # the line near f * h (undistortion moves the outer ones outwards a little)
        near = np.abs(np.arange(h) - f * h) < 0.12 * h
        centre = int(np.argmax(dark[:, w // 2] * near))
        band = np.arange(max(0, centre - 12), min(h, centre + 13))
        weights = np.clip(dark[band][:, cols] - 0.05, 0, None)
        ys = (weights * (band[:, None] + 0.5)).sum(0) / weights.sum(0)
        fit = np.polyval(np.polyfit(cols, ys, 1), cols)
        worst = max(worst, float(np.abs(ys - fit).max()))
    return worst


@pytest.mark.parametrize("style", ["nerfstudio", "instant-ngp"])
def test_generic_preset_undistorts_and_works_at_a_capped_size(tmp_path, style):
    capture = _write_capture(tmp_path / "phone", 12, style)
    choice = choose_preset(str(capture))
    assert (choice.name, choice.format, choice.protocol) == ("generic", "nerfstudio", "farthest")

    from PIL import Image

    with Image.open(capture / "images" / "frame_000.png") as im:
        photo = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
    assert _line_bend(photo) > 3.0  # the lens bends the straight edges by several pixels (~5)

    cfg = load_config(choice.name)  # exactly how `recon fit` reads it (recon.pipeline._load)
    scene = load_with_options(capture, LoaderOptions.from_data_config(cfg.data))
    side = cfg.data.max_side
    assert 0 < side < H  # the preset caps the size; this capture is bigger than the cap
    assert (scene.views[0].width, scene.views[0].height) == (round(W * side / H), side)  # aspect kept: 288x512
    assert scene.meta["undistorted_views"] == 12 and all(v.camera.distortion is None for v in scene.views)
    assert scene.meta["resolution"]["loaded"] == [W, H] and scene.meta["resolution"]["working"] == [288, 512]
    for view in scene.views[:3]:
        assert _line_bend(view.image) < 0.5  # straight again (~0.1 px), at the working size


def test_mission_command_on_a_capture_records_what_it_picked(tmp_path, capsys):
    capture = _write_capture(tmp_path / "phone", 12, "nerfstudio")
    run = tmp_path / "run"
    code = main(["fit", str(capture), "--views", "3", "--out", str(run), "--no-progress",
                 "--set", "optim.iterations=3", "--set", "init.method=random", "--set", "init.random_points=500",
                 "--set", "depth.enabled=false", "--set", "pseudo.enabled=false", "--set", "checkpoint_every=100"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("config: generic (nerfstudio scene, farthest protocol")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["preset"] == "generic" and "picked for this scene" in metrics["config"]["reason"]
    assert metrics["config"]["iterations"] == 3  # --set still overrides the preset's budget
    assert metrics["data"]["resolution"]["loaded"] == [W, H]
    assert metrics["data"]["resolution"]["working"] == metrics["protocol"]["resolution"] == [288, 512]
    assert "data.max_side=512" in metrics["data"]["resolution"]["why"]
    assert metrics["data"]["undistorted_views"] == 12
    assert metrics["test"]["num_views"] == 9
    assert "360x640 loaded -> fitted at 288x512" in out and "12 views undistorted on load" in out
    assert "budget" in out and "3 iterations" in out

    run2 = tmp_path / "run2"  # --config and --set still decide: full resolution, and no "picked" reason
    assert main(["fit", str(capture), "--views", "3", "--out", str(run2), "--quiet", "--config", "generic",
                 "--set", "data.max_side=0", "--set", "optim.iterations=2", "--set", "init.method=random",
                 "--set", "init.random_points=500", "--set", "depth.enabled=false", "--set", "pseudo.enabled=false",
                 "--set", "checkpoint_every=100"]) == 0
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["config"] == {**metrics["config"], "preset": "generic", "reason": "given with --config"}
    assert metrics["data"]["resolution"]["working"] == [W, H]


def test_a_photo_rotated_against_its_transforms_is_refused(tmp_path):
    """A phone JPEG stored landscape with an EXIF rotation, described portrait by transforms.json:
    scaling K by the size ratio would silently fit the wrong camera."""
    from PIL import Image

    from recon.data import load_scene
    from recon.errors import SceneError

    capture = _write_capture(tmp_path / "phone", 3, "nerfstudio")
    path = capture / "images" / "frame_001.png"
    with Image.open(path) as im:
        im.transpose(Image.Transpose.ROTATE_90).save(path)
    with pytest.raises(SceneError, match=r"frame 1 .*image is 640x360 but the transforms give w=360 h=640.*EXIF"):
        load_scene(capture)
