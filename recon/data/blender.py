"""NeRF-synthetic (Blender) scenes: ``transforms_{train,val,test}.json`` with
``camera_angle_x`` and per-frame OpenGL camera-to-world ``transform_matrix``; RGBA images
composited on ``background`` (default white, as DietNeRF/FreeNeRF), alpha > 0.5 as mask.

Views are the chosen sets in order (train first, then test); ``Scene.split`` records the
format's own train/test indices. Frames whose image is absent are skipped and listed in
``meta["missing"]`` (the shared lego copy keeps only every 8th test image); a set with
no image at all is an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from recon.errors import SceneError
from recon.types import Scene, Split, View

from .common import (
    IMAGE_EXTS,
    c2w_opengl_to_w2c_opencv,
    check_pose,
    check_same_size,
    finish_scene,
    make_camera,
    read_image,
    read_many,
    require_dir,
)

SETS = ("train", "val", "test")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SceneError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot parse {path} ({exc}); it must be valid JSON") from None


def frame_image_path(root: Path, file_path: str) -> Path | None:
    """Resolve a frame's ``file_path`` (often without extension) to an existing file."""
    p = (root / file_path).resolve() if not Path(file_path).is_absolute() else Path(file_path)
    if p.suffix.lower() in IMAGE_EXTS:
        return p if p.is_file() else None
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
    return None


def load_blender(
    root: Path,
    *,
    sets: tuple[str, ...] = ("train", "test"),
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    normalise=True,
    downscale: float = 1.0,
    width: int | None = None,
) -> Scene:
    root = require_dir(root)
    entries, missing = _collect_frames(root, sets)
    paths = [e[1] for e in entries]
    arrays = read_many(paths, reader=lambda p: read_image(p, keep_alpha=True), desc="reading Blender images")
    w, h = check_same_size(arrays, paths)
    bg = np.asarray(background, dtype=np.float32)
    views = []
    for (set_name, path, c2w, angle_x), rgba in zip(entries, arrays):
        T = c2w_opengl_to_w2c_opencv(c2w)
        check_pose(T, f"{root / f'transforms_{set_name}.json'} ({path.name})")
        f = 0.5 * w / math.tan(0.5 * angle_x)
        K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
        alpha = rgba[..., 3:4]
        rgb = rgba[..., :3] * alpha + bg * (1 - alpha)  # [H, W, 3] composited
        views.append(
            View(
                name=f"{set_name}_{path.stem}",  # r_0 exists in train and test: keep names unique
                image=torch.from_numpy(rgb.astype(np.float32)),
                camera=make_camera(K, T, w, h),
                mask=torch.from_numpy(alpha[..., 0] > 0.5),
                path=path,
            )
        )
    set_of = [e[0] for e in entries]
    split = Split(
        train=tuple(i for i, s in enumerate(set_of) if s == "train"),
        test=tuple(i for i, s in enumerate(set_of) if s == "test"),
        protocol="blender",
        description="the scene's own transforms_train / transforms_test sets",
    )
    meta = {"sets": set_of, "missing": missing}
    return finish_scene(
        views, format="blender", root=root, normalise=normalise, downscale=downscale, width=width,
        split=split, background=tuple(float(b) for b in background), meta=meta,
    )


def _collect_frames(root: Path, sets: tuple[str, ...]) -> tuple[list[tuple[str, Path, np.ndarray, float]], list[str]]:
    """(set, image path, c2w [4, 4], camera_angle_x) per frame whose image exists, and the
    frames that were skipped because their image is absent."""
    entries: list[tuple[str, Path, np.ndarray, float]] = []  # (set, image, c2w, camera_angle_x)
    missing: list[str] = []
    for name in sets:
        if name not in SETS:
            raise SceneError(f"unknown Blender set {name!r}; use some of {', '.join(SETS)}")
        meta_path = root / f"transforms_{name}.json"
        if not meta_path.is_file():
            if name == "val":
                continue
            raise SceneError(f"{meta_path} does not exist; a Blender scene needs transforms_train.json and transforms_test.json")
        meta = read_json(meta_path)
        if "camera_angle_x" not in meta or "frames" not in meta:
            raise SceneError(f"{meta_path} lacks 'camera_angle_x' or 'frames'; it is not a Blender transforms file")
        found = 0
        for k, frame in enumerate(meta["frames"]):
            try:
                file_path, c2w = frame["file_path"], np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise SceneError(f"{meta_path} frame {k}: missing or bad key ({exc}); each frame needs file_path and a 4x4 transform_matrix") from None
            path = frame_image_path(root, file_path)
            if path is None:
                missing.append(f"{name}:{file_path}")
                continue
            if c2w.shape != (4, 4):
                raise SceneError(f"{meta_path} frame {k} ({file_path}): transform_matrix has shape {list(c2w.shape)}, expected 4x4")
            entries.append((name, path, c2w, float(meta["camera_angle_x"])))
            found += 1
        if found == 0:
            raise SceneError(f"{meta_path}: none of the {len(meta['frames'])} frame images exist; check the file_path entries")
    return entries, missing
