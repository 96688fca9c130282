"""Scene loading: one loader per format, auto-detected, all returning the one ``Scene``
model of recon/types.py (OpenCV cameras, world-to-camera poses, K in pixels).

``load_scene(spec, format=None, **options)``: ``spec`` is a folder or
``builtin:synthetic`` (the embedded procedural scene). Every loader takes
``normalise=True`` (poses returned in a normalised frame recorded in
``Scene.normalisation``; False keeps the file's frame), ``downscale=`` (factor) and
``width=`` (target width; K is rescaled). Format-specific options are listed in each
loader's signature (e.g. LLFF ``images="images_8"``, Blender ``background=``, SpaRe
``light=``).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from recon.errors import ConfigError, SceneError
from recon.types import Scene

from .detect import FORMATS, detect_format

BUILTIN_PREFIX = "builtin:"
_LOADERS = {
    "synthetic": ("recon.data.synthetic", "load_synthetic"),
    "llff": ("recon.data.llff", "load_llff"),
    "dtu": ("recon.data.dtu", "load_dtu"),
    "spare": ("recon.data.spare", "load_spare"),
    "blender": ("recon.data.blender", "load_blender"),
    "nerfstudio": ("recon.data.nerfstudio", "load_nerfstudio"),
    "colmap": ("recon.data.colmap", "load_colmap"),
    "images": ("recon.data.images", "load_images"),
}


def loader_for(format: str):
    if format not in _LOADERS:
        raise SceneError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    module, name = _LOADERS[format]
    return getattr(importlib.import_module(module), name)


def load_scene(spec: str | Path, format: str | None = None, **options) -> Scene:
    """Read a scene. ``format`` forces a loader (else detected); options go to it."""
    options = {k: v for k, v in options.items() if v is not None}
    spec_str = str(spec)
    if spec_str.startswith(BUILTIN_PREFIX):
        name = spec_str[len(BUILTIN_PREFIX):]
        if name != "synthetic":
            raise SceneError(f"unknown built-in scene {spec_str!r}; the built-in scene is builtin:synthetic")
        if format not in (None, "synthetic"):
            raise SceneError(f"--format {format} does not apply to {spec_str}")
        format, root = "synthetic", None
    else:
        root = Path(spec).expanduser()
        if format is None:
            format = detect_format(root)
    loader = loader_for(format)
    params = inspect.signature(loader).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        accepted = [p for p in params if p != "root"]
        raise ConfigError(f"the {format} loader has no option {', '.join(unknown)}; it accepts {', '.join(accepted)}")
    return loader(**options) if root is None else loader(root, **options)


__all__ = ["FORMATS", "detect_format", "load_scene", "loader_for"]
