"""Fit a scene and score it on VALIDATION views instead of the protocol's test views.

Tuning discipline for the fidelity work (issue 15): choices are made on views that are
neither training nor test views of the protocol, so the test views never shape the model
or its hyper-parameters. The protocol's training split is kept; its test list is replaced
by two validation views (for DTU: two views of the 9-view training list that the 3-view
split does not use; otherwise the non-train, non-test views at 1/4 and 3/4 of their list).
The run folder's metrics.json then reports the validation views under "test".

    OMP_NUM_THREADS=1 /work/coord/bin/rpy benchmarks/validation_fit.py SCENE OUT \
        --config llff3 --set threads=1 --set dropout.rate=0.1
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from recon import pipeline
from recon.data import splits
from recon.optimise.config import load_config


def validation_split(scene, protocol, n_views):
    split = splits.select_split(scene, protocol, n_views)
    if split.protocol == "dtu":
        val = [i for i in splits.DTU_TRAIN if i not in split.train][:2]
    else:
        rest = [i for i in range(len(scene)) if i not in split.train and i not in split.test]
        val = sorted({rest[len(rest) // 4], rest[(3 * len(rest)) // 4]})
    return replace(split, test=tuple(val), description=split.description + f"; VALIDATION views {val} replace the test views")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("out")
    ap.add_argument("--config", default="llff3")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    pipeline._split = validation_split  # the only change: which views are scored
    cfg = load_config(args.config, args.overrides)
    run = pipeline.fit_scene(args.scene, out_dir=args.out, config=cfg)
    import json

    m = json.loads((run / "metrics.json").read_text())
    print(json.dumps({"val": m["test"], "fit_seconds": m["fit_seconds"], "n": m["num_gaussians"],
                      "val_views": m["protocol"]["test"], "train_final": m["train_final"]}))


if __name__ == "__main__":
    main()
