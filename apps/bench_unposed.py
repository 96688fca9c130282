"""Unposed vs posed sparse-view fits: pose accuracy and novel-view quality.

For each scene: a plain folder holding only its images (symlinks, no poses_bounds.npy) is
fitted with ``recon fit FOLDER --protocol llff --views N`` (poses recovered from the N
training views alone, test views registered against that frozen model), and the posed
dataset with the same preset and seed. The unposed run is then scored against the
dataset's poses with ``recon.evaluate.align.evaluate_unposed``: rotation and camera-centre
errors of the training cameras after similarity alignment, and PSNR at the ground-truth
test poses mapped through the training cameras (a second, registration-free number).

    OMP_NUM_THREADS=1 RECON_EXTENSION_DIR=/tmp/unposed/ext \\
      python apps/bench_unposed.py --work /tmp/unposed/bench --out benchmarks/results/unposed \\
      --scenes llff_fern llff_flower llff_orchids generated llff_leaves --views 3

Runs are skipped when their metrics.json exists (rerun-safe); every fit's command, wall
time and load average are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("/work/shared/data")
GENERATED = dict(seed=0, n_views=17, width=400, height=300, arc_deg=60.0)  # test 0, 8, 16; 7.5 deg steps


def image_folder(scene: str, work: Path) -> tuple[Path, Path | str]:
    """(plain folder of the images, posed dataset folder or spec) for a scene name."""
    if scene == "builtin":  # builtin:synthetic's views as 8-bit PNGs: the pose-table script's "generated" scene
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        from unposed_poses import photo_folder

        # its own work folder: this script's "generated" is another scene and uses work/folders/generated
        return photo_folder("generated", work / "builtin", None)
    if scene == "generated":
        posed, plain = work / "generated_llff", work / "folders" / "generated"
        if not (posed / "poses_bounds.npy").is_file():
            import imageio.v3 as iio

            from recon.data.synthetic import make_synthetic_scene, write_scene

            s = make_synthetic_scene(**GENERATED)
            write_scene(s, posed, "llff")
            plain.mkdir(parents=True, exist_ok=True)
            for v in s.views:
                iio.imwrite(plain / f"{v.name}.png", (v.image.numpy() * 255 + 0.5).astype("uint8"))
        return plain, posed
    src = DATA / scene
    images = src / "images_8" if (src / "images_8").is_dir() else src / "images"
    plain = work / "folders" / scene
    plain.mkdir(parents=True, exist_ok=True)
    for p in sorted(images.iterdir()):
        link = plain / p.name
        if not link.exists():
            link.symlink_to(p)
    return plain, src


def fit(cmd: list[str], run: Path, log: Path) -> dict:
    """Runs one fit unless its folder exists (finished, or claimed by another runner of
    this script working through the same list in parallel)."""
    if run.exists() or log.exists():
        record = run / "fit_record.json"
        return json.loads(record.read_text()) if record.is_file() else {}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.time()
    with open(log, "x") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    record = {"command": " ".join(cmd), "exit_code": rc, "wall_seconds": round(time.time() - t0, 1),
              "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    run.mkdir(parents=True, exist_ok=True)
    (run / "fit_record.json").write_text(json.dumps(record, indent=2))
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/unposed/bench"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/unposed"))
    ap.add_argument("--scenes", nargs="+", default=["llff_fern", "llff_flower", "llff_orchids", "generated",
                                                    "llff_leaves"],
                    help="scene folders under the data root, 'generated' (a 400x300 orbit scene) or 'builtin' "
                         "(builtin:synthetic, fitted with the synthetic preset)")
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--config", default="llff3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--only", choices=["posed", "unposed"], default=None)
    ap.add_argument("--collect", action="store_true", help="only gather finished runs into the table")
    ap.add_argument("--poses-only", action="store_true", help="pose recovery without fits (poses_v<N>.json)")
    ap.add_argument("--rotation-share", action="store_true",
                    help="only the depth-reversal guard's rotation-only share per scene (rotation_share_v<N>.json)")
    args = ap.parse_args()
    if args.rotation_share:
        rotation_shares(args.scenes, args.views, args.work, args.out)
        return 0
    if args.poses_only:
        poses_only(args.scenes, args.views, args.work, args.out)
        return 0
    recon = [sys.executable, "-m", "recon.cli"]
    common = ["--views", str(args.views), "--seed", str(args.seed), "--no-progress",
              "--set", "threads=1", *sum((["--set", o] for o in args.overrides), [])]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for scene in args.scenes:
        plain, posed = image_folder(scene, args.work)
        tag = f"{scene}_v{args.views}_s{args.seed}"
        runs = {"posed": args.work / "runs" / f"{tag}_posed", "unposed": args.work / "runs" / f"{tag}_unposed"}
        records = {}
        for kind, run in runs.items():
            if (args.only and kind != args.only) or args.collect:
                continue
            folder = posed if kind == "posed" else plain
            config = "synthetic" if scene == "builtin" else args.config  # the preset `recon fit` picks for it
            cmd = [*recon, "fit", str(folder), "--out", str(run), "--protocol", "llff", "--config", config, *common]
            run.parent.mkdir(parents=True, exist_ok=True)
            records[kind] = fit(cmd, run, run.parent / f"{run.name}.log")
        rows.append(collect(scene, runs, records, posed))
        write(args, rows)
    return 0


def collect(scene: str, runs: dict, records: dict, gt: Path | str) -> dict:
    row: dict = {"scene": scene}
    for kind, run in runs.items():
        m = run / "metrics.json"
        rec = records.get(kind, {})
        row[f"{kind}_command"] = rec.get("command")
        row[f"{kind}_loadavg"] = rec.get("loadavg_before")
        if not m.is_file():
            log = run.parent / f"{run.name}.log"
            tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else ["not run"]
            row[f"{kind}_error"] = tail[0] if tail else "no output"
            continue
        metrics = json.loads(m.read_text())
        row[f"{kind}_psnr"] = metrics["test"]["psnr"] if metrics.get("test") else None
        row[f"{kind}_ssim"] = metrics["test"]["ssim"] if metrics.get("test") else None
        row[f"{kind}_wall_seconds"] = rec.get("wall_seconds", metrics.get("total_seconds"))
        row[f"{kind}_test_poses"] = metrics["protocol"].get("test_poses")
        row[f"{kind}_test_views"] = metrics["protocol"]["test"]
        if kind == "unposed":
            from recon.evaluate.align import evaluate_unposed

            poses = metrics["protocol"].get("poses") or {}
            row["unregistered_test_views"] = poses.get("test_unregistered")
            row["sfm_route"] = (poses.get("train_poses") or {}).get("route")
            aligned = metrics.get("test_aligned") or evaluate_unposed(run, str(gt))
            e = aligned["train_pose_errors"]
            row.update(rot_err_max_deg=e["rotation_error_max_deg"], centre_err_max_pct=e["centre_error_max_pct"],
                       rot_errs_deg=e["rotation_errors_deg"], centre_errs_pct=e["centre_errors_pct"],
                       unposed_gt_aligned_psnr=aligned["metrics"]["psnr"],
                       unposed_gt_aligned_ssim=aligned["metrics"].get("ssim"))
    return row


def _f(v, fmt="{:.2f}"):
    return "n/a" if v is None else fmt.format(v)


def write(args, rows: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"unposed_v{args.views}"
    (args.out / f"{name}.json").write_text(json.dumps({"views": args.views, "config": args.config, "seed": args.seed,
                                                       "overrides": args.overrides, "rows": rows}, indent=2))
    preset = args.config + (" (builtin: synthetic)" if "builtin" in args.scenes else "")
    lines = [f"# Unposed vs posed, {args.views} training views (LLFF protocol, preset {preset}, seed {args.seed})",
             "", "Pose errors: training cameras after similarity alignment to the dataset's poses (rotation from the "
             "cameras' orientations, scale/translation from their centres); centre error in % of the largest distance "
             "between two ground-truth training cameras. PSNR unposed: test poses registered against the frozen "
             "training SfM (PnP); GT-aligned: dataset test poses mapped through the training cameras. "
             "Targets: rot <= 1.5 deg, centre <= 5 %, PSNR within 1 dB of posed.", "",
             "| scene | rot err max (deg) | centre err max (%) | PSNR posed | PSNR unposed (registered) | "
             "PSNR unposed (GT-aligned) | SSIM posed / unposed | wall s posed / unposed | load before (1 min) | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("unposed_error") or r.get("posed_error") or ""
        if r.get("unregistered_test_views"):
            note += f" unregistered test views: {r['unregistered_test_views']}"
        lines.append(f"| {r['scene']} | {_f(r.get('rot_err_max_deg'))} | {_f(r.get('centre_err_max_pct'))} | "
                     f"{_f(r.get('posed_psnr'))} | {_f(r.get('unposed_psnr'))} | {_f(r.get('unposed_gt_aligned_psnr'))} | "
                     f"{_f(r.get('posed_ssim'), '{:.3f}')} / {_f(r.get('unposed_ssim'), '{:.3f}')} | "
                     f"{_f(r.get('posed_wall_seconds'), '{:.0f}')} / {_f(r.get('unposed_wall_seconds'), '{:.0f}')} | "
                     f"{(r.get('unposed_loadavg') or ['?'])[0]} | {note.strip()} |")
    lines += ["", "Commands (one per fit):", ""]
    for r in rows:
        for kind in ("posed", "unposed"):
            if r.get(f"{kind}_command"):
                lines.append(f"- `{r[f'{kind}_command']}`")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")



def poses_only(scenes: list[str], views: int, work: Path, out: Path, width: int = 504) -> list[dict]:
    """Pose recovery alone (no fit) from each plain folder, as `recon fit` runs it: the
    folder loaded at the preset's width, the LLFF split, recover_split_poses; errors of
    the training and the registered test cameras against the dataset's poses."""
    import torch

    from recon.data import load_scene
    from recon.data.splits import select_split
    from recon.errors import ReconError
    from recon.evaluate.align import Similarity, pose_errors
    from recon.priors.poses import recover_split_poses

    torch.set_num_threads(1)
    rows = []
    for scene in scenes:
        plain, posed = image_folder(scene, work)
        gt = load_scene(str(posed), width=width)
        blind = load_scene(str(plain), width=width)
        split = select_split(blind, "llff", views)
        load = Path("/proc/loadavg").read_text().split()[0]
        t0 = time.time()
        row: dict = {"scene": scene, "views": views, "train": [blind.views[i].name for i in split.train],
                     "loadavg": load}
        rows.append(row)
        out.mkdir(parents=True, exist_ok=True)
        try:
            rec = recover_split_poses(blind, split, num_threads=1)
        except ReconError as exc:
            row.update(error=str(exc), seconds=round(time.time() - t0, 1))
            (out / f"poses_v{views}.json").write_text(json.dumps(rows, indent=2))
            continue
        row["seconds"] = round(time.time() - t0, 1)
        truth = {v.name: v.camera for v in gt.views}
        train = [rec.scene.views[i] for i in split.train]
        test = [rec.scene.views[i] for i in rec.split.test]
        try:
            sim = Similarity.from_cameras([v.camera for v in train], [truth[v.name] for v in train])
        except ReconError as exc:  # e.g. a mirrored reconstruction
            row.update(error=f"accepted by SfM but wrong: {exc}", route=rec.record["train_poses"]["route"],
                       rotation_only_share=rec.record["train_poses"].get("rotation_only_share"))
            (out / f"poses_v{views}.json").write_text(json.dumps(rows, indent=2))
            continue
        e = pose_errors([v.camera for v in train], [truth[v.name] for v in train], sim)
        et = pose_errors([v.camera for v in test], [truth[v.name] for v in test], sim) if test else None
        row.update(route=rec.record["train_poses"]["route"], rotation_only_share=rec.record["train_poses"].get(
                   "rotation_only_share"), rot_err_max_deg=e["rotation_error_max_deg"],
                   centre_err_max_pct=e["centre_error_max_pct"], rot_errs_deg=e["rotation_errors_deg"],
                   centre_errs_pct=e["centre_errors_pct"], focal_px=float(train[0].camera.K[0, 0]),
                   focal_gt_px=float(truth[train[0].name].K[0, 0]),
                   test_registered=f"{len(test)}/{len(split.test)}",
                   test_rot_err_max_deg=et["rotation_error_max_deg"] if et else None,
                   test_centre_err_max_pct=et["centre_error_max_pct"] if et else None)
        (out / f"poses_v{views}.json").write_text(json.dumps(rows, indent=2))
    return rows


def rotation_shares(scenes: list[str], views: int, work: Path, out: Path, width: int = 504) -> list[dict]:
    """The training views' verified pairs as `recon fit FOLDER` matches them, without the
    mapper: the share of verified matches a pure camera rotation explains (SfM refuses
    above ``SfMSettings.max_rotation_only_share``) and the focal that rotation implies."""
    import statistics

    import torch

    from recon.data import load_scene
    from recon.data.splits import select_split
    from recon.priors.sfm import SfMSettings, rotation_only_share, two_view_stats

    torch.set_num_threads(1)
    settings, rows = SfMSettings(num_threads=1), []
    for scene in scenes:
        plain, _ = image_folder(scene, work)
        blind = load_scene(str(plain), width=width)
        split = select_split(blind, "llff", views)
        load, t0 = Path("/proc/loadavg").read_text().split()[0], time.time()
        pairs = two_view_stats(blind.subset(split.train), settings=settings)
        share = rotation_only_share(pairs, settings)
        focals = [p.rotation_focal_px for p in pairs if p.rotation_focal_px is not None]
        rows.append({"scene": scene, "views": views, "train": [blind.views[i].name for i in split.train],
                     "rotation_only_share": share, "refused": share is not None and
                     share > settings.max_rotation_only_share,
                     "rotation_focal_median_px": statistics.median(focals) if focals else None,
                     "pairs": [[p.first, p.second, p.inliers, p.rotation_only, p.geometry] for p in pairs],
                     "seconds": round(time.time() - t0, 1), "loadavg": load})
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rotation_share_v{views}.json").write_text(json.dumps(rows, indent=2))
        print(scene, views, share, flush=True)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
