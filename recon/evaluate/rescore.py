"""Re-score a finished run folder (what ``recon eval RUN`` does), with the fit's own scorer.

By default the test views are re-rendered from ``point_cloud.ply`` at the test cameras of
``cameras.json`` with the render settings the fit recorded, and the ground truth is re-read
with the loader options recorded in ``scene.json``: on an untouched run this reproduces the
fit's numbers. ``from_pngs=True`` scores the 8-bit ``renders/test/*.png`` instead.

The fit's ``metrics.json`` is never modified: the result goes to ``eval.json`` beside it,
with the differences from the fit's numbers and a list of what changed (predictions from
PNGs, LPIPS weights found since, an older run without a loader record, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.data.loading import LoaderOptions, load_with_options
from recon.errors import ReconError
from recon.evaluate.scoring import score_views
from recon.export.cameras_json import read_cameras_json, read_run_json
from recon.types import Camera, RenderSettings, View

EVAL_FILE = "eval.json"


def run_cameras(run: Path, split: str) -> list[tuple[str, Camera]]:
    """(name, camera) of one split of a run's cameras.json, in file order."""
    return [(c.name, c.camera) for c in read_cameras_json(run / "cameras.json") if c.split == split]


def run_test_cameras(run: Path) -> list[tuple[str, Camera]]:
    return run_cameras(run, "test")


def ground_truth_views(run: Path, scene_record: dict, names: list[str]) -> tuple[list[View], object, list[str]]:
    """(test views named ``names``, the scene, notes on what differs from the fit) re-read
    with the loader options recorded in scene.json."""
    from recon.data.common import resize_view

    notes = []
    if "loader" in scene_record:
        opts = LoaderOptions.from_record(scene_record["loader"])
    else:
        opts = LoaderOptions(format=scene_record.get("format"))
        notes.append("scene.json has no loader record (a run from an older recon): ground truth re-read with the "
                     "format's default options and resized to the run's image size")
    scene = load_with_options(scene_record["scene"], opts)
    by_name = {v.name: v for v in scene.views}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ReconError(f"{run / 'scene.json'}: test views {missing} are not in {scene_record['scene']}")
    width, height = scene_record.get("image_size") or (None, None)
    out = []
    for name in names:
        v = by_name[name]
        if v.mask is None and scene.format == "spare" and scene.root is not None:
            from recon.data.masks import read_mask  # the SpaRe loader reads no masks

            mask = read_mask(scene.root, name)
            if mask is not None and tuple(mask.shape) == (v.height, v.width):
                v = replace(v, mask=mask)
                if "object masks read from the scene's mask/ folder" not in notes:
                    notes.append("object masks read from the scene's mask/ folder")
        if width and (v.width, v.height) != (width, height):
            notes.append(f"{name}: ground truth {v.width}x{v.height} resized to the run's {width}x{height}")
            v = resize_view(v, int(width), int(height))
        out.append(v)
    return out, scene, notes


def _read_png(path: Path) -> Tensor:
    import imageio.v3 as iio

    arr = np.asarray(iio.imread(path))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0)  # [H, W, 3]


def run_render_settings(run: Path, metrics: dict, background) -> tuple[RenderSettings, list[str]]:
    """The render settings the fit scored with (metrics.json protocol.render_settings), else
    rebuilt from config.yaml (older runs; stated in the notes)."""
    recorded = (metrics.get("protocol") or {}).get("render_settings")
    if recorded:
        known = {f.name for f in fields(RenderSettings)}
        kwargs = {k: (tuple(v) if k == "background" else v) for k, v in recorded.items() if k in known}
        return RenderSettings(**kwargs), []
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    r = (cfg or {}).get("render", {}) or {}
    settings = RenderSettings(background=tuple(background), backend=r.get("backend", "auto"),
                              antialiased=bool(r.get("antialiased", False)))
    return settings, ["metrics.json records no render settings (an older run): rebuilt from config.yaml"]


def render_predictions(run: Path, cameras: list[tuple[str, Camera]], settings: RenderSettings) -> list[Tensor]:
    """point_cloud.ply rendered at each camera -> [H, W, 3] in [0, 1] per camera."""
    from recon.export.ply import read_ply
    from recon.render import render

    ply = run / "point_cloud.ply"
    if not ply.is_file():
        raise ReconError(f"{ply} not found: cannot re-render the test views; the fit did not finish")
    gaussians = read_ply(ply)
    with torch.no_grad():
        return [render(gaussians, [cam], settings).rgb[0].clamp(0, 1).cpu() for _, cam in cameras]


def _differences(new: dict, old: dict | None) -> dict:
    """new - old for every metric both summaries hold as finite numbers."""
    out = {}
    for key, value in new.items():
        prev = (old or {}).get(key)
        numbers = isinstance(value, (int, float)) and isinstance(prev, (int, float)) and key != "num_views"
        if numbers and math.isfinite(value) and math.isfinite(prev):
            out[key] = value - prev
    return out


def evaluate_run(run_dir: str | Path, *, lpips_weights: str | None = None, from_pngs: bool = False) -> dict:
    """Re-score a run's test views; write and return the ``eval.json`` record."""
    run = Path(run_dir)
    scene_record = read_run_json(run / "scene.json", "the run's scene record")
    metrics = read_run_json(run / "metrics.json", "the run's metrics") if (run / "metrics.json").is_file() else {}
    cameras = run_test_cameras(run)
    if not cameras:
        raise ReconError(f"{run / 'cameras.json'} lists no test cameras: nothing to evaluate")
    names = [n for n, _ in cameras]
    gts, scene, changed = ground_truth_views(run, scene_record, names)
    background = tuple(scene.background) if scene.background is not None else (0.0, 0.0, 0.0)
    if from_pngs:
        pngs = [run / "renders" / "test" / f"{n}.png" for n in names]
        absent = [str(p) for p in pngs if not p.is_file()]
        if absent:
            raise ReconError(f"{absent[0]} not found: drop --from-pngs to re-render the test views")
        preds = [_read_png(p) for p in pngs]
        source = "renders/test/*.png (8-bit)"
        changed.append("predictions are the 8-bit PNGs of renders/test; the fit scored its float renders")
    else:
        settings, notes = run_render_settings(run, metrics, background)
        changed += notes
        preds = render_predictions(run, cameras, settings)
        source = "point_cloud.ply re-rendered at the cameras.json test cameras (float, the fit's render settings)"
    scores = score_views(preds, gts, scene_record.get("protocol"), lpips_weights=lpips_weights)
    fit_test = metrics.get("test") if isinstance(metrics.get("test"), dict) else None
    if fit_test is not None:
        for net in ("vgg", "alex"):
            if fit_test.get(f"lpips_{net}") is None and scores.summary.get(f"lpips_{net}") is not None:
                changed.append(f"LPIPS-{net} weights were found now; the fit had none")
    record = {
        "evaluated_by": "recon eval", "predictions": source, "protocol": scene_record.get("protocol"),
        "resolution": scene_record.get("image_size"), "changed": changed,
        "test": scores.summary, "test_views": scores.per_view, "implementations": scores.implementations,
        "fallbacks": scores.fallbacks, "difference_from_fit": _differences(scores.summary, fit_test),
    }
    (run / EVAL_FILE).write_text(json.dumps(record, indent=2, allow_nan=True))
    return record
