"""How a fit read its scene, as a record: `recon fit` loads through it and writes it into
``scene.json``, so `recon eval` re-reads the ground truth exactly as the fit saw it (same
loader, image folder, width, size cap) instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from recon.types import Scene


@dataclass(frozen=True)
class LoaderOptions:
    format: str | None = None  # forced loader, None = detected
    options: dict = field(default_factory=dict)  # loader keyword options (width, images, downscale, ...)
    max_side: int = 0  # > 0: images larger than this on their long side are resized after loading

    @classmethod
    def from_data_config(cls, data) -> LoaderOptions:
        """From a fit config's ``data`` section (``format``, ``options``, ``width``, ``max_side``)."""
        options = dict(data.options)
        if data.width:
            options["width"] = data.width
        return cls(format=data.format, options=options, max_side=int(data.max_side or 0))

    @classmethod
    def from_record(cls, record: dict) -> LoaderOptions:
        return cls(format=record.get("format"), options=dict(record.get("options") or {}),
                   max_side=int(record.get("max_side") or 0))

    def to_record(self) -> dict:
        return {"format": self.format, "options": dict(self.options), "max_side": self.max_side}


def load_with_options(spec: str | Path, opts: LoaderOptions) -> Scene:
    """``load_scene(spec, format, **options)``, then the ``max_side`` cap (aspect kept)."""
    from recon.data import load_scene
    from recon.data.common import resize_view

    scene = load_scene(str(spec), format=opts.format, **opts.options)
    v0 = scene.views[0]
    loaded = [v0.width, v0.height]
    if opts.max_side > 0:
        s = opts.max_side / max(v0.width, v0.height)
        if s < 1:
            w, h = max(1, round(v0.width * s)), max(1, round(v0.height * s))
            scene = replace(scene, views=tuple(resize_view(v, w, h) for v in scene.views))
    working = [scene.views[0].width, scene.views[0].height]
    return replace(scene, meta={**scene.meta, "resolution": resolution_record(loaded, working, opts)})


def resolution_record(loaded: list[int], working: list[int], opts: LoaderOptions) -> dict:
    """metrics.json's ``data.resolution``: the size the loader produced (the capture's own size,
    unless a loader option such as ``width`` or ``downscale`` already resized it), the size the
    fit works at, and which setting decided it."""
    if working != loaded:
        why = f"longer side capped at data.max_side={opts.max_side}, aspect kept"
    elif opts.max_side > 0:
        why = f"within data.max_side={opts.max_side}, kept"
    else:
        why = "data.max_side=0, kept"
    if opts.options.get("width") or opts.options.get("downscale", 1.0) != 1.0:
        sized = {k: opts.options[k] for k in ("width", "downscale") if k in opts.options}
        why = f"loaded with {sized}; " + why
    return {"loaded": loaded, "working": working, "max_side": opts.max_side, "why": why}
