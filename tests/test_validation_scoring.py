"""The tuning discipline's two scripts (issue 15): benchmarks/validation_fit.py fits on the
protocol's training split and scores VALIDATION views; benchmarks/score_test_views.py then
scores that same model on the protocol's TEST views. The second is only honest if the
validation fit trained the very model a protocol fit trains (the scored list must not reach
the trainer), so its test score must equal the protocol fit's own."""

from __future__ import annotations

import importlib.util
import json
from functools import partial
from pathlib import Path

import pytest

from recon import pipeline
from recon.optimise.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.width=96",
    "optim.iterations=30",
    "init.method=random",
    "init.random_points=800",
    "checkpoint_every=30",
    "optim.resolution_schedule=[[0,1]]",
    "densify.refine_start=10",
    "densify.refine_stop=25",
    "densify.refine_every=5",
    "pseudo.start=5",
    "depth.enabled=false",
    "threads=1",
]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_views_of_a_validation_fit_score_as_the_protocol_fit(tmp_path, monkeypatch):
    validation_fit, score_test_views = _script("validation_fit"), _script("score_test_views")
    cfg = load_config("synthetic", SMALL)
    protocol_run = pipeline.fit_scene("builtin:synthetic", out_dir=tmp_path / "protocol", config=cfg)

    monkeypatch.setattr(pipeline, "_split", partial(validation_fit.validation_split, n_val=2))
    val_run = pipeline.fit_scene(
        "builtin:synthetic", out_dir=tmp_path / "validation", config=load_config("synthetic", SMALL)
    )
    monkeypatch.undo()

    fit = json.loads((protocol_run / "metrics.json").read_text())
    val = json.loads((val_run / "metrics.json").read_text())
    assert val["protocol"]["train"] == fit["protocol"]["train"]
    assert not set(val["protocol"]["test"]) & (set(fit["protocol"]["test"]) | set(fit["protocol"]["train"]))

    record = score_test_views.score_test_views(val_run)
    assert record["test_views"] == fit["protocol"]["test"]
    assert record["validation_views"] == val["protocol"]["test"]
    assert record["test"]["psnr"] == pytest.approx(fit["test"]["psnr"], abs=1e-4)
    assert record["test"]["ssim_3dgs"] == pytest.approx(fit["test"]["ssim_3dgs"], abs=1e-5)
    # and the score is the model's, not a constant: the validation views score differently
    assert abs(val["test"]["psnr"] - fit["test"]["psnr"]) > 1e-3
