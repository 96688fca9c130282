"""Camera paths through the input cameras, rendered to an MP4 or GIF.

* ``orbit``: a circle around the point the input cameras look at, at their mean height
  and distance, about the scene's up axis (object-centric captures: DTU, Blender).
* ``spiral``: the LLFF-style spiral around the mean input camera, looking at the focus
  depth (forward-facing captures: LLFF).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recon.errors import ConfigError, SceneError
from recon.geometry import axes_meeting_point, invert_pose, look_at
from recon.types import Camera, Gaussians, RenderSettings
from recon.view.scene import RenderFn, default_render_fn, orbit_axis, scene_up

PATH_KINDS = ("orbit", "spiral")
VIDEO_SUFFIXES = (".mp4", ".gif")


def _poses(cameras: Sequence[Camera]) -> np.ndarray:
    return np.stack([invert_pose(c.T_cam_world.double()).numpy() for c in cameras])  # [V, 4, 4]


def focus_point(cameras: Sequence[Camera]) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis: what an
    object-centric capture looks at, and how far ahead a forward-facing spiral looks. [3]
    Only exactly parallel axes (or a point behind every camera) fall back to a point ahead
    of the mean camera: nearly parallel LLFF axes still give the focus depth."""
    T = _poses(cameras)
    origins, dirs = T[:, :3, 3], T[:, :3, 2]  # [V, 3], [V, 3] unit forward axes
    point = axes_meeting_point(torch.from_numpy(origins), torch.from_numpy(dirs), min_spread=1e-9, min_in_front=0.0)
    if point is None:  # (near-)parallel axes: look ahead of the mean camera
        return origins.mean(0) + dirs.mean(0)
    return point.numpy()


def _camera_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray, template: Camera) -> Camera:
    T_cam_world = look_at(torch.as_tensor(eye), torch.as_tensor(target), torch.as_tensor(up))
    return Camera(K=template.K.clone(), T_cam_world=T_cam_world.float(),
                  width=template.width, height=template.height)


def azimuth_range(azimuths: np.ndarray, full_circle_gap: float = math.radians(60)) -> tuple[float, float]:
    """The arc (start, end) radians, end > start, covering every azimuth: the circle minus
    its largest empty gap. Returns a full turn when no gap exceeds ``full_circle_gap``."""
    a = np.sort(np.mod(azimuths, 2 * math.pi))
    gaps = np.diff(np.append(a, a[0] + 2 * math.pi))  # gap after each azimuth
    i = int(np.argmax(gaps))
    if gaps[i] < full_circle_gap:
        return float(a[0]), float(a[0] + 2 * math.pi)
    start = float(a[(i + 1) % len(a)])
    return start, start + 2 * math.pi - float(gaps[i])


def orbit_path(cameras: Sequence[Camera], n_frames: int, pad: float = 0.15) -> list[Camera]:
    """An arc about the up axis through the focus point, at the cameras' mean distance and
    height, sweeping the input cameras' azimuths (plus ``pad`` of the arc each side) and
    back: sparse captures only reconstruct what their cameras saw. Inputs all around the
    object get a full circle."""
    target = focus_point(cameras)
    up = orbit_axis(cameras)
    centres = _poses(cameras)[:, :3, 3] - target  # [V, 3]
    height = float((centres @ up).mean())
    flat = centres - np.outer(centres @ up, up)  # [V, 3] components in the orbit plane
    radius = float(np.linalg.norm(flat, axis=1).mean())
    e1 = flat[0] / max(np.linalg.norm(flat[0]), 1e-9)
    e2 = np.cross(up, e1)
    start, end = azimuth_range(np.arctan2(flat @ e2, flat @ e1))
    if end - start >= 2 * math.pi - 1e-9:
        angles = start + np.linspace(0.0, 2 * math.pi, n_frames, endpoint=False)
    else:
        span = max(end - start, math.radians(20))  # a single view still sways a little
        lo, hi = start - pad * span, start + (1 + pad) * span
        t = np.linspace(0.0, 1.0, n_frames, endpoint=False)
        angles = lo + (hi - lo) * (1 - np.cos(2 * math.pi * t)) / 2  # there and back, eased
    path = []
    for theta in angles:
        eye = target + up * height + radius * (math.cos(theta) * e1 + math.sin(theta) * e2)
        path.append(_camera_at(eye, target, up, cameras[0]))
    return path


def spiral_path(cameras: Sequence[Camera], n_frames: int, focus_depth: float | None = None,
                rotations: float = 2.0) -> list[Camera]:
    """LLFF-style spiral: offsets of up to the 90th percentile of the cameras' spread around
    their mean pose, looking at a point ``focus_depth`` ahead of it."""
    T = _poses(cameras)
    centre = T[:, :3, 3].mean(0)
    forward = T[:, :3, 2].mean(0)
    forward /= np.linalg.norm(forward)
    up = scene_up(cameras)
    right = np.cross(forward, up)  # OpenCV: x = z cross (-y)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)  # OpenCV: x right, y down, z forward
    if focus_depth is None:
        focus_depth = float(np.linalg.norm(focus_point(cameras) - centre)) or 1.0
    offsets = T[:, :3, 3] - centre
    spread = np.percentile(np.abs(offsets @ np.stack([right, down, forward], 1)), 90, axis=0)
    spread = np.maximum(spread, 1e-3 * focus_depth)  # a single camera still moves a little
    target = centre + forward * focus_depth
    path = []
    for t in np.linspace(0.0, 2 * math.pi * rotations, n_frames, endpoint=False):
        eye = centre + spread[0] * math.cos(t) * right + spread[1] * math.sin(t) * down \
            + spread[2] * math.sin(0.5 * t) * forward
        path.append(_camera_at(eye, target, -down, cameras[0]))
    return path


def camera_path(kind: str, cameras: Sequence[Camera], n_frames: int) -> list[Camera]:
    if not cameras:
        raise SceneError("a camera path needs the input cameras; the run has no cameras.json")
    if n_frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {n_frames}")
    if kind == "orbit":
        return orbit_path(cameras, n_frames)
    if kind == "spiral":
        return spiral_path(cameras, n_frames)
    raise ConfigError(f"--path {kind!r} is not one of {', '.join(PATH_KINDS)}")


def _video_size(camera: Camera, max_side: int) -> tuple[int, int]:
    """Even sizes (H.264's 4:2:0 chroma needs them), at most ``max_side`` pixels."""
    scale = min(1.0, max_side / max(camera.width, camera.height))
    w = max(2, int(camera.width * scale) // 2 * 2)
    h = max(2, int(camera.height * scale) // 2 * 2)
    return w, h


def render_path(
    gaussians: Gaussians,
    path: Sequence[Camera],
    out: str | Path,
    *,
    fps: int = 30,
    max_side: int = 480,
    settings: RenderSettings = RenderSettings(),
    render_fn: RenderFn | None = None,
    progress: bool = True,
) -> Path:
    """Renders each camera of ``path`` and writes ``out`` (.mp4 or .gif). Returns ``out``."""
    out = Path(out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"{out}: the path video must end in .mp4 or .gif")
    if not path:
        raise ConfigError("the camera path is empty; ask for at least one frame")
    render_fn = render_fn or default_render_fn
    w, h = _video_size(path[0], max_side)
    frames = []
    from recon.progress import track

    with torch.no_grad():
        for cam in track(path, f"rendering {out.name}", enabled=progress):
            rgb = render_fn(gaussians, [cam.scaled(w, h)], settings).rgb[0]  # [H, W, 3]
            frames.append((rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_video(out, frames, fps)
    return out


def _write_video(out: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    if out.suffix.lower() == ".gif":
        # Pillow's GIF writer takes the frame duration in milliseconds.
        imageio.mimsave(out, frames, duration=1000.0 / fps, loop=0)
        return
    try:
        writer = imageio.get_writer(out, fps=fps, codec="libx264", quality=8,
                                    macro_block_size=2, pixelformat="yuv420p")
    except (ImportError, ValueError, RuntimeError) as exc:
        from recon.errors import MissingDependencyError

        raise MissingDependencyError(
            f"cannot write {out}: no ffmpeg for imageio ({exc}); pip install imageio-ffmpeg "
            "or ask for a .gif") from exc
    with writer:
        for frame in frames:
            writer.append_data(frame)
