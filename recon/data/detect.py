"""Format detection: which loader reads a folder. The first rule that matches wins; the
order puts exact ground-truth camera files before the approximate ones a folder may also
hold (DTU's cameras_sphere.npz before its COLMAP-made poses_bounds.npy)."""

from __future__ import annotations

from pathlib import Path

from recon.errors import SceneError

from .common import IMAGE_EXTS, require_dir

FORMATS = ("synthetic", "blender", "nerfstudio", "dtu", "llff", "spare", "colmap", "images")


def find_colmap_model(root: Path) -> Path | None:
    """Folder holding cameras.{bin,txt} and images.{bin,txt}: root, sparse/, sparse/0, ..."""
    candidates = [root, root / "sparse", root / "sparse" / "0", root / "colmap" / "sparse" / "0"]
    if (root / "sparse").is_dir():
        candidates += sorted(p for p in (root / "sparse").iterdir() if p.is_dir())
    for c in candidates:
        if any((c / f"cameras.{e}").is_file() for e in ("bin", "txt")) and any((c / f"images.{e}").is_file() for e in ("bin", "txt")):
            return c
    return None


def find_projection_folder(root: Path) -> Path | None:
    """Folder with DTU projection text files pos_XXX.txt: the scene folder, its Cameras/ or
    Calibration/cal18/, or the raw DTU layout's <dtu>/Calibration/cal18 for <dtu>/Rectified/scanN."""
    raw_dtu = root.parent.parent / "Calibration" / "cal18"
    for c in (root, root / "Cameras", root / "cameras", root / "Calibration" / "cal18", root / "cal18", raw_dtu):
        if c.is_dir() and any(c.glob("pos_[0-9][0-9][0-9].txt")):
            return c
    return None


def detect_format(root: Path) -> str:
    """Name of the loader for ``root``; SceneError naming what was looked for."""
    root = require_dir(Path(root))
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / "transforms.json").is_file():
        return "nerfstudio"
    if any((root / n).is_file() for n in ("cameras_sphere.npz", "cameras.npz", "cameras_large.npz")):
        return "dtu"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    if find_projection_folder(root) is not None:
        return "spare"
    if find_colmap_model(root) is not None:
        return "colmap"
    for folder in (root, root / "images"):
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir() if p.is_file()):
            return "images"
    raise SceneError(
        f"{root}: unknown scene format (no transforms*.json, cameras_sphere.npz, poses_bounds.npy, pos_XXX.txt, "
        f"COLMAP sparse model or images); pass --format with one of {', '.join(FORMATS)}"
    )
