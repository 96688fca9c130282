"""Score a finished validation fit (benchmarks/validation_fit.py) on the protocol's TEST views.

The last step of the tuning discipline (issue 15): settings are chosen on validation views;
once chosen, the model of the chosen run is scored once on the test views. The validation
fit trains on the protocol's training split with the protocol's seed (only the list of
scored views differs, and the trainer never reads it), so its point_cloud.ply is the model
`recon fit SCENE --config PRESET` would train; rendering it at the test cameras gives that
fit's test score without a second fit (checked against a protocol fit: see the ablation notes).

    /work/coord/bin/rpy benchmarks/score_test_views.py RUN [--out RUN/test_scores.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recon.data import splits
from recon.data.loading import LoaderOptions, load_with_options
from recon.evaluate.rescore import render_predictions, run_render_settings
from recon.evaluate.scoring import score_views


def score_test_views(run: Path) -> dict:
    scene_record = json.loads((run / "scene.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    scene = load_with_options(scene_record["scene"], LoaderOptions.from_record(scene_record["loader"]))
    protocol = metrics["protocol"]
    split = splits.select_split(scene, protocol["name"], len(protocol["train"]))
    if [scene.views[i].name for i in split.train] != protocol["train"]:
        raise SystemExit(f"{run}: the protocol's training views {[scene.views[i].name for i in split.train]} are "
                         f"not the fit's {protocol['train']}")
    test = list(scene.subset(split.test))
    background = tuple(scene.background) if scene.background is not None else (0.0, 0.0, 0.0)
    settings, _ = run_render_settings(run, metrics, background)
    preds = render_predictions(run, [(v.name, v.camera) for v in test], settings)
    scores = score_views(preds, test, split.protocol)
    return {"run": str(run), "protocol": split.protocol, "test_views": [v.name for v in test],
            "validation_views": protocol["test"], "test": scores.summary, "per_view": scores.per_view}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    record = score_test_views(args.run)
    out = args.out or args.run / "test_scores.json"
    out.write_text(json.dumps(record, indent=1))
    s = record["test"]
    print(json.dumps({k: s.get(k) for k in ("psnr", "ssim_3dgs", "psnr_masked", "ssim_3dgs_masked") if k in s}))


if __name__ == "__main__":
    main()
