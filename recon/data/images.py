"""A plain folder of photographs with no poses (``Scene.posed = False``): poses must be
recovered (recon.priors.sfm). Cameras are placeholders with identity poses; their focal
length is the prior that pose recovery refines: from the photos' EXIF when they carry it
(35 mm-equivalent focal length, else focal length and focal-plane resolution), else
COLMAP's default guess of 1.2 x the larger image side; principal point at the centre.
``Scene.meta["intrinsics"]`` says which."""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PhotoExif:
    """The EXIF tags of one photo (main IFD merged with the Exif IFD), read once per file."""

    tags: dict
    stored_long_side: int  # the camera's pixels as stored, before any EXIF rotation

    def focal_px(self, width: int, height: int) -> float | None:
        """Focal length in pixels of the image at (width, height), or None without the tags."""
        f35 = self.tags.get(_FOCAL_35MM)
        if f35 and float(f35) > 0:
            return float(f35) / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
        f_mm, xres = self.tags.get(_FOCAL_LENGTH), self.tags.get(_FOCAL_PLANE_XRES)
        unit = self.tags.get(_FOCAL_PLANE_UNIT, 2)
        if f_mm and xres and float(f_mm) > 0 and float(xres) > 0 and int(unit) in _UNIT_MM:
            pixels_per_mm = float(xres) / _UNIT_MM[int(unit)]  # at the resolution the camera wrote
            # square pixels: the scale from the stored image to ours is orientation-free on the long side
            return float(f_mm) * pixels_per_mm * max(width, height) / self.stored_long_side
        return None

    @property
    def rotated(self) -> bool:
        """True when the Orientation tag asks a viewer to rotate or mirror the photo."""
        return int(self.tags.get(_ORIENTATION, 1)) not in (0, 1)


def read_exif(path: Path) -> PhotoExif:
    """The photo's EXIF (empty when it has none or it cannot be parsed; the pixels were read already)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            return PhotoExif({**dict(exif), **dict(exif.get_ifd(_EXIF_IFD))}, max(im.size))
    except (OSError, ValueError):
        return PhotoExif({}, 1)


def load_images(root: Path, *, normalise=True, downscale: float = 1.0, width: int | None = None) -> Scene:
    root = require_dir(root)
    folder = root / "images" if (root / "images").is_dir() else root
    paths = list_images(folder)
    # Phone photos are often stored sideways with an EXIF Orientation tag: fit them upright, as
    # the user sees them (and as portrait and landscape-stored shots of one scene then match).
    arrays = read_many(paths, reader=partial(read_image, exif_orientation=True), desc=f"reading {folder.name}")
    w, h = check_same_size(arrays, paths)
    exifs = [read_exif(p) for p in paths]
    focals = [f for f in (e.focal_px(w, h) for e in exifs) if f is not None]
    if len(focals) == len(paths):
        f, source = float(np.median(focals)), "exif"
    else:
        f, source = (
            FOCAL_GUESS * max(w, h),
            f"guess ({FOCAL_GUESS} x max side; {len(focals)} of {len(paths)} with EXIF)",
        )
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    views = [
        View(name=p.stem, image=torch.from_numpy(a), camera=make_camera(K, np.eye(4), w, h), path=p)
        for p, a in zip(paths, arrays)
    ]
    rotated = [p.name for p, e in zip(paths, exifs) if e.rotated]
    meta = {
        "focal_guess": FOCAL_GUESS,
        "intrinsics": source,
        "exif_orientation": f"applied to {len(rotated)} of {len(paths)} images"
        + (f" ({', '.join(rotated[:5])}" + (", ..." if len(rotated) > 5 else "") + ")" if rotated else ""),
    }
    return finish_scene(
        views, format="images", root=root, normalise=False, downscale=downscale, width=width, posed=False, meta=meta
    )
