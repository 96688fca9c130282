"""One scorer for `recon fit` and `recon eval`: an untouched run re-scores to the fit's
numbers, eval never rewrites metrics.json, and nothing falls back silently."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recon.evaluate.scoring import no_lpips, score_views
from recon.optimise.config import load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """A tiny fit of the procedural scene at a width different from the loader's default,
    so re-reading the ground truth without the fit's loader options would not match."""
    from recon.pipeline import fit_scene

    cfg = load_config("fast", ["data.width=40", "data.options.n_views=8", "optim.iterations=30",
                               "init.method=random", "init.random_points=600", "checkpoint_every=30",
                               "densify.refine_start=10", "densify.refine_every=10", "pseudo.enabled=false", "depth.enabled=false",
                               "threads=1"])
    return fit_scene("builtin:synthetic", out_dir=tmp_path_factory.mktemp("fit") / "run", config=cfg, views=5)


def test_eval_reproduces_fit_and_leaves_metrics_json_alone(fitted_run, capsys):
    from recon.cli import main

    before = (fitted_run / "metrics.json").read_text()
    fit = json.loads(before)
    assert main(["eval", str(fitted_run)]) == 0
    assert (fitted_run / "metrics.json").read_text() == before  # never overwritten
    record = json.loads((fitted_run / "eval.json").read_text())
    assert record["changed"] == []  # untouched run: nothing differs from the fit's inputs
    for key in ("psnr", "ssim_3dgs", "ssim_skimage"):
        assert record["test"][key] == pytest.approx(fit["test"][key], abs=1e-4), key
    for a, b in zip(record["test_views"], fit["test_views"]):
        assert a["name"] == b["name"] and a["psnr"] == pytest.approx(b["psnr"], abs=1e-4)
    assert all(abs(d) < 1e-4 for d in record["difference_from_fit"].values())
    assert "eval.json" in capsys.readouterr().out


def test_eval_from_pngs_says_what_changed(fitted_run):
    from recon.evaluate.rescore import evaluate_run

    fit = json.loads((fitted_run / "metrics.json").read_text())
    record = evaluate_run(fitted_run, from_pngs=True)
    assert any("8-bit" in c for c in record["changed"])
    assert record["test"]["psnr"] == pytest.approx(fit["test"]["psnr"], abs=0.1)  # quantisation only


def test_fit_records_loader_render_settings_and_init(fitted_run):
    scene = json.loads((fitted_run / "scene.json").read_text())
    metrics = json.loads((fitted_run / "metrics.json").read_text())
    assert scene["loader"]["options"]["width"] == 40 and scene["loader"]["options"]["n_views"] == 8
    assert metrics["protocol"]["render_settings"]["sh_degree"] is not None
    assert metrics["init"]["requested"] == "random" and metrics["init"]["used"] == "random"
    assert metrics["fallbacks"] == []
    impl = metrics["protocol"]["metrics"]
    assert impl["headline"]["ssim"] == "ssim_3dgs" and "zero padding" in impl["ssim_3dgs"]


def _views(n=2, masks=True, size=(20, 16)):
    from recon.data.synthetic import make_synthetic_scene

    scene = make_synthetic_scene(seed=0, n_views=n, width=size[0], height=size[1])
    views = list(scene.views)
    if not masks:
        from dataclasses import replace

        views = [replace(v, mask=None) for v in views]
    return views


def test_masked_protocol_without_masks_is_a_recorded_fallback():
    views = _views(masks=False)
    preds = [v.image * 0.9 for v in views]
    scores = score_views(preds, views, "dtu", lpips=no_lpips("test"))
    assert scores.implementations["style"] is None and "psnr_masked" not in scores.summary
    assert len(scores.fallbacks) == 1 and scores.fallbacks[0]["wanted"] == "dtu masked metrics"
    assert views[0].name in scores.fallbacks[0]["reason"]


def test_masked_protocol_with_masks_scores_inside_them():
    views = _views(masks=True)
    assert all(v.mask is not None for v in views)
    preds = [torch.where(v.mask[..., None], v.image, 1.0 - v.image) for v in views]  # wrong only outside
    scores = score_views(preds, views, "dtu", lpips=no_lpips("test"))
    assert scores.fallbacks == [] and math.isinf(scores.summary["psnr_masked"])
    assert scores.summary["psnr"] < 30 and scores.implementations["headline"]["psnr"] == "psnr_masked"


def test_init_fallback_is_recorded():
    """MVS on views that cannot be matched falls back to random: the record says so."""
    from recon.init import initialise

    views = _views(n=2)
    flat = [v.__class__(**{**v.__dict__, "image": torch.full_like(v.image, 0.5)}) for v in views]
    with pytest.warns(RuntimeWarning):
        res = initialise(flat, "mvs", random_points=100, progress=False)
    rec = res.record()
    assert rec["requested"] == "mvs" and rec["used"] == "random" and rec["fallback_reason"]
