"""`recon eval RUN`: recompute a run's test metrics and write metrics.json."""

from __future__ import annotations

import argparse
import json
import math


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="recompute the test metrics of a run folder",
        description="Recompute PSNR/SSIM/LPIPS (and the protocol's masked variants) of a run folder "
        "from its test renders, or by re-rendering point_cloud.ply at cameras.json's test cameras.",
    )
    p.add_argument("run", help="run folder written by `recon fit`")
    p.add_argument("--lpips-weights", metavar="DIR", default=None,
                   help="folder with torchvision AlexNet/VGG16 checkpoints and lpips alex.pth/vgg.pth "
                   "(else $RECON_LPIPS_WEIGHTS or the torch hub cache; LPIPS is null without them)")
    p.add_argument("--rerender", action="store_true",
                   help="render point_cloud.ply instead of reading renders/test/*.png")
    p.add_argument("--gt-poses", metavar="SCENE", default=None,
                   help="for runs with recovered poses: a posed copy of the scene; the run's training "
                   "cameras are aligned to it (Umeyama) and its test poses mapped into the run's frame")
    p.add_argument("--gt-format", default=None, help="loader of --gt-poses (default: detect)")
    p.add_argument("--refine-test-poses", type=int, default=0, metavar="STEPS",
                   help="with --gt-poses: refine each test pose photometrically for STEPS steps with the "
                   "Gaussians frozen (optimistic; reported as test_pose_refined)")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return str(v)


def run(args: argparse.Namespace) -> int:
    from recon.evaluate.run import evaluate_run

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
    metrics = evaluate_run(args.run, lpips_weights=args.lpips_weights, rerender=args.rerender)
    test = metrics["test"]
    keys = [k for k in test if k not in ("num_views",) and not k.endswith("_reason")]
    print(f"{args.run}: {test['num_views']} test views ({metrics['protocol']['predictions']})")
    for k in keys:
        print(f"  {k:18s} {_fmt(test[k])}")
    for k in ("lpips_alex_reason", "lpips_vgg_reason"):
        if k in test:
            print(f"  {k.replace('_reason', '')} is null: {test[k]}")
    print(json.dumps({"metrics_json": f"{args.run}/metrics.json"}))
    return 0
