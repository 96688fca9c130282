"""Copy a scene and re-expose its 2nd and 3rd training photos of an n-view split: the data of the
exposure-compensation rows in benchmarks/results/ablation/llff3_validation.md ("Session 10").

Photos shot at different exposures are what `exposure.enabled` is for; LLFF's shots share one,
so this makes a controlled case from a real scene: the first training photo (the reference view,
whose appearance novel views take) and every other image keep their pixels; the two others get
a per-channel gain and bias (clipped to [0, 1], written back in the file's own format). The
copy goes to OUT (never into the repository); poses and the rest are copied or linked unchanged.

    python benchmarks/reexpose_scene.py ../shared/data/llff_fern /tmp/reexposed/llff_fern --protocol llff --views 3
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from recon.data import load_scene
from recon.data.splits import select_split

# (gain, bias) per channel of training photos 2 and 3: darker and warmer, darker and bluer
SHOTS = (((0.7, 0.65, 0.6), (0.03, 0.02, 0.0)), ((0.8, 0.85, 0.95), (0.0, 0.0, 0.03)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--protocol", default="llff")
    ap.add_argument("--views", type=int, default=3)
    args = ap.parse_args()
    scene = load_scene(str(args.scene))
    split = select_split(scene, args.protocol, args.views)
    names = [scene.views[i].name for i in split.train]
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; pass a new folder")
    shutil.copytree(args.scene, args.out, symlinks=True)
    for name, (gain, bias) in zip(names[1:3], SHOTS):
        paths = [p for p in args.out.rglob(f"{name}.*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
        if not paths:
            raise SystemExit(f"no image file named {name} under {args.out}")
        for path in paths:  # every resolution folder (images/, images_8/, ...) holds the same shot
            a = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255
            a = np.clip(a * np.array(gain) + np.array(bias), 0, 1)
            Image.fromarray((a * 255 + 0.5).astype(np.uint8)).save(path)
            print(f"re-exposed {path} (gain {gain}, bias {bias})")
    print(f"training views {names}; the reference {names[0]} and every other image unchanged")


if __name__ == "__main__":
    main()
