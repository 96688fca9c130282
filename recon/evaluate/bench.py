"""The benchmark runner: fits every (scene, method, seed) cell of a suite, measures wall
time and peak memory per cell, and writes the reports (recon.evaluate.report).

Layout of ``out_dir``::

    runs/<scene>/<method>/seed<k>/   one run folder per cell (recon fit's layout)
    runs/<scene>/<method>/seed<k>/cell.json   written when the cell finished
    results.{md,json,csv}, cells.csv, plots/

A bench that was interrupted resumes: cells with a ``cell.json`` are skipped, the others
are fitted from scratch (a half-written run folder is overwritten).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from recon.errors import ConfigError, ReconError
from recon.evaluate.protocols import METHODS, Suite, default_data_root, get_suite, suite_config, suite_scenes
from recon.evaluate.report import write_reports


class PeakMemory:
    """Samples this process's resident memory (Linux /proc, else ru_maxrss) on a thread,
    so each cell gets its own peak rather than the process's all-time maximum; CUDA peak
    from torch's allocator statistics."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.rss())

    def __enter__(self) -> "PeakMemory":
        self.peak_rss = self.rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss())
        if torch.cuda.is_available():
            self.peak_cuda = int(torch.cuda.max_memory_allocated())


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


def _cell_config(config: str | None, overrides: Sequence[str], seed: int):
    from recon.optimise.config import load_config

    return load_config(config, [*overrides, f"seed={seed}"])  # None = the dataclass defaults


def run_cell(scene: str, scene_dir: Path, method: str, seed: int, run_dir: Path, *, suite, config: str | None,
             overrides: Sequence[str], fit_fn: Callable) -> dict:
    """Fit one cell and return its record (status "failed" with the error on ReconError)."""
    cfg = _cell_config(config, [*suite.config_overrides, *METHODS[method], *overrides], seed)
    record = {"scene": scene, "method": method, "seed": seed, "run_dir": str(run_dir)}
    start = time.perf_counter()
    with PeakMemory() as mem:
        try:
            fit_fn(str(scene_dir), out_dir=run_dir, config=cfg, views=suite.n_views, protocol=suite.protocol)
            status, error = "done", None
        except ReconError as exc:  # the user's data or set-up: record it, keep benching
            status, error = "failed", f"{type(exc).__name__}: {exc}"
    record.update(status=status, wall_seconds=round(time.perf_counter() - start, 3),
                  peak_rss_bytes=mem.peak_rss, peak_cuda_bytes=mem.peak_cuda)
    if error:
        record["error"] = error
        return record
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    record["metrics"] = metrics.get("test") or {}
    if suite.metric_style == "spare" and record["metrics"]:
        # the SpaRe loader carries no masks; recon eval reads mask/ and scores PSNR-M etc.
        from recon.evaluate.run import evaluate_run

        record["metrics"] = evaluate_run(run_dir)["test"]
    record["fit_seconds"] = metrics.get("fit_seconds")
    record["iterations"] = metrics.get("iterations")
    record["resolution"] = (metrics.get("protocol") or {}).get("resolution")
    (run_dir / "cell.json").write_text(json.dumps(record, indent=2))
    return record


def run_bench(
    suite: "str | Suite",
    data_root: str | Path | None,
    out_dir: str | Path,
    seeds: int | Sequence[int] = 1,
    config: str | None = None,
    *,
    overrides: Sequence[str] = (),
    iterations: int | None = None,
    methods: Sequence[str] = tuple(METHODS),
    scenes: Sequence[str] | None = None,
    lpips_weights: str | None = None,
    fit_fn: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Run a suite over the scenes found under ``data_root`` (default ../shared/data) and
    write its reports into ``out_dir``. Returns {"cells": [...], "paths": {...}}."""
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
    extra = [f"optim.iterations={iterations}"] if iterations else []
    if fit_fn is None:
        from recon.pipeline import fit_scene as fit_fn
    config = suite_config(spec, config)
    out = Path(out_dir)
    todo = [(n, p, m, s) for n, p in found for m in methods for s in seed_list]
    cells = []
    with _lpips_env(lpips_weights), _progress(progress, len(todo), spec.name) as advance:
        for name, path, method, seed in todo:
            run_dir = out / "runs" / name / method / f"seed{seed}"
            done = run_dir / "cell.json"
            if done.is_file():  # resume: a finished cell is never re-fitted
                cells.append({**json.loads(done.read_text()), "resumed": True})
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                cells.append(run_cell(name, path, method, seed, run_dir, suite=spec, config=config,
                                      overrides=[*overrides, *extra], fit_fn=fit_fn))
            advance(f"{name}/{method}/seed{seed}: {cells[-1]['status']}")
    protocol = {**spec.describe(), "iterations": iterations or "config default", "config": config or "defaults (recon/optimise/config.py)",
                "overrides": list(overrides), "data_root": str(root), "seeds": seed_list,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "test_pose_refined": False,
                # what the fits actually ran at (a --set data.width=... changes the suite's resolution)
                "evaluated_resolution": sorted({"x".join(map(str, c["resolution"])) for c in cells if c.get("resolution")}),
                "methods": {m: list(METHODS[m]) or ["(preset as given)"] for m in methods}}
    extra = _spare_submission(spec, root, out, cells, lpips_weights) if spec.discover else {}
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
    scenes = [spare.spare_scene(root / name, entries[name], Path(c["run_dir"]), folder, size=None,
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
