"""DTU/SpaRe projection-matrix scenes: ``pos_XXX.txt`` (3x4 P = K [R | t], one per camera,
in the folder, ``Cameras/`` or ``Calibration/cal18/``) and images
``rect_XXX_{light}_r5000.png`` (DTU Rectified) or ``cam_XXX_{light}_0000.png``; view i is
camera i + 1 (``XXX = i + 1``), lighting index ``light`` (default 3, as RegNeRF).
A SpaRe split file ``Track{1,2}_split_*.json`` (scene name -> input_views, test_views,
dataset) beside or above the folder, or ``split_file=``, is kept in
``meta["spare_split"]`` for the ``spare`` protocol."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from recon.errors import SceneError
from recon.types import Scene, View

from .common import check_pose, check_same_size, finish_scene, make_camera, read_many, require_dir
from .detect import find_projection_folder
from .dtu import decompose_projection

_PATTERNS = (r"rect_(\d{3})_{light}_r5000\.png", r"cam_(\d{3})_{light}_0000\.png")


def read_projection(path: Path) -> np.ndarray:
    try:
        P = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise SceneError(f"cannot read {path} ({exc}); it must hold a 3x4 projection matrix") from None
    if P.shape != (3, 4):
        raise SceneError(f"{path} holds a {'x'.join(map(str, P.shape))} matrix, expected 3x4 (K [R | t])")
    return P


def _find_images(root: Path, light: int) -> list[tuple[int, Path]]:
    """(camera number, path) sorted by camera, for the chosen lighting."""
    for folder in (root, root / "image", root / "images", root / "Rectified"):
        if not folder.is_dir():
            continue
        for pattern in _PATTERNS:
            rx = re.compile(pattern.replace("{light}", str(int(light))))
            found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := rx.fullmatch(p.name)))
            if found:
                return found
    raise SceneError(
        f"{root}: no images rect_XXX_{light}_r5000.png or cam_XXX_{light}_0000.png for light={light}; "
        "check the folder or pass light= (0..6)"
    )


def find_split_file(root: Path) -> Path | None:
    for folder in (root, root.parent):
        hits = sorted(folder.glob("Track*_split*.json"))
        if hits:
            return hits[0]
    return None


def load_spare(
    root: Path, *, light: int = 3, split_file: str | Path | None = None, normalise=True, downscale: float = 1.0, width: int | None = None
) -> Scene:
    from .splits import read_spare_split

    root = require_dir(root)
    cam_dir = find_projection_folder(root)
    if cam_dir is None:
        raise SceneError(f"{root}: no pos_XXX.txt projection files (in the folder, Cameras/ or Calibration/cal18/)")
    found = _find_images(root, light)
    paths = [p for _, p in found]
    arrays = read_many(paths, desc="reading images")
    w, h = check_same_size(arrays, paths)
    views = []
    for (number, path), arr in zip(found, arrays):
        pos = cam_dir / f"pos_{number:03d}.txt"
        if not pos.is_file():
            raise SceneError(f"{path.name} has no projection file {pos}; every camera needs its pos_XXX.txt")
        K, T = decompose_projection(read_projection(pos), str(pos))
        check_pose(T, str(pos))
        views.append(View(name=path.stem, image=torch.from_numpy(arr), camera=make_camera(K, T, w, h), path=path))
    meta: dict = {"light": light, "cameras": [n for n, _ in found]}
    split_path = Path(split_file) if split_file else find_split_file(root)
    if split_path is not None:
        data = read_spare_split(split_path)
        if root.name in data:
            meta["spare_split"] = data[root.name]
            meta["spare_split_file"] = str(split_path)
        elif split_file:
            raise SceneError(f"split file {split_file} has no entry for scene {root.name!r}")
    return finish_scene(views, format="spare", root=root, normalise=normalise, downscale=downscale, width=width, meta=meta)
