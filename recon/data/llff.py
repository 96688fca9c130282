"""LLFF forward-facing scenes: ``poses_bounds.npy`` ([N, 17]: a 3x5 matrix per image, then
near/far depth bounds) beside ``images/`` and/or ``images_N/`` folders.

The 3x5 matrix is [R | t | hwf]: camera-to-world with columns (down, right, backwards) in
world coordinates, and (H, W, focal) of the images the poses were computed at. When the
loaded images have another size (``images_8``, or photos resized by hand as in
leaves/orchids) fx and cy/cx scale by width ratio and fy by height ratio.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from recon.errors import SceneError
from recon.types import Scene, View

from .common import check_pose, check_same_size, finish_scene, list_images, make_camera, read_many, require_dir

POSES_FILE = "poses_bounds.npy"


def _folder_width(folder: Path) -> int | None:
    """Width of the first image of a folder (header only), None when it has none."""
    from PIL import Image

    paths = list_images(folder) if any(folder.iterdir()) else []
    if not paths:
        return None
    with Image.open(paths[0]) as im:
        return int(im.size[0])


def image_folder(root: Path, images: str | None = None, width: int | None = None) -> Path:
    """``images`` when given. Else, with a target ``width``, the folder whose images already
    have that width (the official ``images_8`` for the 504-pixel LLFF protocol, rather than
    resizing the full-size photos ourselves), else the smallest one wider than it. Without
    a width: ``images/`` when present, else the smallest ``images_N``."""
    if images is not None:
        return require_dir(root / images, "image folder")
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := re.fullmatch(r"images_(\d+)", p.name))]
    if (root / "images").is_dir():
        found.append((1, root / "images"))
    if not found:
        raise SceneError(f"{root}: no images/ or images_N/ folder beside {POSES_FILE}; add the photographs")
    if width is not None:
        widths = [(w, p) for _, p in found if (w := _folder_width(p)) is not None]
        exact = [p for w, p in widths if w == width]
        if exact:
            return exact[0]
        wider = sorted((w, str(p)) for w, p in widths if w > width)
        if wider:
            return Path(wider[0][1])
    if (root / "images").is_dir():
        return root / "images"
    return max(found)[1]


def read_poses_bounds(path: Path) -> np.ndarray:
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot read {path} ({exc}); it must be a numpy [N, 17] array") from None
    if data.ndim != 2 or data.shape[1] != 17:
        raise SceneError(f"{path} has shape {list(data.shape)}, expected [N, 17] (3x5 pose + near/far per image)")
    return data.astype(np.float64)


def llff_to_opencv(pose_3x5: np.ndarray) -> np.ndarray:
    """[3, 5] LLFF camera-to-world (columns down, right, backwards) -> [4, 4] T_cam_world (OpenCV)."""
    down, right, back, centre = pose_3x5[:, 0], pose_3x5[:, 1], pose_3x5[:, 2], pose_3x5[:, 3]
    R_world_cam = np.stack([right, down, -back], axis=1)  # OpenCV x right, y down, z forward
    T = np.eye(4)
    T[:3, :3] = R_world_cam.T
    T[:3, 3] = -R_world_cam.T @ centre
    return T


def opencv_to_llff(T_cam_world: np.ndarray, hwf: tuple[float, float, float]) -> np.ndarray:
    """Inverse of :func:`llff_to_opencv`: [4, 4] -> [3, 5] with the given (H, W, focal)."""
    R_world_cam = T_cam_world[:3, :3].T
    centre = -R_world_cam @ T_cam_world[:3, 3]
    right, down, forward = R_world_cam[:, 0], R_world_cam[:, 1], R_world_cam[:, 2]
    return np.stack([down, right, -forward, centre, np.asarray(hwf, dtype=np.float64)], axis=1)


def load_llff(
    root: Path, *, images: str | None = None, normalise=True, downscale: float = 1.0, width: int | None = None
) -> Scene:
    root = require_dir(root)
    data = read_poses_bounds(root / POSES_FILE)
    folder = image_folder(root, images, width)
    paths = list_images(folder)
    if len(paths) != len(data):
        raise SceneError(
            f"{folder} has {len(paths)} images but {root / POSES_FILE} has {len(data)} poses; "
            "the folder must hold exactly the posed images (remove extras or use the matching images_N folder)"
        )
    arrays = read_many(paths, desc=f"reading {folder.name}")
    w_img, h_img = check_same_size(arrays, paths)
    views = []
    for i, (path, arr) in enumerate(zip(paths, arrays)):
        pose = data[i, :15].reshape(3, 5)
        h_pose, w_pose, focal = pose[:, 4]
        if not np.isfinite(pose).all():
            raise SceneError(f"{root / POSES_FILE} row {i} ({path.name}): pose contains NaN or inf; fix or remove it")
        sx, sy = w_img / w_pose, h_img / h_pose
        if abs(sx / sy - 1.0) > 0.02:
            raise SceneError(
                f"{path.name} is {w_img}x{h_img} but {POSES_FILE} says {w_pose:.0f}x{h_pose:.0f}: the aspect ratio differs, "
                "so the intrinsics cannot be rescaled; use images with the pose file's aspect ratio"
            )
        T = llff_to_opencv(pose)
        check_pose(T, f"{root / POSES_FILE} row {i} ({path.name})")
        K = np.array([[focal * sx, 0, w_img / 2], [0, focal * sy, h_img / 2], [0, 0, 1]])
        views.append(View(name=path.stem, image=torch.from_numpy(arr), camera=make_camera(K, T, w_img, h_img), path=path))
    bounds = data[:, 15:17]
    meta = {
        "bounds": [float(bounds.min()), float(bounds.max())],
        "images_folder": folder.name,
        "pose_file_size": [int(data[0, 9]), int(data[0, 4])],  # [W, H] of the pose file
    }
    return finish_scene(views, format="llff", root=root, normalise=normalise, downscale=downscale, width=width, meta=meta)
