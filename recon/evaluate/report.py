"""Bench reports: markdown, JSON and CSV tables (per scene and method, mean ± std over
seeds), the protocol they were produced under, and plots (per-scene bars, training curves).

A cell is one (scene, method, seed) fit; its record is a dict with ``scene``, ``method``,
``seed``, ``status``, ``metrics`` (the run's test summary), ``wall_seconds``,
``peak_rss_bytes``, ``peak_cuda_bytes`` and ``run_dir``. Numbers that do not exist (LPIPS
without weights, a failed cell) are written as null / "n/a", never invented.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from recon.evaluate.metrics import METRIC_IMPLEMENTATIONS

# Explicit variant names only (metrics.image_metrics); the plain aliases "ssim"/"lpips" of a
# run's summary are not table columns, so no table can leave the reader guessing which SSIM.
_BASE_KEYS = ("psnr", "ssim_3dgs", "ssim_skimage", "lpips_vgg", "lpips_alex")
METRIC_KEYS = (*(f"{k}_masked" for k in _BASE_KEYS), *_BASE_KEYS)
COST_KEYS = ("fit_seconds", "wall_seconds", "peak_rss_mb", "peak_cuda_mb")
# Where a fit's time went (metrics.json "time_breakdown", recon.timing): per-iteration medians
# in milliseconds of the optimisation's parts, and the seconds spent before the first step.
TIME_KEYS = {"iteration_ms": "iteration", "render_forward_ms": "render_forward",
             "render_backward_ms": "render_backward", "losses_ms": "losses"}
SETUP_STAGES = ("load", "pose_recovery", "stereo", "init", "priors", "extension_load")
TIMING_COLUMNS = (*TIME_KEYS, "setup_seconds")
# Unposed cells (bench method recon-unposed): recovered training poses against the dataset's,
# after the similarity that aligns the training cameras (recon.evaluate.align.pose_errors),
# and PSNR at the dataset's test poses mapped through that similarity (no registration).
POSE_KEYS = ("train_rot_err_max_deg", "train_centre_err_max_pct", "psnr_gt_aligned_poses")
# What each cell says about how it ran (the same for every seed unless something fell back).
TEXT_KEYS = ("test_poses", "init", "fallbacks")
HIGHER_IS_BETTER = {k: not k.startswith("lpips") for k in METRIC_KEYS}


def metric_label(key: str, style: str | None) -> str:
    if key.endswith("_masked"):
        return key.removesuffix("_masked") + ("-M" if style == "spare" else " (mask)")
    return key


def _finite(values: list) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: list) -> dict:
    """{"mean", "std", "n"}; std is the sample std (n-1) and None for a single value. A
    missing value in any seed makes the whole entry null rather than a subset mean."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "n": len(values)}
    if any(isinstance(v, float) and math.isinf(v) for v in values):
        return {"mean": math.inf, "std": None, "n": len(values)}
    xs = _finite(values)
    if len(xs) != len(values):
        return {"mean": None, "std": None, "n": len(values)}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def _cell_value(cell: dict, key: str):
    if key in TIMING_COLUMNS:
        breakdown = cell.get("time_breakdown") or {}
        if key == "setup_seconds":
            parts = [breakdown.get(k) for k in SETUP_STAGES]
            return sum(p for p in parts if p is not None) if breakdown else None
        median = (breakdown.get("per_iteration_median") or {}).get(TIME_KEYS[key])
        return None if median is None else 1000 * median
    if key == "psnr_gt_aligned_poses":
        return (cell.get("metrics_gt_aligned") or {}).get("psnr")
    if key in POSE_KEYS:
        return (cell.get("pose_errors") or {}).get(key)
    if key in COST_KEYS:
        if key in ("wall_seconds", "fit_seconds"):
            return cell.get(key)
        b = cell.get(key.replace("_mb", "_bytes"))
        return None if b is None else b / 2**20
    return (cell.get("metrics") or {}).get(key)


def aggregate(cells: list[dict]) -> list[dict]:
    """Rows per (scene, method) over seeds, then a "mean" row per method: the metric
    averaged over scenes for each seed, then mean ± std of those over seeds."""
    done = [c for c in cells if c.get("status") == "done"]
    keys = [k for k in METRIC_KEYS if any(k in (c.get("metrics") or {}) for c in done)] + list(COST_KEYS)
    keys += [k for k in POSE_KEYS if any(_cell_value(c, k) is not None for c in done)]
    keys += [k for k in TIMING_COLUMNS if any(_cell_value(c, k) is not None for c in done)]
    rows = []
    methods = list(dict.fromkeys(c["method"] for c in cells))
    scenes = list(dict.fromkeys(c["scene"] for c in cells))
    for method in methods:
        for scene in scenes:
            group = [c for c in done if c["method"] == method and c["scene"] == scene]
            failed = [c for c in cells if c["method"] == method and c["scene"] == scene and c.get("status") != "done"]
            if not group and not failed:
                continue
            row = {"scene": scene, "method": method, "seeds": [c["seed"] for c in group],
                   "failed_seeds": [c["seed"] for c in failed]}
            row.update({k: mean_std([_cell_value(c, k) for c in group]) for k in keys})
            row.update({k: _text_summary(group, k) for k in TEXT_KEYS})
            rows.append(row)
        seeds = sorted({c["seed"] for c in done if c["method"] == method})
        per_seed: dict[str, list] = {k: [] for k in keys}
        complete = [s for s in seeds
                    if all(any(c["seed"] == s and c["scene"] == sc and c["method"] == method for c in done) for sc in scenes)]
        for s in complete:  # only seeds where every scene finished: a partial mean would mislead
            for k in keys:
                vals = [_cell_value(c, k) for c in done if c["method"] == method and c["seed"] == s]
                per_seed[k].append(None if any(v is None for v in vals) else
                                   (math.inf if any(math.isinf(v) for v in vals) else statistics.fmean(vals)))
        if complete and len(scenes) > 1:
            row = {"scene": "mean", "method": method, "seeds": complete, "failed_seeds": []}
            row.update({k: mean_std(per_seed[k]) for k in keys})
            row.update({k: _text_summary([c for c in done if c["method"] == method], k) for k in TEXT_KEYS})
            rows.append(row)
    return rows


def _text_summary(cells: list[dict], key: str) -> str:
    """The distinct values of a descriptive field over cells, with seed counts when they differ."""
    values = []
    for c in cells:
        v = c.get(key)
        if key == "fallbacks":
            v = "; ".join(v) if v else "none"
        elif key == "test_poses":
            v = v or "dataset (posed)"
        values.append(str(v if v is not None else "n/a"))
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= 1:
        return distinct[0] if distinct else "n/a"
    return ", ".join(f"{v} ({values.count(v)} seeds)" for v in distinct)


def _fmt(entry: dict | None, key: str) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    m, s = entry["mean"], entry.get("std")
    if math.isinf(m):
        return "inf"
    digits = {"psnr": 2, "psnr_masked": 2, "psnr_gt_aligned_poses": 2, "train_rot_err_max_deg": 2,
              "train_centre_err_max_pct": 2, **dict.fromkeys(TIMING_COLUMNS, 0), "wall_seconds": 0,
              "fit_seconds": 0, "peak_rss_mb": 0, "peak_cuda_mb": 0}.get(key, 3)
    text = f"{m:.{digits}f}"
    return text + (f" ± {s:.{digits}f}" if s is not None else "")


def _json_safe(obj):
    """JSON has no inf/nan: infinite PSNR (a pixel-perfect view) is written as the string "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else None)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_reports(out_dir: str | Path, cells: list[dict], protocol: dict, extra: dict | None = None) -> dict[str, Path]:
    """Write results.json, results.csv (aggregated rows), cells.csv (one row per fit),
    results.md and the plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(cells)
    style = protocol.get("metric_style")
    payload = {"protocol": protocol, "metric_implementations": METRIC_IMPLEMENTATIONS,
               "rows": rows, "cells": cells, **(extra or {})}
    paths = {"json": out / "results.json", "csv": out / "results.csv", "cells_csv": out / "cells.csv",
             "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(_json_safe(payload), indent=2))
    keys = [k for k in (*METRIC_KEYS, *COST_KEYS, *POSE_KEYS, *TIMING_COLUMNS) if rows and k in rows[0]]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scene", "method", "n_seeds", *[f"{k}_{s}" for k in keys for s in ("mean", "std")]])
        for r in rows:
            w.writerow([r["scene"], r["method"], len(r["seeds"]),
                        *[_csv_num(r[k][s]) for k in keys for s in ("mean", "std")]])
    with open(paths["cells_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scene", "method", "seed", "status", *keys, "run_dir", "error"])
        for c in cells:
            w.writerow([c["scene"], c["method"], c["seed"], c.get("status"),
                        *[_csv_num(_cell_value(c, k)) for k in keys], c.get("run_dir", ""), c.get("error", "")])
    paths["markdown"].write_text(markdown(rows, protocol, keys, style, cells))
    paths.update(plot_bars(out / "plots", rows, keys, style))
    paths.update(plot_training_curves(out / "plots", cells))
    return paths


def _csv_num(v) -> str:
    if v is None:
        return ""
    return "inf" if isinstance(v, float) and math.isinf(v) else (f"{v:.6g}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict], protocol: dict, keys: list[str], style: str | None, cells: list[dict]) -> str:
    lines = [f"# Benchmark: {protocol.get('name', '?')}", "", "## Protocol", ""]
    for k in ("protocol", "train_views", "test_views", "train_ids", "test_ids", "resolution", "evaluated_resolution",
              "masks", "metric_style", "headline_metrics", "iterations", "config", "overrides", "seeds", "seeds_per_method",
              "aggregation",
              "methods", "notes", "data_root", "device", "test_pose_refined", "cells_not_run"):
        if protocol.get(k) not in (None, "", ()):
            lines.append(f"- **{k}**: {protocol[k]}")
    lines += ["", "Metric implementations:", ""]
    lines += [f"- `{k}`: {v}" for k, v in METRIC_IMPLEMENTATIONS.items()]
    for reason in sorted({str(c["metrics"][k]) for c in cells if c.get("metrics")
                          for k in c["metrics"] if k.endswith("_reason")}):
        lines.append(f"- LPIPS is n/a: {reason}")
    shown = [k for k in keys if k not in ("wall_seconds", "peak_cuda_mb")]
    header = ["scene", "method", "seeds", *[metric_label(k, style) if k in METRIC_KEYS else k for k in shown],
              *TEXT_KEYS]
    seeds_text = ", ".join(map(str, protocol.get("seeds") or []))
    lines += ["", f"## Results (mean ± sample std over seeds {seeds_text}; never best-of)", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        seeds = str(len(r["seeds"])) + (f" ({len(r['failed_seeds'])} failed)" if r["failed_seeds"] else "")
        lines.append("| " + " | ".join([r["scene"], r["method"], seeds, *[_fmt(r[k], k) for k in shown],
                                        *[str(r.get(k, "n/a")) for k in TEXT_KEYS]]) + " |")
    lines += ["", ("A metric is n/a when it was not computed (LPIPS without local weights) or when a seed lacks it; "
                   "wall_seconds, peak_cuda_mb and per-cell values are in results.csv / cells.csv.")]
    failed = [c for c in cells if c.get("status") != "done"]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- {c['scene']} / {c['method']} / seed {c['seed']}: {c.get('error', '')}" for c in failed]
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(folder: Path, rows: list[dict], keys: list[str], style: str | None) -> dict[str, Path]:
    """One bar chart per metric: scenes on x, one bar per method, seed std as error bars."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for key in [k for k in keys if k in METRIC_KEYS]:
        if not any(r[key]["mean"] is not None and math.isfinite(r[key]["mean"]) for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(scenes) * max(1, len(methods)) / 2, 3.2))
        width = 0.8 / max(1, len(methods))
        for j, method in enumerate(methods):
            xs, ys, es = [], [], []
            for i, scene in enumerate(scenes):
                r = next((r for r in rows if r["scene"] == scene and r["method"] == method), None)
                if r and r[key]["mean"] is not None and math.isfinite(r[key]["mean"]):
                    xs.append(i + j * width)
                    ys.append(r[key]["mean"])
                    es.append(r[key]["std"] or 0.0)
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(scenes))], scenes, rotation=20, fontsize=8)
        ax.set_ylabel(metric_label(key, style))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{key}_by_scene.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        out[f"plot_{key}"] = path
    return out


def _read_log(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
        if "iteration" in r and "psnr" in r and "event" not in r:
            records.append(r)
    return records


def plot_training_curves(folder: Path, cells: list[dict]) -> dict[str, Path]:
    """Training PSNR against iteration for every finished cell, one panel per scene."""
    plt = _plt()
    done = [c for c in cells if c.get("status") == "done" and c.get("run_dir")]
    scenes = list(dict.fromkeys(c["scene"] for c in done))
    if not scenes:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(scenes), figsize=(4 * len(scenes), 3), squeeze=False)
    drawn = False
    for ax, scene in zip(axes[0], scenes):
        for c in (c for c in done if c["scene"] == scene):
            log = _read_log(c["run_dir"])
            if log:
                ax.plot([r["iteration"] for r in log], [r["psnr"] for r in log], label=f"{c['method']} s{c['seed']}")
                drawn = True
        ax.set_title(scene, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("train PSNR (dB)")
        if ax.get_legend_handles_labels()[0]:  # a scene whose cells wrote no log has no curves
            ax.legend(fontsize=6)
    path = folder / "training_curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return {"plot_training_curves": path} if drawn else {}
