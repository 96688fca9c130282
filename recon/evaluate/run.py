"""Recompute the metrics of a finished run folder (what ``recon eval RUN`` does).

Predictions come from ``renders/test/*.png`` (8-bit, what the fit wrote) or, with
``rerender=True`` or when those files are missing, from rendering ``point_cloud.ply`` at
the test cameras of ``cameras.json``. Ground truth is re-read from the scene named in
``scene.json`` and resized to the run's image size. The metric style follows the run's
protocol (DTU / SpaRe masked variants). Results are written back into ``metrics.json``
with the metric implementations and the LPIPS status stated beside them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.errors import ReconError
from recon.evaluate.lpips import find_lpips
from recon.evaluate.metrics import METRIC_IMPLEMENTATIONS, image_metrics, summarise
from recon.evaluate.protocols import metric_style_for
from recon.export.cameras_json import read_cameras_json
from recon.types import Camera, RenderSettings, View


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ReconError(f"{path} not found: {what}; pass the folder `recon fit` wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReconError(f"{path}: not valid JSON ({exc}); re-run the fit or fix the file") from None


def run_cameras(run: Path, split: str) -> list[tuple[str, Camera]]:
    """(name, camera) of one split of a run's cameras.json, in file order."""
    return [(c.name, c.camera) for c in read_cameras_json(run / "cameras.json") if c.split == split]


def run_test_cameras(run: Path) -> list[tuple[str, Camera]]:
    return run_cameras(run, "test")


def ground_truth_views(run: Path, scene_record: dict):
    """(test views by name, resized to the run's image size; the scene) re-read from disk."""
    from recon.data import load_scene
    from recon.data.common import resize_view

    scene = load_scene(scene_record["scene"], format=scene_record.get("format"))
    by_name = {v.name: v for v in scene.views}
    missing = [n for n in scene_record.get("test_names", []) if n not in by_name]
    if missing:
        raise ReconError(f"{run / 'scene.json'}: test views {missing} are not in {scene_record['scene']}")
    width, height = scene_record.get("image_size", [None, None])
    out = {}
    for name in scene_record.get("test_names", []):
        v = by_name[name]
        if v.mask is None and scene.format == "spare" and scene.root is not None:
            from recon.evaluate.spare import read_mask  # the SpaRe loader reads no masks

            mask = read_mask(scene.root, name)
            if mask is not None and tuple(mask.shape) == (v.height, v.width):
                v = replace(v, mask=mask)
        if width and (v.width, v.height) != (width, height):
            v = resize_view(v, int(width), int(height))
        out[name] = v
    return out, scene


def _read_png(path: Path) -> Tensor:
    import imageio.v3 as iio

    arr = np.asarray(iio.imread(path))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0)  # [H, W, 3]


def render_predictions(run: Path, cameras: list[tuple[str, Camera]], background) -> dict[str, Tensor]:
    """Render point_cloud.ply at each test camera with the run's render settings."""
    import yaml

    from recon.export.ply import read_ply
    from recon.render import render

    ply = run / "point_cloud.ply"
    if not ply.is_file():
        raise ReconError(f"{ply} not found: cannot re-render the test views; the fit did not finish")
    gaussians = read_ply(ply)
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    rcfg = (cfg or {}).get("render", {}) or {}
    settings = RenderSettings(background=tuple(background), backend=rcfg.get("backend", "auto"),
                              antialiased=bool(rcfg.get("antialiased", False)))
    out = {}
    with torch.no_grad():
        for name, cam in cameras:
            out[name] = render(gaussians, [cam], settings).rgb[0].clamp(0, 1).cpu()  # [H, W, 3]
    return out


def score_views(preds: dict[str, Tensor], gts: dict[str, View], style: str | None, background,
                lpips_weights: str | None = None) -> tuple[list[dict], dict]:
    """Per-view metrics (AlexNet LPIPS as ``lpips``, VGG as ``lpips_vgg`` when found)."""
    alex, alex_reason = find_lpips("alex", lpips_weights)
    vgg, vgg_reason = find_lpips("vgg", lpips_weights)
    if style is not None and any(v.mask is None for v in gts.values()):
        style = None  # a scene without masks cannot use the masked protocol
    per_view = []
    for name, gt in gts.items():
        pred = preds[name]
        if tuple(pred.shape) != tuple(gt.image.shape):
            raise ReconError(f"prediction for test view {name} is {list(pred.shape)}, ground truth "
                             f"{list(gt.image.shape)}; re-run with --rerender")
        m = image_metrics(pred, gt.image, gt.mask, style=style, background=background, lpips=alex)
        if vgg is not None:
            m_vgg = image_metrics(pred, gt.image, gt.mask, style=style, background=background, lpips=vgg)
            m["lpips_vgg"] = m_vgg["lpips"]
            if "lpips_masked" in m_vgg:
                m["lpips_vgg_masked"] = m_vgg["lpips_masked"]
        per_view.append({"name": name, **m})
    status = {"style": style, "lpips_alex": None if alex is not None else alex_reason,
              "lpips_vgg": None if vgg is not None else vgg_reason}
    return per_view, status


def evaluate_run(run_dir: str | Path, *, lpips_weights: str | None = None, rerender: bool = False) -> dict:
    """Recompute test metrics of a run folder and write them into its metrics.json."""
    run = Path(run_dir)
    scene_record = read_json(run / "scene.json", "the run's scene record")
    cameras = run_test_cameras(run)
    if not cameras:
        raise ReconError(f"{run / 'cameras.json'} lists no test cameras: nothing to evaluate")
    gts, scene = ground_truth_views(run, scene_record)
    background = tuple(scene.background) if scene.background is not None else (0.0, 0.0, 0.0)
    pngs = {name: run / "renders" / "test" / f"{name}.png" for name, _ in cameras}
    if not rerender and all(p.is_file() for p in pngs.values()):
        preds = {name: _read_png(p) for name, p in pngs.items()}
        source = "renders/test/*.png (8-bit)"
    else:
        preds = render_predictions(run, cameras, background)
        source = "point_cloud.ply re-rendered at cameras.json test cameras"
    style = metric_style_for(scene_record.get("protocol"))
    per_view, status = score_views(preds, gts, style, (1.0, 1.0, 1.0), lpips_weights)
    metrics = read_json(run / "metrics.json", "the run's metrics") if (run / "metrics.json").is_file() else {}
    summary = summarise(per_view)
    for key in ("lpips_alex", "lpips_vgg"):
        if status[key]:
            summary[f"{key}_reason"] = status[key]
    metrics.update(test=summary, test_views=per_view)
    protocol = dict(metrics.get("protocol") or {})
    protocol.update(name=scene_record.get("protocol"), metric_style=status["style"],
                    metrics=METRIC_IMPLEMENTATIONS, predictions=source,
                    resolution=scene_record.get("image_size"))
    metrics["protocol"] = protocol
    metrics["evaluated_by"] = "recon eval"
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
