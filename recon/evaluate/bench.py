"""The benchmark runner: fits every (scene, method, seed) cell of a suite, measures wall
time and peak memory per cell, and writes the reports (recon.evaluate.report).

Layout of ``out_dir``::

    runs/<scene>/<method>/seed<k>/   one run folder per cell (recon fit's layout)
    runs/<scene>/<method>/seed<k>/cell.json   written when the cell finished
    results.{md,json,csv}, cells.csv, plots/

A bench that was interrupted resumes: cells with a ``cell.json`` are skipped, an interrupted
cell continues from its latest checkpoint when its saved config is the cell's, and the others
are fitted from scratch (a folder without a checkpoint is overwritten; one with a checkpoint
under another config is moved aside to ``seed<k>.set-aside-<n>``, never deleted). A cell that failed
(the data or set-up refused, a ReconError) writes ``failed.json`` instead: the next bench
tries it again, ``--report-only`` lists it with its error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from recon.errors import ConfigError, ReconError
from recon.evaluate.memory import PeakMemory
from recon.evaluate.protocols import (
    BASELINE_PRESET,
    DEFAULT_METHODS,
    DEFAULT_SEEDS,
    METHOD_MAX_SEEDS,
    METHODS,
    UNPOSED_METHOD,
    Suite,
    default_data_root,
    get_suite,
    suite_config,
    suite_scenes,
)
from recon.evaluate.report import write_reports


@contextmanager
def _lpips_env(weights: str | None):
    """The fit computes LPIPS itself; point it at the weights for the bench's duration."""
    if weights is None:
        yield
        return
    old = os.environ.get("RECON_LPIPS_WEIGHTS")
    os.environ["RECON_LPIPS_WEIGHTS"] = str(weights)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RECON_LPIPS_WEIGHTS", None)
        else:
            os.environ["RECON_LPIPS_WEIGHTS"] = old


# Step counts of a preset that a schedule scaled to another iteration budget multiplies.
# Not densify.refine_every: it is the window over which view-space gradients are averaged
# before a densification, not a share of the schedule. Scaled with the rest (100 -> 3 at a
# 1000-step budget) the 3DGS baseline doubled its Gaussians every 3 steps on fern (6k at
# step 30, 96k at step 50, recon bench llff3, 11:00): a different method, not 3DGS.
_SCHEDULE_STEPS = (("optim", "sh_degree_interval"), ("densify", "refine_start"), ("densify", "refine_stop"),
                   ("densify", "reset_every"))


def scale_schedule(cfg, iterations: int):
    """``cfg`` with ``optim.iterations`` set to ``iterations`` and the step counts of its
    schedule (SH growth, densification window, opacity reset) multiplied by
    ``iterations / cfg.optim.iterations``, rounded, at least 1 (0 = off stays off); the
    densification interval is kept (see ``_SCHEDULE_STEPS``). The learning-rate decay
    already spans ``optim.iterations``."""
    import copy

    out = copy.deepcopy(cfg)
    factor = iterations / cfg.optim.iterations
    out.optim.iterations = int(iterations)
    for section, key in _SCHEDULE_STEPS:
        value = getattr(getattr(cfg, section), key)
        if value > 0:
            setattr(getattr(out, section), key, max(1, round(value * factor)))
    return out


def method_config(method: str, suite_config: str | None, overrides: Sequence[str], seed: int,
                  iterations: int | None = None):
    """The FitConfig of one bench method: the suite preset for "recon"; the 3DGS baseline
    preset with the suite preset's data section (protocol, views, resolution) for the
    baselines, scaled to the budget (``iterations``, else the suite preset's) unless "-30k".
    ``overrides`` (the bench's --set) apply last to every method."""
    from recon.optimise.config import from_dict, load_config, parse_override

    if method not in METHODS:
        raise ConfigError(f"unknown bench method {method!r}; use {', '.join(METHODS)}")
    suite_cfg = load_config(suite_config)  # None = the dataclass defaults
    budget = iterations or suite_cfg.optim.iterations
    if method in ("recon", UNPOSED_METHOD):
        values = suite_cfg.to_dict()
        values["optim"]["iterations"] = budget
    else:
        baseline = load_config(BASELINE_PRESET)
        if method == "baseline-3dgs":  # 3DGS's own schedule, run for the budget (see METHODS)
            baseline.optim.iterations = budget
        values = {**baseline.to_dict(), "data": suite_cfg.to_dict()["data"], "threads": suite_cfg.threads}
    for text in [*overrides, f"seed={seed}"]:
        _merge(values, parse_override(text))
    return from_dict(values)


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def photos_only(scene_dir: Path, width: int | None, folder: Path) -> Path:
    """``folder`` holding only the photographs of a posed LLFF scene (links to the image
    folder its loader reads at ``width``), no poses_bounds.npy: what a user with photos
    alone has, fitted by the unposed method. The same file names, so the protocol's split
    (by sorted name) picks the same train and test views as the posed fit."""
    from recon.data.common import list_images
    from recon.data.llff import POSES_FILE, image_folder

    if not (scene_dir / POSES_FILE).is_file():
        raise ConfigError(f"bench method {UNPOSED_METHOD} needs an LLFF scene ({POSES_FILE}); {scene_dir} has none")
    folder.mkdir(parents=True, exist_ok=True)
    for path in list_images(image_folder(scene_dir, width=width)):
        link = folder / path.name
        if not link.is_symlink():
            link.symlink_to(path.resolve())
    return folder


def _pose_accuracy(run_dir: Path, scene_dir: Path) -> dict:
    """Training-pose errors of an unposed cell against the dataset's poses and the score at
    the dataset's test poses mapped through the training cameras (recon.evaluate.align)."""
    from recon.evaluate.align import evaluate_unposed

    result = evaluate_unposed(run_dir, str(scene_dir))
    errors = result["train_pose_errors"]
    return {"pose_errors": {"train_rot_err_max_deg": errors["rotation_error_max_deg"],
                            "train_centre_err_max_pct": errors["centre_error_max_pct"],
                            "centre_error_reference": errors["centre_error_reference"]},
            "metrics_gt_aligned": result["metrics"]}


def _continuation(run_dir: Path, cfg, suite) -> list[str] | None:
    """How an interrupted cell's folder can be used: ``[]`` when it holds a complete checkpoint of
    this very cell (its saved config.yaml is the cell's config, the thread count aside, which changes
    no result's meaning), so the fit continues from there instead of starting again, which is what
    makes long cells (the 30k-iteration baseline: hours on a CPU) finishable across benches; the keys
    that differ when it holds a checkpoint under another config (the folder is set aside); None when
    it holds nothing worth keeping (no folder, no checkpoint, or a cell that failed on its input)."""
    from recon.optimise.checkpoint import latest_checkpoint

    if not run_dir.is_dir() or (run_dir / "failed.json").is_file() or latest_checkpoint(run_dir) is None:
        return None
    return _config_differences(run_dir / "config.yaml", cfg, suite)


def _config_differences(saved: Path, cfg, suite) -> list[str]:
    """The dotted keys in which the config saved in a cell's folder differs from the cell's config
    (threads aside), ``["config.yaml"]`` when the saved one no longer loads. The saved config is
    read through ``from_dict`` first, so a section or key that a later recon added reads as its
    default: a checkpoint written before such an upgrade stays resumable (it was not when the
    comparison was of the raw files: the coreg section's arrival made a 7,500-step cell restart)."""
    import yaml

    from recon.optimise.config import from_dict

    wanted = yaml.safe_load(cfg.to_yaml())  # as fit_scene writes it: the suite's views and protocol set
    wanted["data"].update(views=suite.n_views, protocol=suite.protocol)
    try:
        found = yaml.safe_load(from_dict(yaml.safe_load(saved.read_text()) or {}).to_yaml())
    except (OSError, ConfigError, yaml.YAMLError, TypeError, ValueError):
        return ["config.yaml"]

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(found), flat(wanted)
    return sorted(k for k in a.keys() | b.keys() if k != "threads" and a.get(k) != b.get(k))


def _set_aside(run_dir: Path, reason: str) -> Path:
    """Moves an interrupted cell's folder that cannot be continued to ``<folder>.set-aside-<k>``
    instead of deleting it: its checkpoints may be hours of CPU (what changed is in the warning)."""
    import warnings

    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.set-aside-{k}")).exists():
        k += 1
    run_dir.rename(aside)
    warnings.warn(f"{run_dir} cannot be continued ({reason}); it was moved to {aside} and the cell starts "
                  f"again (delete that folder when it is not needed)", RuntimeWarning, stacklevel=2)
    return aside


def run_cell(scene: str, scene_dir: Path, method: str, seed: int, run_dir: Path, *, suite, config: str | None,
             overrides: Sequence[str], fit_fn: Callable, iterations: int | None = None,
             resume: bool = False) -> dict:
    """Fit one cell and return its record (status "failed" with the error on ReconError).
    ``resume``: continue the fit from the checkpoint in ``run_dir`` (see _continuation)."""
    cfg = method_config(method, config, [*suite.config_overrides, *overrides], seed, iterations)
    record = {"scene": scene, "method": method, "seed": seed, "run_dir": str(run_dir),
              "iterations_configured": cfg.optim.iterations}
    if resume:
        record["continued_from_checkpoint"] = True
    fit_input = scene_dir
    if method == UNPOSED_METHOD:  # beside the run folders: the bench owns it, the run folder is per cell
        fit_input = photos_only(scene_dir, cfg.data.width, run_dir.parents[2] / "_photos_only" / scene)
        record["fit_input"] = str(fit_input)
    start = time.perf_counter()
    with PeakMemory() as mem:
        try:
            if resume:  # the run's saved config.yaml decides, as `recon fit --resume`
                fit_fn(str(fit_input), out_dir=run_dir, resume=True)
            else:
                fit_fn(str(fit_input), out_dir=run_dir, config=cfg, views=suite.n_views, protocol=suite.protocol)
            status, error = "done", None
        except ReconError as exc:  # the user's data or set-up: record it, keep benching
            status, error = "failed", f"{type(exc).__name__}: {exc}"
    record.update(status=status, wall_seconds=round(time.perf_counter() - start, 3),
                  peak_rss_bytes=mem.peak_rss, peak_cuda_bytes=mem.peak_cuda)
    if error:
        record["error"] = error
        (run_dir / "failed.json").write_text(json.dumps(record, indent=2))
        return record
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    record["metrics"] = metrics.get("test") or {}
    if suite.protocol == "spare" and record["metrics"]:
        # the SpaRe loader carries no masks; recon eval reads mask/ and scores PSNR-M etc. (into eval.json)
        from recon.evaluate.rescore import evaluate_run

        record["metrics"] = evaluate_run(run_dir)["test"]
        record["metrics_from"] = "eval.json (recon eval with the scene's mask/ folder)"
    protocol = metrics.get("protocol") or {}
    record["fit_seconds"] = metrics.get("fit_seconds")
    record["iterations"] = metrics.get("iterations")
    record["resolution"] = protocol.get("resolution")
    record["test_poses"] = protocol.get("test_poses") or "dataset (posed)"
    record["init"] = (metrics.get("init") or {}).get("used")
    record["fallbacks"] = [f"{f.get('stage')}: {f.get('used')} instead of {f.get('wanted')}"
                           for f in metrics.get("fallbacks") or []]
    record["num_gaussians"] = metrics.get("num_gaussians")
    record["time_breakdown"] = metrics.get("time_breakdown")
    if method == UNPOSED_METHOD:
        record.update(_pose_accuracy(run_dir, scene_dir))
    record["fit_peak_rss_bytes"] = metrics.get("peak_rss_bytes")
    (run_dir / "cell.json").write_text(json.dumps(record, indent=2))
    return record


def _with_time_breakdown(record: dict) -> dict:
    """A finished cell recorded before cells carried the fit's time breakdown: read it from
    the run's metrics.json (recon.timing), so every table has the same columns."""
    if "time_breakdown" not in record and record.get("status") == "done":
        path = Path(record.get("run_dir", "")) / "metrics.json"
        if path.is_file():
            record = {**record, "time_breakdown": json.loads(path.read_text()).get("time_breakdown")}
    return record


def run_bench(
    suite: str | Suite,
    data_root: str | Path | None,
    out_dir: str | Path,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    config: str | None = None,
    *,
    overrides: Sequence[str] = (),
    iterations: int | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    scenes: Sequence[str] | None = None,
    lpips_weights: str | None = None,
    fit_fn: Callable | None = None,
    progress: bool = True,
    report_only: bool = False,
) -> dict:
    """Run a suite over the scenes found under ``data_root`` (default ../shared/data) and
    write its reports into ``out_dir``. Returns {"cells": [...], "paths": {...}}.
    ``report_only``: fit nothing; tables from the cells that finished (the others are listed
    as not run), e.g. for a bench stopped before its last seeds."""
    spec = get_suite(suite)
    root = Path(data_root) if data_root is not None else default_data_root()
    if root is None or not root.is_dir():
        raise ReconError(f"data root {root} not found; pass --data-root DIR (a folder of scene folders)")
    found = suite_scenes(spec, root)
    if scenes:
        found = [(n, p) for n, p in found if n in set(scenes)]
    if not found:
        raise ReconError(f"no scene of suite {spec.name} under {root} (expected {', '.join(spec.scenes) or 'a SpaRe split JSON'})")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown bench method(s) {unknown}; use {', '.join(METHODS)}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if fit_fn is None:
        from recon.pipeline import fit_scene as fit_fn
    config = suite_config(spec, config)
    out = Path(out_dir)
    seeds_of = {m: seed_list[: METHOD_MAX_SEEDS.get(m, len(seed_list))] for m in methods}
    todo = [(n, p, m, s) for n, p in found for m in methods for s in seeds_of[m]]
    cells, not_run = [], []
    with _lpips_env(lpips_weights), _progress(progress and not report_only, len(todo), spec.name) as advance:
        for name, path, method, seed in todo:
            run_dir = out / "runs" / name / method / f"seed{seed}"
            done = run_dir / "cell.json"
            if done.is_file():  # resume: a finished cell is never re-fitted
                cells.append({**_with_time_breakdown(json.loads(done.read_text())), "resumed": True})
            elif report_only:
                if (run_dir / "failed.json").is_file():
                    cells.append(json.loads((run_dir / "failed.json").read_text()))
                else:
                    not_run.append(f"{name}/{method}/seed{seed}")
                continue
            else:
                cfg = method_config(method, config, [*spec.config_overrides, *overrides], seed, iterations)
                changed = _continuation(run_dir, cfg, spec)
                resume = changed == []
                if changed:  # a checkpoint under another config: kept aside, the cell starts clean
                    _set_aside(run_dir, "its saved config differs from the cell's in " + ", ".join(changed[:8])
                               + (f" and {len(changed) - 8} more" if len(changed) > 8 else ""))
                elif changed is None and run_dir.exists():  # nothing worth keeping: start clean
                    import shutil

                    shutil.rmtree(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                cells.append(run_cell(name, path, method, seed, run_dir, suite=spec, config=config,
                                      overrides=overrides, fit_fn=fit_fn, iterations=iterations, resume=resume))
            advance(f"{name}/{method}/seed{seed}: {cells[-1]['status']}")
    protocol = {**spec.describe(), "iterations": iterations or "config default", "config": config or "defaults (recon/optimise/config.py)",
                "overrides": list(overrides), "data_root": str(root), "seeds": seed_list,
                "seeds_per_method": {m: s for m, s in seeds_of.items() if s != seed_list},
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "test_pose_refined": False,
                "cells_not_run": not_run,
                # what the fits actually ran at (a --set data.width=... changes the suite's resolution)
                "evaluated_resolution": sorted({"x".join(map(str, c["resolution"])) for c in cells if c.get("resolution")}),
                "methods": {m: METHODS[m] for m in methods},
                "aggregation": f"mean ± sample std over the seeds {seed_list} (never best-of)"
                               + "".join(f"; {m}: seeds {s} only" for m, s in seeds_of.items() if s != seed_list)}
    if not cells:
        raise ReconError(f"no finished cell of suite {spec.name} in {out} to report (drop --report-only to fit them)")
    extra = _spare_submission(spec, root, out, cells, lpips_weights) if spec.discover and not report_only else {}
    paths = write_reports(out, cells, protocol, extra)
    return {"cells": cells, "paths": {k: str(v) for k, v in paths.items()}, "protocol": protocol, **extra}


def _spare_submission(spec: Suite, root: Path, out: Path, cells: list[dict], lpips_weights: str | None) -> dict:
    """SpaRe suites also write the challenge zip from the first seed of the main method,
    with the test views rendered at the scenes' full resolution."""
    from recon.evaluate import spare

    entries = spare.read_split(spare.find_split(root, spec.extra["track"]))
    chosen = {}
    for c in cells:
        if c["method"] == "recon" and c["status"] == "done" and c["scene"] not in chosen:
            chosen[c["scene"]] = c
    if not chosen:
        return {"submission": None, "submission_reason": "no finished recon cell"}
    folder = out / "submission"
    scenes = [spare.spare_scene(root / name, entries[name], Path(c["run_dir"]), folder,
                                lpips_weights=lpips_weights) for name, c in chosen.items()]
    zip_path = spare.write_submission(folder, out / f"submission_track{spec.extra['track']}.zip")
    problems = spare.check_submission(zip_path, {n: entries[n] for n in chosen})
    return {"submission": str(zip_path), "submission_problems": problems,
            "submission_scenes": [{k: v for k, v in r.items() if k != "views"} for r in scenes]}


@contextmanager
def _progress(enabled: bool, total: int, suite: str):
    if not enabled:
        yield lambda msg: None
        return
    from recon.progress import stage

    with stage(f"bench {suite}", total=total, transient=False) as bar:
        yield lambda msg: bar.advance(status=msg)
