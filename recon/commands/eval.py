"""`recon eval RUN`: re-score a run's test views with the fit's scorer into RUN/eval.json."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="re-score the test views of a run folder (writes RUN/eval.json)",
        description="Re-score PSNR, SSIM (3DGS and skimage variants) and LPIPS (VGG, AlexNet) and the "
        "protocol's masked variants of a run folder with the scorer `recon fit` uses: point_cloud.ply is "
        "re-rendered at cameras.json's test cameras with the fit's render settings and the ground truth "
        "re-read with the fit's loader options, so an untouched run reproduces metrics.json. The result "
        "and what changed go to RUN/eval.json; metrics.json is never modified.",
    )
    p.add_argument("run", help="run folder written by `recon fit`")
    p.add_argument("--lpips-weights", metavar="DIR", default=None,
                   help="folder with torchvision AlexNet/VGG16 checkpoints and lpips alex.pth/vgg.pth "
                   "(else $RECON_LPIPS_WEIGHTS or the torch hub cache; LPIPS is null without them)")
    p.add_argument("--from-pngs", action="store_true",
                   help="score the 8-bit renders/test/*.png instead of re-rendering point_cloud.ply")
    p.add_argument("--gt-poses", metavar="SCENE", default=None,
                   help="for runs with recovered poses: a posed copy of the scene; the run's training "
                   "cameras are aligned to it (Umeyama) and its test poses mapped into the run's frame")
    p.add_argument("--gt-format", default=None, help="loader of --gt-poses (default: detect)")
    p.add_argument("--refine-test-poses", type=int, default=0, metavar="STEPS",
                   help="with --gt-poses: refine each test pose photometrically for STEPS steps with the "
                   "Gaussians frozen (optimistic; reported as test_pose_refined)")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    from recon.evaluate.metrics import format_metric  # not at import: `recon --help` stays torch-free

    return format_metric(v, missing="null")


def run(args: argparse.Namespace) -> int:
    from recon.evaluate.rescore import evaluate_run

    if args.gt_poses:
        from recon.evaluate.align import evaluate_unposed

        res = evaluate_unposed(args.run, args.gt_poses, gt_format=args.gt_format,
                               refine_steps=args.refine_test_poses, lpips_weights=args.lpips_weights)
        flag = "REFINED test poses (optimistic)" if res["test_pose_refined"] else "test poses mapped, not refined"
        e = res["train_pose_errors"]
        print(f"{args.run}: aligned to {args.gt_poses} (train ATE {e['ate']:.4g}, "
              f"rotation {e['rotation_error_deg']:.3g} deg); {flag}")
        for k, v in res["metrics"].items():
            print(f"  {k:18s} {_fmt(v)}")
        return 0
    record = evaluate_run(args.run, lpips_weights=args.lpips_weights, from_pngs=args.from_pngs)
    test = record["test"]
    keys = [k for k in test if k not in ("num_views", "ssim", "lpips") and not k.endswith("_reason")]
    print(f"{args.run}: {test['num_views']} test views ({record['predictions']})")
    diff = record["difference_from_fit"]
    for k in keys:
        delta = f"  (minus the fit's: {diff[k]:+.1e})" if k in diff else ""
        print(f"  {k:20s} {_fmt(test[k])}{delta}")
    for k in ("lpips_vgg_reason", "lpips_alex_reason"):
        if k in test:
            print(f"  {k.replace('_reason', '')} is null: {test[k]}")
    for note in record["changed"]:
        print(f"  changed: {note}")
    for fb in record["fallbacks"]:
        print(f"  FALLBACK: {fb['used']} instead of {fb['wanted']}: {fb['reason']}")
    print(json.dumps({"eval_json": f"{args.run}/eval.json"}))
    return 0
