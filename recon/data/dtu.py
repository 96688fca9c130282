"""DTU in the IDR/NeuS layout: ``cameras_sphere.npz`` (``world_mat_i`` = K [R | t] as a 4x4
projection for image i, ``scale_mat_i`` mapping the unit sphere around the object to world
coordinates), images in ``image/`` (or ``images/``, ``images_N/``) and masks in ``mask/``
(or ``mask_N/``), threshold 128.

The projection matrices are for the full-resolution images; an ``images_N`` folder means
1/N resolution (K's first two rows divided by N), which is checked against the principal
point. With ``normalise=True`` the scene normalisation is the file's own ``scale_mat``
(object inside the unit sphere), recorded in ``Scene.normalisation``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from recon.errors import SceneError
from recon.types import Normalisation, Scene, View

from .common import (
    check_pose,
    check_same_size,
    finish_scene,
    list_images,
    make_camera,
    read_gray,
    read_many,
    require_dir,
)

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz", "cameras_large.npz")


def decompose_projection(P: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """[3, 4] projection K [R | t] (any scale) -> (K [3, 3] with K[2,2] = 1, T_cam_world [4, 4])."""
    if not np.isfinite(P).all():
        raise SceneError(f"{where}: projection matrix contains NaN or inf; fix or remove this camera")
    M = P[:, :3]
    if abs(np.linalg.det(M)) < 1e-12:
        raise SceneError(f"{where}: projection matrix is singular; it is not K [R | t]")
    K, R = scipy.linalg.rq(M)
    D = np.diag(np.sign(np.diag(K)))  # make K's diagonal positive
    K, R = K @ D, D @ R
    scale = 1.0
    if np.linalg.det(R) < 0:  # P is defined up to scale: -P gives a proper rotation
        R, scale = -R, -1.0
    t = np.linalg.solve(K, scale * P[:, 3])
    K = K / K[2, 2]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return K, T


def _find_folder(root: Path, stems: tuple[str, ...]) -> tuple[Path | None, int]:
    """First of ``stem``/ or ``stem_N``/; returns (folder, N) with N = 1 without suffix."""
    for stem in stems:
        if (root / stem).is_dir():
            return root / stem, 1
    for stem in stems:
        for p in sorted(root.iterdir()):
            m = re.fullmatch(rf"{stem}_(\d+)", p.name)
            if p.is_dir() and m:
                return p, int(m.group(1))
    return None, 1


def load_dtu(
    root: Path,
    *,
    cameras: str | None = None,
    images: str | None = None,
    image_factor: float | None = None,
    normalise=True,
    downscale: float = 1.0,
    width: int | None = None,
) -> Scene:
    """``image_factor`` overrides how much smaller the images are than the resolution the
    projection matrices were made for (default: N of ``images_N``, else 1)."""
    root = require_dir(root)
    cam_path = root / cameras if cameras else next((root / c for c in CAMERA_FILES if (root / c).is_file()), None)
    if cam_path is None or not cam_path.is_file():
        raise SceneError(f"{root}: no {' or '.join(CAMERA_FILES)}; an IDR/NeuS DTU scene needs its camera file")
    try:
        cams = dict(np.load(cam_path))
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot read {cam_path} ({exc})") from None
    if images:
        folder = require_dir(root / images, "image folder")
        m = re.fullmatch(r".*_(\d+)", images.rstrip("/"))
        factor = int(m.group(1)) if m else 1
    else:
        folder, factor = _find_folder(root, ("image", "images"))
        if folder is None:
            raise SceneError(f"{root}: no image/ or images_N/ folder beside {cam_path.name}")
    factor = float(image_factor) if image_factor else float(factor)
    paths = list_images(folder)
    n_cams = sum(1 for k in cams if k.startswith("world_mat_") and not k.startswith("world_mat_inv"))
    if n_cams != len(paths):
        raise SceneError(f"{folder} has {len(paths)} images but {cam_path.name} has {n_cams} world_mat_i entries; they must match one to one")
    arrays = read_many(paths, desc=f"reading {folder.name}")
    w, h = check_same_size(arrays, paths)
    masks = _read_masks(root, len(paths), (w, h))

    views = []
    for i, (path, arr) in enumerate(zip(paths, arrays)):
        key = f"world_mat_{i}"
        if key not in cams:
            raise SceneError(f"{cam_path} lacks {key} (for {path.name}); cameras must be numbered 0..{len(paths) - 1}")
        K, T = decompose_projection(cams[key][:3, :4].astype(np.float64), f"{cam_path.name}:{key}")
        check_pose(T, f"{cam_path.name}:{key}")
        K[:2] /= factor
        if not (0.2 * w < K[0, 2] < 0.8 * w and 0.2 * h < K[1, 2] < 0.8 * h):
            raise SceneError(
                f"{cam_path.name}:{key}: principal point ({K[0, 2]:.0f}, {K[1, 2]:.0f}) is outside the {w}x{h} image "
                f"after dividing by {factor:g}; pass image_factor= (full-resolution width / {w})"
            )
        views.append(View(name=path.stem, image=torch.from_numpy(arr), camera=make_camera(K, T, w, h), mask=masks[i] if masks else None, path=path))

    norm = normalise
    if normalise is True and "scale_mat_0" in cams:
        S = cams["scale_mat_0"].astype(np.float64)
        norm = Normalisation(centre=tuple(float(c) for c in S[:3, 3]), scale=float(1.0 / S[0, 0]))
    meta = {"camera_file": cam_path.name, "images_folder": folder.name, "image_factor": factor}
    return finish_scene(views, format="dtu", root=root, normalise=norm, downscale=downscale, width=width, meta=meta)


def _read_masks(root: Path, n: int, size: tuple[int, int]) -> list[torch.Tensor] | None:
    folder, _ = _find_folder(root, ("mask", "masks"))
    if folder is None:
        return None
    paths = list_images(folder)
    if len(paths) != n:
        raise SceneError(f"{folder} has {len(paths)} masks for {n} images; provide one mask per image or remove the folder")
    out = []
    for path, m in zip(paths, read_many(paths, reader=read_gray, desc=f"reading {folder.name}")):
        if (m.shape[1], m.shape[0]) != size:
            raise SceneError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but the images are {size[0]}x{size[1]}; use masks of the image size")
        out.append(torch.from_numpy(m >= 0.5))  # threshold 128 of 255
    return out
