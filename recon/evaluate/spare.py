"""The SpaRe protocol (AIM 2024 Sparse Neural Rendering challenge) as one call.

Layout (sparebenchmark.github.io, "Data structure"): ``Track{1,2}_split_{development,test}.json``
maps each scene (also its folder name) to ``input_views``, ``test_views`` and ``dataset``
("DTU" or "SpaRe"); view index i is camera i+1; images are ``rect_{i+1:03d}_{light}_r5000.png``
(DTU) or ``cam_{i+1:03d}_{light}_0000.png`` (SpaRe); lighting 3 (all lights on) is evaluated.

``run_spare`` fits every scene on its 3 (Track 1) or 9 (Track 2) input views, renders the
10 test views at 1600x1200, scores them when ground truth is present and writes the
submission zip.

Submission format, as the benchmark's site documents it (SpaReBenchmark.github.io,
docs/benchmark/submission.md and evaluation.md): for every scene, the 10 test views of the
split JSON, rendered at 1600x1200, saved in a folder named as the scene (the JSON key) as
``rect_{idx+1:03d}_3_r5000.png`` (DTU scenes) or ``cam_{idx+1:03d}_3_0000.png`` (SpaRe
scenes) for test view index ``idx``; one ZIP whose root holds the scene folders (no upper
level folder). Metrics: PSNR-M inside the object mask, SSIM-M and LPIPS-M (AlexNet) inside
the mask's tight bounding box, and PSNR / SSIM / LPIPS over the whole image.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError, SceneError

TRACK_VIEWS = {1: 3, 2: 9}
EVAL_LIGHTING = 3
FULL_RESOLUTION = (1600, 1200)  # (width, height) of every submitted image
SUBMISSION_VIEWS = 10  # test views per scene


@dataclass(frozen=True)
class SpareEntry:
    scene: str
    input_views: tuple[int, ...]
    test_views: tuple[int, ...]
    dataset: str  # "DTU" | "SpaRe"


def image_name(dataset: str, index: int, lighting: int = EVAL_LIGHTING) -> str:
    """File name of view ``index`` (camera index+1) in the SpaRe layout."""
    if dataset.lower() == "dtu":
        return f"rect_{index + 1:03d}_{lighting}_r5000.png"
    return f"cam_{index + 1:03d}_{lighting}_0000.png"


def read_split(path: str | Path) -> dict[str, SpareEntry]:
    """Parse and check a ``Track*_split_*.json`` (scene -> input_views, test_views, dataset)."""
    from recon.data.splits import read_spare_split

    path = Path(path)
    entries = {}
    for scene, raw in read_spare_split(path).items():
        if not isinstance(raw, dict) or "input_views" not in raw:
            raise SceneError(f"{path}: scene {scene!r} has no input_views; each entry needs input_views and test_views")
        ids = {}
        for key in ("input_views", "test_views"):
            values = raw.get(key, [])
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                raise SceneError(f"{path}: scene {scene!r} {key} must be non-negative integers, got {values!r}")
            ids[key] = tuple(values)
        dataset = str(raw.get("dataset", "DTU" if scene.lower().startswith("scan") else "SpaRe"))
        entries[scene] = SpareEntry(scene, ids["input_views"], ids["test_views"], dataset)
    return entries


def find_split(data_root: str | Path, track: int, kind: str | None = None) -> Path:
    root = Path(data_root)
    kinds = (kind,) if kind else ("development", "test")
    for k in kinds:
        path = root / f"Track{track}_split_{k}.json"
        if path.is_file():
            return path
    raise SceneError(f"{root}: no Track{track}_split_{'|'.join(kinds)}.json; point --data-root at the SpaRe folder")


def write_submission(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip ``folder``'s scene sub-folders so each sits at the archive root."""
    folder, zip_path = Path(folder), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for scene_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for png in sorted(scene_dir.glob("*.png")):
                zf.write(png, f"{scene_dir.name}/{png.name}")
    return zip_path


def check_submission(zip_path: str | Path, entries: dict[str, SpareEntry],
                     resolution: tuple[int, int] | None = FULL_RESOLUTION) -> list[str]:
    """Problems with a submission zip against the documented format (scene folders at the
    archive root, the split's test views named per dataset, 10 per scene, images at
    ``resolution``; None skips the size check); [] if none."""
    import imageio.v3 as iio

    problems = [f"{e.scene}: the split lists {len(e.test_views)} test views, the benchmark expects {SUBMISSION_VIEWS}"
                for e in entries.values() if len(e.test_views) != SUBMISSION_VIEWS]
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        expected = {f"{e.scene}/{image_name(e.dataset, i)}" for e in entries.values() for i in e.test_views}
        problems += [f"missing {n}" for n in sorted(expected - names)]
        problems += [f"unexpected {n}" for n in sorted(names - expected)]
        if resolution is not None:
            for n in sorted(expected & names):
                h, w = np.asarray(iio.imread(zf.read(n)))[..., :3].shape[:2]
                if (w, h) != tuple(resolution):
                    problems.append(f"{n} is {w}x{h}, expected {resolution[0]}x{resolution[1]}")
    return problems


def write_layout(root: str | Path, scenes: dict, splits: dict[int, dict[str, dict]], kind: str = "development") -> Path:
    """Write scenes in the SpaRe layout: ``root/<name>/`` with images named per the
    dataset convention at lighting 3, ``pos_XXX.txt`` projection matrices (P = K [R | t],
    world frame of the scene), ``mask/<stem>.png`` when views carry masks, and
    ``root/Track{t}_split_{kind}.json``. ``scenes``: name -> (Scene, dataset "DTU"|"SpaRe");
    view i of the scene becomes camera i+1. ``splits``: track -> name -> {input_views, test_views}."""
    import imageio.v3 as iio

    from recon.data.writers import write_scene

    root = Path(root)
    for name, (scene, dataset) in scenes.items():
        folder = root / name
        (folder / "mask").mkdir(parents=True, exist_ok=True)
        if dataset.lower() == "dtu":  # the data stage's writer: pos_XXX.txt + rect_XXX_3_r5000.png
            write_scene(scene, folder, "spare")
        for i, view in enumerate(scene.views):
            stem = Path(image_name(dataset, i)).stem
            if dataset.lower() != "dtu":  # SpaRe-synthetic naming, which that writer does not produce
                iio.imwrite(folder / f"{stem}.png", (view.image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
                P = view.camera.K.double() @ view.camera.T_cam_world.double()[:3]  # [3, 4]
                np.savetxt(folder / f"pos_{i + 1:03d}.txt", P.numpy(), fmt="%.10g")
            if view.mask is not None:
                iio.imwrite(folder / "mask" / f"{stem}.png", (view.mask.numpy().astype(np.uint8) * 255))
    for track, entries in splits.items():
        data = {n: {"input_views": list(e["input_views"]), "test_views": list(e["test_views"]),
                    "dataset": scenes[n][1]} for n, e in entries.items()}
        (root / f"Track{track}_split_{kind}.json").write_text(json.dumps(data, indent=2))
    return root


def _render_full(run: Path, size: tuple[int, int], background) -> list[tuple[str, torch.Tensor]]:
    """Test views of a run rendered at ``size`` (cameras.json cameras rescaled) with the
    render settings the fit scored with."""
    from recon.evaluate.rescore import render_predictions, run_render_settings, run_test_cameras
    from recon.export.cameras_json import read_run_json

    metrics = read_run_json(run / "metrics.json", "the run's metrics") if (run / "metrics.json").is_file() else {}
    settings, _ = run_render_settings(run, metrics, background)
    cameras = [(name, cam.scaled(*size)) for name, cam in run_test_cameras(run)]
    return list(zip([n for n, _ in cameras], render_predictions(run, cameras, settings)))


def _save_png(path: Path, image: torch.Tensor) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())


def spare_scene(scene_dir: Path, entry: SpareEntry, run: Path, submission: Path, *,
                size: tuple[int, int] | None = FULL_RESOLUTION, lpips_weights=None) -> dict:
    """Render one fitted scene's test views into the submission folder at ``size`` (the
    benchmark's 1600x1200; None = the scene's own size) and score them against ground truth
    when the split provides it (development split), ground truth resized to ``size``."""
    from recon.data import load_scene
    from recon.data.common import resize_view
    from recon.data.masks import read_mask
    from recon.evaluate.scoring import score_views

    scene = load_scene(scene_dir, format="spare")
    full = size or (scene.views[0].width, scene.views[0].height)
    background = tuple(scene.background) if scene.background is not None else (0.0, 0.0, 0.0)
    renders = _render_full(run, full, background)
    if len(renders) != len(entry.test_views):
        raise ReconError(f"{run}: {len(renders)} test cameras but the split lists {len(entry.test_views)} "
                         f"test views for {entry.scene}; the loader must provide every test camera")
    by_name = {v.name: v for v in scene.views}
    preds, gts = {}, {}
    for (name, image), index in zip(renders, entry.test_views):
        _save_png(submission / entry.scene / image_name(entry.dataset, index), image)
        gt = by_name.get(name)
        if gt is not None and gt.image.numel() > 0:
            if gt.mask is None:  # the loader reads no masks: take them from mask/ when present
                mask = read_mask(scene_dir, name, index)
                if mask is not None and tuple(mask.shape) == (gt.height, gt.width):
                    gt = replace(gt, mask=mask)
            preds[name] = image
            gts[name] = gt if (gt.width, gt.height) == tuple(full) else resize_view(gt, *full)
    record = {"scene": entry.scene, "dataset": entry.dataset, "resolution": list(full), "run_dir": str(run)}
    if gts and len(gts) == len(renders):
        scores = score_views([preds[n] for n in gts], list(gts.values()), "spare", lpips_weights=lpips_weights)
        record.update(metrics=scores.summary, views=scores.per_view, metric_style=scores.implementations["style"],
                      lpips_reason=scores.summary.get("lpips_alex_reason"), fallbacks=scores.fallbacks)
    else:
        record["metrics"] = None
        record["metrics_reason"] = "test images are not in the data (test split): submission only"
    return record


def run_spare(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    track: int = 1,
    split: str | None = None,
    config=None,
    overrides: Sequence[str] = (),
    scenes: Sequence[str] | None = None,
    size: tuple[int, int] | None = FULL_RESOLUTION,
    lpips_weights: str | None = None,
    fit_fn: Callable | None = None,
) -> dict:
    """Fit, render and (when possible) score every scene of a SpaRe track; write
    ``submission_track{track}.zip`` and ``spare_results.json`` into ``out_dir``."""
    from recon.optimise.config import load_config

    if track not in TRACK_VIEWS:
        raise ReconError(f"SpaRe track {track} does not exist; use 1 (3 views) or 2 (9 views)")
    if fit_fn is None:
        from recon.pipeline import fit_scene as fit_fn
    root, out = Path(data_root), Path(out_dir)
    split_path = find_split(root, track, split)
    entries = read_split(split_path)
    if scenes:
        entries = {k: v for k, v in entries.items() if k in set(scenes)}
    from recon.evaluate.protocols import get_suite, suite_config

    preset = suite_config(get_suite(f"spare{TRACK_VIEWS[track]}"), config if isinstance(config, str) else None)
    submission = out / "submission"
    records = []
    for name, entry in entries.items():
        cfg = config if config is not None and not isinstance(config, str) else load_config(preset, list(overrides))
        run = fit_fn(str(root / name), out_dir=out / "runs" / name, config=cfg,
                     views=TRACK_VIEWS[track], protocol="spare")
        records.append(spare_scene(root / name, entry, Path(run), submission, size=size, lpips_weights=lpips_weights))
    zip_path = write_submission(submission, out / f"submission_track{track}.zip")
    problems = check_submission(zip_path, entries, size or None)
    result = {"track": track, "split_file": str(split_path), "zip": str(zip_path), "problems": problems,
              "scenes": records, "protocol": "SpaRe: PSNR-M over the object mask, SSIM-M/LPIPS-M (AlexNet) "
              "in the mask's tight box, full-image PSNR/SSIM/LPIPS; test views at full resolution"}
    (out / "spare_results.json").write_text(json.dumps(result, indent=2, default=str))
    return result
