"""Effect of the depth prior on a short fit of the procedural scene: no depth prior, the
weight-free fallback (plane-sweep MVS depth) and an oracle prior (the scene's exact
depth, fed through the same DepthPrior interface a learned model uses).

    .venv/bin/python apps/bench_priors_fit.py --iterations 300

Reports test PSNR (from the run's metrics.json) and test depth AbsRel: the rendered
depth of the final Gaussians against the exact depth, after one median scale (so the
number does not depend on the reconstruction's scale), on pixels with true depth and
rendered alpha > 0.5.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch.nn.functional as F

SPEC = "builtin:synthetic"


class OracleDepthPrior:
    """Exact depth of the scene view whose image matches the query (images may have been
    resized by the pipeline: matched by the smallest mean difference at the query size)."""

    name = "oracle"

    def __init__(self, views):
        self.views = [(v.image, v.depth) for v in views if v.depth is not None]

    def predict(self, image, *, use_cache: bool = True):
        from recon.priors.depth import DepthMap

        h, w = image.shape[:2]
        best, best_err = None, float("inf")
        for im, depth in self.views:
            im_r = F.interpolate(im.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)
            err = float((im_r[0].permute(1, 2, 0) - image).abs().mean())
            if err < best_err:
                best, best_err = depth, err
        if best_err > 0.02:  # a render (pseudo view), not a photograph: the oracle has no answer
            raise RuntimeError("oracle depth prior asked about an image that is not a scene view")
        d = F.interpolate(best[None, None], size=(h, w), mode="nearest")[0, 0]
        return DepthMap(d.float(), "depth")

    def predict_batch(self, images, *, use_cache: bool = True):
        return [self.predict(im) for im in images]

    def without_cache(self):
        return self


def _depth_abs_rel(run: Path, cfg) -> float:
    from recon import pipeline
    from recon.export.ply import read_ply
    from recon.render import render
    from recon.types import RenderSettings

    record = json.loads((run / "scene.json").read_text())
    scene = pipeline._load(SPEC, cfg)  # the same views (and resizing) the fit used
    test_idx = record["test"]
    g = read_ply(run / "point_cloud.ply")
    errs = []
    for i in test_idx:
        v = scene.views[i]
        out = render(g, [v.camera], RenderSettings(backend="auto"))
        pred, alpha = out.depth[0].detach(), out.alpha[0].detach()
        ok = (v.depth > 0) & (alpha > 0.5) & (pred > 0)
        if int(ok.sum()) < 16:
            continue
        scale = (v.depth[ok] / pred[ok]).median()
        errs.append(float(((scale * pred[ok] - v.depth[ok]).abs() / v.depth[ok]).mean()))
    return sum(errs) / len(errs) if errs else float("nan")


def run_fit_arms(iterations: int = 300, out_root: Path | None = None, width: int = 160, views: int = 3,
                 depth_weight: float | None = None) -> list[dict]:
    """One short fit per arm; ``depth_weight`` overrides both depth loss weights (Pearson
    and ranking; None = the preset's)."""
    from recon import pipeline
    from recon.optimise.config import load_config
    from recon.priors import depth as depth_module

    out_root = Path(out_root or tempfile.mkdtemp(prefix="bench_priors_fit_"))
    common = [f"optim.iterations={iterations}", "pseudo.enabled=false", "threads=1", f"data.width={width}",
              "data.options.n_views=12", f"data.views={views}",
              *([f"depth.pearson_weight={depth_weight}", f"depth.ranking_weight={depth_weight}"] if depth_weight else []),
              f"densify.refine_stop={max(iterations - 50, 100)}"]
    arms = {"none (photometric only)": ["depth.enabled=false"], "fallback: MVS depth": [],
            "oracle: exact depth": ["depth.model=oracle"]}
    results = []
    original = depth_module.load_depth_prior
    try:
        for arm, extra in arms.items():
            cfg = load_config("fast", common + extra)
            if extra == ["depth.model=oracle"]:
                scene_views = pipeline._load(SPEC, cfg).views
                depth_module.load_depth_prior = lambda *a, _views=scene_views, **k: OracleDepthPrior(_views)
            print(f"[bench_priors_fit] {arm} ...", flush=True)
            t = time.perf_counter()
            run = pipeline.fit_scene(SPEC, out_dir=out_root / arm.split(":")[0].split(" ")[0], config=cfg)
            seconds = time.perf_counter() - t
            metrics = json.loads((run / "metrics.json").read_text())
            results.append({"arm": arm, "psnr": float(metrics["test"]["psnr"]), "abs_rel": _depth_abs_rel(run, cfg),
                            "seconds": seconds, "iterations": iterations, "width": width, "views": views,
                            "depth_weight": depth_weight,
                            "run": str(run)})
            print(f"[bench_priors_fit] {results[-1]}", flush=True)
            depth_module.load_depth_prior = original
    finally:
        depth_module.load_depth_prior = original
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--depth-weight", type=float, default=None, help="Pearson and ranking weight (default: preset)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(json.dumps(run_fit_arms(args.iterations, args.out, args.width, args.views, args.depth_weight), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
