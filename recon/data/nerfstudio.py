"""nerfstudio / instant-ngp ``transforms.json``: OpenGL camera-to-world
``transform_matrix`` per frame; intrinsics shared at the top level or per frame
(``fl_x, fl_y, cx, cy, w, h``; instant-ngp may give ``camera_angle_x``/``_y`` instead);
OpenCV distortion ``k1, k2, p1, p2`` (and ``k3``): the images are undistorted on load
(recon/data/undistort.py; ``undistort=False`` keeps them and the coefficients in
``Camera.distortion``); optional ``mask_path`` and ``depth_file_path`` (scaled by
``depth_unit_scale_factor``, default 1e-3 as nerfstudio: millimetres)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from recon.errors import SceneError
from recon.types import Scene, View

from .blender import frame_image_path, read_json
from .common import (
    c2w_opengl_to_w2c_opencv,
    check_pose,
    check_same_size,
    finish_scene,
    make_camera,
    read_gray,
    read_image,
    read_many,
    require_dir,
)
from .undistort import undistort_view

SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", None)


def _intrinsics(frame: dict, top: dict, w: int, h: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    get = lambda k: frame.get(k, top.get(k))  # noqa: E731 - per-frame value overrides the shared one
    model = get("camera_model")
    if model not in SUPPORTED_MODELS:
        raise SceneError(f"{where}: camera_model {model} is not supported (use OPENCV/PINHOLE images, or undistort them first)")
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * float(get("camera_angle_x")))
    if fy is None and get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * float(get("camera_angle_y")))
    if fx is None and fy is None:
        raise SceneError(f"{where}: no focal length (fl_x/fl_y or camera_angle_x) for this frame or at the top level")
    fx, fy = float(fx if fx is not None else fy), float(fy if fy is not None else fx)
    cx, cy = get("cx"), get("cy")
    cx = float(cx) if cx is not None else w / 2
    cy = float(cy) if cy is not None else h / 2
    file_w, file_h = get("w"), get("h")
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    if file_w and file_h and (int(file_w), int(file_h)) != (w, h):  # images downscaled after capture
        if abs((w / float(file_w)) / (h / float(file_h)) - 1) > 0.02:  # not a downscale: K cannot follow
            raise SceneError(f"{where}: the image is {w}x{h} but the transforms give w={file_w} h={file_h}, another "
                             f"shape (a rotated photo? EXIF orientation is not applied on load); rotate the image "
                             f"files to the size the transforms describe")
        K[0] *= w / float(file_w)
        K[1] *= h / float(file_h)
    dist = np.array([float(get(k) or 0.0) for k in ("k1", "k2", "p1", "p2", "k3")])  # OpenCV order
    return K, dist


def load_nerfstudio(
    root: Path, *, transforms: str = "transforms.json", undistort: bool = True, normalise=True, downscale: float = 1.0,
    width: int | None = None,
) -> Scene:
    root = require_dir(root)
    meta_path = root / transforms
    top = read_json(meta_path)
    frames = top.get("frames")
    if not frames:
        raise SceneError(f"{meta_path} has no 'frames'; it is not a nerfstudio/instant-ngp transforms file")
    paths, c2ws = [], []
    for k, frame in enumerate(frames):
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise SceneError(f"{meta_path} frame {k}: needs file_path and transform_matrix")
        path = frame_image_path(root, frame["file_path"])
        if path is None:
            raise SceneError(f"{meta_path} frame {k}: image {frame['file_path']} does not exist; fix file_path or remove the frame")
        paths.append(path)
        c2ws.append(np.asarray(frame["transform_matrix"], dtype=np.float64))
    maps: dict = {}  # remap tables shared by frames with one camera

    def read_frame(k: int) -> tuple[View, bool]:
        """Frame k read, checked and (with ``undistort``) undistorted in one go, on a reader
        thread, so only one full-size copy of each photograph is alive at a time.
        -> (view, whether it was undistorted)."""
        frame, path = frames[k], paths[k]
        where = f"{meta_path} frame {k} ({path.name})"
        arr = read_image(path)
        h, w = arr.shape[:2]
        c2w = c2ws[k]
        if c2w.shape not in ((4, 4), (3, 4)):
            raise SceneError(f"{where}: transform_matrix has shape {list(c2w.shape)}, expected 4x4")
        T = c2w_opengl_to_w2c_opencv(c2w)
        check_pose(T, where)
        K, dist = _intrinsics(frame, top, w, h, where)
        mask = depth = None
        if frame.get("mask_path"):
            m = read_gray(root / frame["mask_path"])
            mask = torch.from_numpy(m >= 0.5)
        if frame.get("depth_file_path"):
            depth = torch.from_numpy(_read_depth(root / frame["depth_file_path"], float(top.get("depth_unit_scale_factor", 1e-3))))
        if not undistort and dist[4] != 0:
            raise SceneError(f"{where}: k3 is set, but undistort=False keeps only k1 k2 p1 p2; undistort on load "
                             f"(the default) or drop k3")
        view = View(name=path.stem, image=torch.from_numpy(arr), camera=make_camera(K, T, w, h, dist[:4]), mask=mask,
                    depth=depth, path=path)
        if undistort and np.any(dist != 0):
            return undistort_view(view, dist, maps), True
        return view, False

    read = read_many(list(range(len(frames))), reader=read_frame, desc="reading images")
    views = [view for view, _ in read]
    check_same_size([v.image for v in views], paths)
    undistorted = sum(done for _, done in read)
    meta = {"transforms": transforms, "undistorted_views": undistorted}
    return finish_scene(views, format="nerfstudio", root=root, normalise=normalise, downscale=downscale, width=width,
                        meta=meta)


def _read_depth(path: Path, unit: float) -> np.ndarray:
    """16-bit PNG (or .npy) depth -> [H, W] float32 in scene units."""
    from PIL import Image

    try:
        if path.suffix == ".npy":
            return np.load(path).astype(np.float32)
        with Image.open(path) as im:
            return np.asarray(im, dtype=np.float32) * unit
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot read depth {path} ({exc})") from None
