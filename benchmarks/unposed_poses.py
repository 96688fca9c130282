"""Pose recovery from the training views alone, no fit: the pose table of issue 12.

For each scene and number of training views, a folder holding only the scene's photographs
(no poses) is loaded and split exactly as ``recon fit FOLDER --config PRESET --views N``
does (``recon.pipeline._load`` / ``_split`` with the preset's data settings, LLFF protocol:
test = every 8th image, the N training views by linspace over the rest), and its poses are
recovered as the fit recovers them (``recon.pipeline._recover_poses`` ->
``recon.priors.poses.recover_split_poses``: SfM of the training views only; test views
never enter). The recovered training cameras are then aligned to the dataset's cameras with
the similarity the unposed evaluation uses (``recon.evaluate.align.Similarity.from_cameras``
and ``pose_errors``, as in ``evaluate_unposed``): max rotation error (deg) and max
camera-centre error (% of the largest distance between two ground-truth training cameras).
A scene whose poses are refused ends as ``refused`` with the ReconError's text.

Scenes: LLFF folders under /work/shared/data (plain folders of links made by
``recon.evaluate.bench.photos_only``, the bench's recon-unposed input) and ``generated``
(``builtin:synthetic``, known poses; its images written as PNGs into a plain folder).

    OMP_NUM_THREADS=1 /work/coord/bin/rpy benchmarks/unposed_poses.py --work /tmp/poses/bench \\
        --out benchmarks/results/unposed --views 3 5 7 9

Rows already in poses.json are kept (rerun-safe, ``--redo`` recomputes); each row records
its wall time and the load average before it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

DATA = Path("/work/shared/data")
SCENES = ["llff_fern", "llff_flower", "llff_leaves", "llff_orchids", "generated"]
GENERATED_SPEC = "builtin:synthetic"
GENERATED_CONFIG = "synthetic"
LLFF_CONFIG = "llff3"
TARGET_ROT_DEG, TARGET_CENTRE_PCT = 1.5, 5.0


def photo_folder(scene: str, work: Path, width: int | None) -> tuple[Path, str]:
    """(folder of the scene's photographs only, ground-truth scene spec)."""
    if scene == "generated":
        import imageio.v3 as iio

        from recon.data import load_scene

        folder = work / "folders" / "generated"
        if not folder.is_dir():
            gt = load_scene(GENERATED_SPEC)
            folder.mkdir(parents=True)
            for v in gt.views:
                iio.imwrite(folder / f"{v.name}.png", (v.image.clamp(0, 1).numpy() * 255 + 0.5).astype("uint8"))
        return folder, GENERATED_SPEC
    from recon.evaluate.bench import photos_only

    return photos_only(DATA / scene, width, work / "folders" / scene), str(DATA / scene)


def pose_row(scene: str, views: int, work: Path) -> dict:
    import torch

    from recon import pipeline
    from recon.data import load_scene
    from recon.errors import ReconError
    from recon.evaluate.align import Similarity, pose_errors
    from recon.optimise.config import load_config

    torch.set_num_threads(1)
    preset = GENERATED_CONFIG if scene == "generated" else LLFF_CONFIG
    cfg = load_config(preset, [f"data.views={views}", "data.protocol=llff", "threads=1"])
    folder, gt_spec = photo_folder(scene, work, cfg.data.width)
    row: dict = {"scene": scene, "views": views, "preset": preset, "folder": str(folder),
                 "loadavg_before": Path("/proc/loadavg").read_text().split()[0]}
    blind = pipeline._load(str(folder), cfg)
    split = pipeline._split(blind, cfg.data.protocol, cfg.data.views)
    row["train"] = [blind.views[i].name for i in split.train]
    row["test"] = [blind.views[i].name for i in split.test]
    t0 = time.perf_counter()
    try:
        rec = pipeline._recover_poses(blind, split, cfg)
    except ReconError as exc:
        row.update(outcome="refused", error=str(exc), seconds=round(time.perf_counter() - t0, 1))
        return row
    row["seconds"] = round(time.perf_counter() - t0, 1)
    record = rec.record["train_poses"]
    row.update(route=record.get("route"), fallback=record.get("fallback"), focal_px=record.get("focal_px"),
               num_points=record.get("num_points"), mean_reprojection_px=record.get("mean_reprojection_px"),
               rotation_only_share=record.get("rotation_only_share"), attempts=record.get("attempts"),
               test_registered=f"{len(rec.split.test)}/{len(split.test)}")
    gt = load_scene(gt_spec, width=cfg.data.width) if cfg.data.width else load_scene(gt_spec)
    truth = {v.name: v.camera for v in gt.views}
    train = [rec.scene.views[i].camera for i in split.train]
    ref = [truth[n] for n in row["train"]]
    row["focal_gt_px"] = round(float(ref[0].scaled(train[0].width, train[0].height).K[0, 0]), 1)
    try:
        sim = Similarity.from_cameras(train, ref)
    except ReconError as exc:  # e.g. mirrored: accepted by SfM, but wrong
        row.update(outcome="wrong", error=f"accepted by SfM but cannot be aligned: {exc}")
        return row
    e = pose_errors(train, ref, sim)
    row.update(rot_err_max_deg=round(e["rotation_error_max_deg"], 3), centre_err_max_pct=round(e["centre_error_max_pct"], 2),
               rot_errs_deg=[round(x, 3) for x in e["rotation_errors_deg"]],
               centre_errs_pct=[round(x, 2) for x in e["centre_errors_pct"]])
    met = e["rotation_error_max_deg"] <= TARGET_ROT_DEG and e["centre_error_max_pct"] <= TARGET_CENTRE_PCT
    row["outcome"] = "ok" if met else "off target"
    return row


def _f(v, fmt="{:.2f}") -> str:
    return "" if v is None else fmt.format(v)


def write(rows: list[dict], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (SCENES.index(r["scene"]) if r["scene"] in SCENES else 99, r["views"]))
    (out / "poses.json").write_text(json.dumps({"command": command, "targets": {
        "rot_err_max_deg": TARGET_ROT_DEG, "centre_err_max_pct": TARGET_CENTRE_PCT}, "rows": rows}, indent=2) + "\n")
    lines = ["# Pose recovery from the training views alone (no fit)", "",
             f"`{command}`", "",
             "Plain folders of the photographs only, loaded and split as `recon fit FOLDER --views N` (LLFF protocol; "
             "preset llff3 for LLFF, synthetic for `builtin:synthetic`), poses from the N training views only "
             "(`recover_split_poses`, test views never enter), aligned to the dataset's poses by "
             "`Similarity.from_cameras` (as `evaluate_unposed`). Centre error in % of the largest distance between two "
             f"ground-truth training cameras. Targets: rot <= {TARGET_ROT_DEG} deg, centre <= {TARGET_CENTRE_PCT} %. "
             "Seconds: pose recovery of the training views plus registration of the test views, on a shared 2-core "
             "machine (load average in the row).", "",
             "| scene | views | outcome | rot err max (deg) | centre err max (%) | focal rec / dataset (px) | "
             "rotation-only share | route | test registered | seconds | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        outcome = r.get("outcome", "?")
        if r.get("error"):
            outcome += ": " + r["error"][:160].replace("|", "/") + ("..." if len(r["error"]) > 160 else "")
        focal = f"{_f(r.get('focal_px'), '{:.0f}')} / {_f(r.get('focal_gt_px'), '{:.0f}')}" if r.get("focal_px") else ""
        lines.append(f"| {r['scene']} | {r['views']} | {outcome} | {_f(r.get('rot_err_max_deg'))} | "
                     f"{_f(r.get('centre_err_max_pct'))} | {focal} | {_f(r.get('rotation_only_share'), '{:.3f}')} | "
                     f"{r.get('route') or ''} | {r.get('test_registered') or ''} | {_f(r.get('seconds'), '{:.0f}')} | "
                     f"{r.get('loadavg_before', '')} |")
    (out / "poses.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/poses/bench"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/unposed"))
    ap.add_argument("--scenes", nargs="+", default=SCENES)
    ap.add_argument("--views", nargs="+", type=int, default=[3, 5, 7, 9])
    ap.add_argument("--redo", action="store_true", help="recompute rows already in poses.json")
    args = ap.parse_args()
    command = ("OMP_NUM_THREADS=1 python benchmarks/unposed_poses.py --work " + str(args.work) + " --out " + str(args.out)
               + " --views " + " ".join(map(str, args.views)) + " --scenes " + " ".join(args.scenes))
    path = args.out / "poses.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    for views in args.views:
        for scene in args.scenes:
            if not args.redo and any(r["scene"] == scene and r["views"] == views for r in rows):
                continue
            try:
                row = pose_row(scene, views, args.work)
            except Exception as exc:  # a crash is a result too: record it, go on
                row = {"scene": scene, "views": views, "outcome": "crashed", "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()}
            rows = [r for r in rows if not (r["scene"] == scene and r["views"] == views)] + [row]
            write(rows, args.out, command)
            print(scene, views, row.get("outcome"), row.get("rot_err_max_deg"), row.get("centre_err_max_pct"),
                  row.get("seconds"), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
