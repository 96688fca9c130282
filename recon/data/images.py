"""A plain folder of photographs with no poses (``Scene.posed = False``): poses must be
recovered (recon.priors.sfm). Cameras are placeholders: identity pose and COLMAP's default
focal guess of 1.2 x the larger image side, principal point at the centre."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.types import Scene, View

from .common import check_same_size, finish_scene, list_images, make_camera, read_many, require_dir

FOCAL_GUESS = 1.2  # x max(width, height), as COLMAP's default prior


def load_images(root: Path, *, normalise=True, downscale: float = 1.0, width: int | None = None) -> Scene:
    root = require_dir(root)
    folder = root / "images" if (root / "images").is_dir() else root
    paths = list_images(folder)
    arrays = read_many(paths, desc=f"reading {folder.name}")
    w, h = check_same_size(arrays, paths)
    f = FOCAL_GUESS * max(w, h)
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    views = [
        View(name=p.stem, image=torch.from_numpy(a), camera=make_camera(K, np.eye(4), w, h), path=p)
        for p, a in zip(paths, arrays)
    ]
    meta = {"focal_guess": FOCAL_GUESS}
    return finish_scene(views, format="images", root=root, normalise=False, downscale=downscale, width=width, posed=False, meta=meta)
