"""Convert a posed scene (default: ../shared/data/dtu_scan24) into the SpaRe challenge
layout, so the SpaRe path (`recon.evaluate.spare.run_spare`) runs on real photographs.

    python apps/convert_to_spare.py OUT [--scene DIR] [--name scan24] [--track 1|2]

Writes OUT/<name>/rect_XXX_3_r5000.png (DTU naming; view i is camera i+1), pos_XXX.txt
(P = K [R | t] in the scene's own frame), mask/<stem>.png, and
OUT/Track{t}_split_development.json with the DTU protocol's training views (25, 22, 28 for
Track 1; the 9-view list for Track 2) and 10 test views spread over the DTU test list.
Resolution is whatever the source has (400x300 for the shared images_4, not the
challenge's 1600x1200). One track per output folder: the SpaRe loader reads the first
Track*_split*.json it finds beside a scene.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DTU_TRAIN = {1: [25, 22, 28], 2: [25, 22, 28, 40, 44, 48, 0, 8, 13]}
# RegNeRF's DTU test ids; SpaRe evaluates 10 test views per scene: take 10 spread evenly.
DTU_TEST = [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47]


def main(argv: list[str] | None = None) -> int:
    from recon.data import load_scene
    from recon.errors import ReconError
    from recon.evaluate.spare import write_layout

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (the SpaRe data root)")
    p.add_argument("--scene", default=str(REPO.parent / "shared" / "data" / "dtu_scan24"))
    p.add_argument("--format", default="dtu", help="loader of --scene (default dtu)")
    p.add_argument("--name", default="scan24", help="scene name in the split JSON and folder name")
    p.add_argument("--track", type=int, choices=(1, 2), default=1)
    args = p.parse_args(argv)
    try:
        scene = load_scene(args.scene, format=args.format, normalise=False)
        n = len(scene.views)
        tests = [DTU_TEST[round(k * (len(DTU_TEST) - 1) / 9)] for k in range(10)]
        if max(DTU_TRAIN[args.track] + tests) >= n:
            raise ReconError(f"{args.scene} has {n} views; the DTU protocol needs 49 (ids up to 48)")
        split = {args.name: {"input_views": DTU_TRAIN[args.track], "test_views": tests}}
        root = write_layout(args.out, {args.name: (scene, "DTU")}, {args.track: split})
    except ReconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    masks = sum(v.mask is not None for v in scene.views)
    print(f"wrote {n} views ({scene.views[0].width}x{scene.views[0].height}, {masks} masks) of {args.scene} "
          f"to {root / args.name}; split {root / f'Track{args.track}_split_development.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
