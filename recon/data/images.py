"""A plain folder of photographs with no poses (``Scene.posed = False``): poses must be
recovered (recon.priors.sfm). Cameras are placeholders with identity poses; their focal
length is the prior that pose recovery refines: from the photos' EXIF when they carry it
(35 mm-equivalent focal length, else focal length and focal-plane resolution), else
COLMAP's default guess of 1.2 x the larger image side; principal point at the centre.
``Scene.meta["intrinsics"]`` says which."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch

from recon.types import Scene, View

from .common import check_same_size, finish_scene, list_images, make_camera, read_image, read_many, require_dir

FOCAL_GUESS = 1.2  # x max(width, height), as COLMAP's default prior
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # the 35 mm-equivalent focal length refers to this diagonal
_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_FOCAL_LENGTH, _FOCAL_35MM = 0x920A, 0xA405
_FOCAL_PLANE_XRES, _FOCAL_PLANE_UNIT = 0xA20E, 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # inch, cm, mm, micrometre


def exif_focal_px(path: Path, width: int, height: int) -> float | None:
    """Focal length in pixels of an image of (width, height) from its EXIF, or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            tags = {**dict(exif), **dict(exif.get_ifd(_EXIF_IFD))}
            stored_long_side = max(im.size)  # the camera's pixels as stored, before any EXIF rotation
    except (OSError, ValueError):
        return None
    f35 = tags.get(_FOCAL_35MM)
    if f35 and float(f35) > 0:
        return float(f35) / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
    f_mm, xres, unit = tags.get(_FOCAL_LENGTH), tags.get(_FOCAL_PLANE_XRES), tags.get(_FOCAL_PLANE_UNIT, 2)
    if f_mm and xres and float(f_mm) > 0 and float(xres) > 0 and int(unit) in _UNIT_MM:
        pixels_per_mm = float(xres) / _UNIT_MM[int(unit)]  # at the resolution the camera wrote
        # square pixels: the scale from the stored image to ours is orientation-free on the long side
        return float(f_mm) * pixels_per_mm * max(width, height) / stored_long_side
    return None


def exif_rotated(path: Path) -> bool:
    """True when the photo's EXIF Orientation asks a viewer to rotate or mirror it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(_ORIENTATION, 1)) not in (0, 1)
    except (OSError, ValueError):
        return False


def load_images(root: Path, *, normalise=True, downscale: float = 1.0, width: int | None = None) -> Scene:
    root = require_dir(root)
    folder = root / "images" if (root / "images").is_dir() else root
    paths = list_images(folder)
    # Phone photos are often stored sideways with an EXIF Orientation tag: fit them upright, as
    # the user sees them (and as portrait and landscape-stored shots of one scene then match).
    arrays = read_many(paths, reader=partial(read_image, exif_orientation=True), desc=f"reading {folder.name}")
    w, h = check_same_size(arrays, paths)
    exif = [f for f in (exif_focal_px(p, w, h) for p in paths) if f is not None]
    if len(exif) == len(paths):
        f, source = float(np.median(exif)), "exif"
    else:
        f, source = FOCAL_GUESS * max(w, h), f"guess ({FOCAL_GUESS} x max side; {len(exif)} of {len(paths)} with EXIF)"
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    views = [
        View(name=p.stem, image=torch.from_numpy(a), camera=make_camera(K, np.eye(4), w, h), path=p)
        for p, a in zip(paths, arrays)
    ]
    rotated = [p.name for p in paths if exif_rotated(p)]
    meta = {"focal_guess": FOCAL_GUESS, "intrinsics": source,
            "exif_orientation": f"applied to {len(rotated)} of {len(paths)} images" + (f" ({', '.join(rotated[:5])}"
                                + (", ..." if len(rotated) > 5 else "") + ")" if rotated else "")}
    return finish_scene(views, format="images", root=root, normalise=False, downscale=downscale, width=width, posed=False, meta=meta)
