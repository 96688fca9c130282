"""`recon info SCENE`: what a scene folder holds and which views a protocol would pick."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `recon --help` free of torch imports
    from recon.types import Scene, Split


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe a scene: format, views, resolution, intrinsics, masks/depth, the train/test split",
        description="Load a scene and print its detected format, views, resolution(s), intrinsics, "
        "which views have masks/depth, and the train/test split a protocol would choose.",
    )
    p.add_argument("scene", help="scene folder, or builtin:synthetic")
    p.add_argument("--format", default=None, help="force a loader (llff, dtu, spare, blender, nerfstudio, colmap, images)")
    # No argparse choices: the protocols are recon.data.splits.PROTOCOLS, which select_split
    # checks with a clear error; listing them here would be a second copy to keep in step.
    p.add_argument("--protocol", default="auto",
                   help="view selection (default auto: the format's usual protocol; an unknown name lists them)")
    p.add_argument("--views", type=int, default=3, help="number of training views (default: 3)")
    p.add_argument("--downscale", type=float, default=None, help="load images smaller by this factor (faster)")
    p.set_defaults(func=run)


def describe(scene: Scene, split: Split | None, spec: str) -> list[str]:
    """Human-readable lines describing ``scene`` (and ``split``)."""
    n = len(scene)
    sizes = Counter((v.width, v.height) for v in scene.views)
    fx = [float(v.camera.K[0, 0]) for v in scene.views]
    fy = [float(v.camera.K[1, 1]) for v in scene.views]
    cx = [float(v.camera.K[0, 2]) for v in scene.views]
    cy = [float(v.camera.K[1, 2]) for v in scene.views]
    n_dist = sum(v.camera.distortion is not None for v in scene.views)
    masks = [i for i, v in enumerate(scene.views) if v.mask is not None]
    depths = [i for i, v in enumerate(scene.views) if v.depth is not None]

    def rng(xs):
        return f"{min(xs):.1f}" if max(xs) - min(xs) < 0.05 else f"{min(xs):.1f}..{max(xs):.1f}"

    def which(idx):
        return "all" if len(idx) == n else ("none" if not idx else f"{len(idx)} ({', '.join(map(str, idx[:10]))}{', ...' if len(idx) > 10 else ''})")

    lines = [
        f"scene        {spec}",
        f"format       {scene.format}{'' if scene.posed else '  (unposed: poses must be recovered)'}",
        f"views        {n}",
        "resolution   " + ", ".join(f"{w}x{h}" + (f" ({c} views)" if len(sizes) > 1 else "") for (w, h), c in sizes.items()),
        f"intrinsics   fx {rng(fx)}  fy {rng(fy)}  cx {rng(cx)}  cy {rng(cy)}  (pixels)"
        + (f"; distortion on {n_dist} views" if n_dist else "; no distortion"),
        f"masks        {which(masks)}",
        f"depth        {which(depths)}",
        f"normalised   centre ({', '.join(f'{c:.4g}' for c in scene.normalisation.centre)}), scale {scene.normalisation.scale:.4g}",
    ]
    if scene.split is not None:
        lines.append(f"format split {len(scene.split.train)} train / {len(scene.split.test)} test ({scene.split.description})")
    if split is not None:
        names = [scene.views[i].name for i in split.train]
        lines += [
            f"protocol     {split.protocol}: {split.description}",
            f"train        {list(split.train)}  {names}",
            f"test         {len(split.test)} views {list(split.test)[:20]}{' ...' if len(split.test) > 20 else ''}",
        ]
    return lines


def run(args: argparse.Namespace) -> int:
    from recon.data import load_scene
    from recon.data.splits import select_split

    options = {"downscale": args.downscale} if args.downscale else {}
    scene = load_scene(args.scene, format=args.format, **options)
    split = select_split(scene, args.protocol, args.views) if scene.posed or args.protocol != "auto" else None
    print("\n".join(describe(scene, split, args.scene)))
    return 0
