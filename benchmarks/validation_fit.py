"""Fit a scene and score it on VALIDATION views instead of the protocol's test views.

Tuning discipline for the fidelity work (issue 15): choices are made on views that are
neither training nor test views of the protocol, so the test views never shape the model
or its hyper-parameters. The protocol's training split is kept; its test list is replaced
by ``--val-views`` validation views (default 2):

* DTU: the first views of the 9-view training list ``[25, 22, 28, 40, 44, 48, 0, 8, 13]``
  that the n-view split does not use (3 views, 2 validation views: 40, 44; 4: 40, 44, 48, 0).
  The excluded views are never used (they are excluded from the protocol for a reason).
* otherwise (LLFF: images not in the test list; Blender: the transforms_train frames the
  8-view split does not use): the non-train, non-test views at the quantiles (2k+1)/(2n)
  of their list, k = 0..n-1 (n = 2: 1/4 and 3/4 of the list).

The run folder's metrics.json then reports the validation views under "test". ``--record
FILE --label NAME`` appends one row (scores, fit seconds, load average, the command) to a
JSON-lines file, from which the ablation tables in benchmarks/results/ablation/ are written.

    OMP_NUM_THREADS=1 /work/coord/bin/rpy benchmarks/validation_fit.py SCENE OUT \
        --config llff3 --set threads=1 --set regularise.dropout_rate=0.1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from recon import pipeline
from recon.data import splits
from recon.errors import SceneError
from recon.optimise.config import load_config


def validation_views(scene, split, n_val: int) -> list[int]:
    """Indices of ``n_val`` views of ``scene`` that are neither training nor test views of ``split``."""
    if split.protocol == "dtu":
        val = [i for i in splits.DTU_TRAIN if i not in split.train][:n_val]
    else:
        rest = [i for i in range(len(scene)) if i not in split.train and i not in split.test]
        val = sorted({rest[((2 * k + 1) * len(rest)) // (2 * n_val)] for k in range(n_val)}) if rest else []
    if len(val) < n_val:
        raise SceneError(f"{n_val} validation views asked for; the {split.protocol} split leaves only {len(val)}")
    return val


def validation_split(scene, protocol, n_views, n_val: int = 2):
    split = splits.select_split(scene, protocol, n_views)
    val = validation_views(scene, split, n_val)
    return replace(split, test=tuple(val), description=split.description + f"; VALIDATION views {val} replace the test views")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scene")
    ap.add_argument("out")
    ap.add_argument("--config", default="llff3")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--val-views", type=int, default=2, help="how many validation views replace the test views")
    ap.add_argument("--record", type=Path, help="append this run's row to this JSON-lines file")
    ap.add_argument("--label", default="", help="the row's name in --record")
    args = ap.parse_args()
    pipeline._split = partial(validation_split, n_val=args.val_views)  # the only change: which views are scored
    cfg = load_config(args.config, args.overrides)
    run = pipeline.fit_scene(args.scene, out_dir=args.out, config=cfg)
    m = json.loads((run / "metrics.json").read_text())
    row = {"val": m["test"], "fit_seconds": m["fit_seconds"], "n": m["num_gaussians"],
           "val_views": m["protocol"]["test"], "train_final": m["train_final"]}
    print(json.dumps(row))
    if args.record is not None:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        row.update(label=args.label, scene=Path(args.scene).name, config=args.config, overrides=args.overrides,
                   seed=cfg.seed, loadavg_at_end=load, run=str(run),
                   command="OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "") + " python "
                   + " ".join(shlex.quote(a) for a in sys.argv))
        with args.record.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
