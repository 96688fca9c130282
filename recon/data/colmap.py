"""COLMAP sparse models (text or binary, read by pycolmap): ``sparse/0/`` (or ``sparse/``,
or the folder itself) with cameras, images and points3D, and the photographs in
``images/`` (or ``images=`` another folder). Images whose size differs from the COLMAP
camera (e.g. ``images_4``) get K rescaled. Distorted cameras (``SIMPLE_RADIAL``, ``RADIAL``,
``OPENCV``) are undistorted on load (recon/data/undistort.py; ``undistort=False`` keeps the
coefficients in ``Camera.distortion``). The sparse points are kept in ``meta["points"]``
[M, 3] and ``meta["point_colors"]`` [M, 3] (for initialisation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.errors import SceneError
from recon.types import Scene, View

from .common import check_pose, check_same_size, finish_scene, make_camera, read_many, require_dir
from .detect import find_colmap_model
from .undistort import undistort_view

# COLMAP model name -> (fx, fy, cx, cy, k1, k2, p1, p2) from its parameter vector
_MODELS = {
    "SIMPLE_PINHOLE": lambda p: (p[0], p[0], p[1], p[2], 0, 0, 0, 0),
    "PINHOLE": lambda p: (p[0], p[1], p[2], p[3], 0, 0, 0, 0),
    "SIMPLE_RADIAL": lambda p: (p[0], p[0], p[1], p[2], p[3], 0, 0, 0),
    "RADIAL": lambda p: (p[0], p[0], p[1], p[2], p[3], p[4], 0, 0),
    "OPENCV": lambda p: tuple(p[:8]),
}


def camera_intrinsics(camera, where: str) -> tuple[np.ndarray, np.ndarray]:
    """pycolmap camera -> (K [3, 3], distortion [4] k1 k2 p1 p2)."""
    model = camera.model.name
    if model not in _MODELS:
        raise SceneError(f"{where}: COLMAP camera model {model} is not supported; undistort with `colmap image_undistorter` or use one of {', '.join(_MODELS)}")
    fx, fy, cx, cy, *dist = (float(x) for x in _MODELS[model](list(camera.params)))
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), np.array(dist)


def load_colmap(
    root: Path, *, model: str | None = None, images: str = "images", undistort: bool = True, normalise=True,
    downscale: float = 1.0, width: int | None = None,
) -> Scene:
    import pycolmap

    root = require_dir(root)
    model_dir = require_dir(root / model, "COLMAP model folder") if model else find_colmap_model(root)
    if model_dir is None:
        raise SceneError(f"{root}: no COLMAP model (cameras and images .bin/.txt in sparse/0, sparse/ or the folder); pass model=")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError on corrupt files
        raise SceneError(f"cannot read the COLMAP model in {model_dir} ({exc}); re-export it with `colmap model_converter`") from None
    image_dir = require_dir(root / images, "image folder") if (root / images).exists() or images != "images" else root
    entries = sorted(((img.name, img) for img in rec.images.values() if img.has_pose), key=lambda e: e[0])
    if not entries:
        raise SceneError(f"{model_dir}: the model has no registered images")
    paths = [image_dir / name for name, _ in entries]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise SceneError(f"{len(absent)} images of the COLMAP model are missing from {image_dir} (e.g. {absent[0]}); pass images= the folder that holds them")
    arrays = read_many(paths, desc=f"reading {image_dir.name}")
    w, h = check_same_size(arrays, paths)
    views, maps, undistorted = [], {}, 0
    for (name, img), path, arr in zip(entries, paths, arrays):
        cam = rec.cameras[img.camera_id]
        K, dist = camera_intrinsics(cam, f"{model_dir} image {name}")
        cfw = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        T = np.eye(4)
        T[:3] = cfw.matrix()
        check_pose(T, f"{model_dir} image {name}")
        camera = make_camera(K, T, cam.width, cam.height, dist)
        if (cam.width, cam.height) != (w, h):
            camera = camera.scaled(w, h)
        view = View(name=Path(name).stem, image=torch.from_numpy(arr), camera=camera, path=path)
        if undistort and camera.distortion is not None:
            view = undistort_view(view, camera.distortion.double().numpy(), maps)
            undistorted += 1
        views.append(view)
    meta: dict = {"model": str(model_dir.relative_to(root)) if model_dir != root else ".",
                  "undistorted_views": undistorted}
    if rec.num_points3D():
        pts = list(rec.points3D.values())
        meta["points"] = torch.tensor(np.array([p.xyz for p in pts]), dtype=torch.float32)  # [M, 3]
        meta["point_colors"] = torch.tensor(np.array([p.color for p in pts]) / 255.0, dtype=torch.float32)  # [M, 3]
    return finish_scene(views, format="colmap", root=root, normalise=normalise, downscale=downscale, width=width, meta=meta)
