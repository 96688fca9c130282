"""metrics.json's time_breakdown (recon.timing): the stage timer's accounting, and a tiny
fit whose breakdown names every stage and adds up to no more than its total time."""

from __future__ import annotations

import json
import time

import pytest

from recon import timing

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_nested_stages_count_once_and_outside_a_recording_nothing_is_kept():
    with timing.stage("load"):  # no recording: a no-op
        pass
    assert timing.current() is None
    with timing.recording() as times:
        assert timing.current() is times
        with timing.stage("losses"):
            time.sleep(0.02)
            with timing.stage("render_forward"):
                time.sleep(0.03)
        stop = timing.start("write_outputs")
        with timing.stage("eval_score"):
            time.sleep(0.01)
        stop()
        total = times.elapsed()
    assert timing.current() is None
    t = times.totals
    assert t["render_forward"] >= 0.03 and 0.02 <= t["losses"] < 0.03 + 0.02  # the nested render is not in losses
    assert t["eval_score"] >= 0.01 and t["write_outputs"] < 0.01
    assert sum(t.values()) <= total
    out = times.breakdown(total)
    assert set(timing.FIT_STAGES) <= set(out) and out["other"] >= 0 and out["stereo"] == 0.0


def test_per_iteration_medians_count_iterations_where_a_stage_did_not_run_as_zero():
    times = timing.StageTimes()
    for i in range(5):
        with times.stage("backward"):
            time.sleep(0.01)
        if i == 4:  # densification runs in one iteration out of five
            with times.stage("densify"):
                time.sleep(0.02)
        times.end_iteration()
    out = times.breakdown(times.elapsed())
    med = out["per_iteration_median"]
    assert out["iterations"] == 5 and times.samples["densify"][:4] == [0.0] * 4
    assert med["densify"] == 0.0 and 0.01 <= med["backward"] < 0.02 and med["iteration"] >= 0.01
    assert out["densify"] >= 0.02


def test_fit_metrics_carry_a_time_breakdown_that_adds_up(tmp_path):
    from recon.optimise.config import load_config
    from recon.pipeline import fit_scene

    cfg = load_config("fast", ["data.width=40", "data.options.n_views=6", "optim.iterations=30", "threads=1",
                               "densify.refine_start=10", "densify.refine_every=10", "pseudo.start=5",
                               "checkpoint_every=15", "render.backend=reference"])  # no compiled extension needed
    run = fit_scene("builtin:synthetic", out_dir=tmp_path / "run", config=cfg, views=3)
    metrics = json.loads((run / "metrics.json").read_text())
    tb = metrics["time_breakdown"]
    for key in (*timing.FIT_STAGES, "other"):
        assert isinstance(tb[key], float) and tb[key] >= 0, key
    parts = sum(tb[k] for k in (*timing.FIT_STAGES, "other"))
    assert parts <= metrics["total_seconds"] + 0.01  # rounding of each part and of the total
    assert sum(tb[k] for k in timing.FIT_STAGES) <= metrics["total_seconds"] + 0.01
    # the stages that ran here took time; pose recovery (a posed scene) did not run
    for key in ("load", "stereo", "init", "render_forward", "backward", "losses", "optimiser", "densify",
                "eval_render", "write_outputs", "initial_eval"):
        assert tb[key] > 0, key
    assert tb["pose_recovery"] == 0.0 and tb["iterations"] == 30
    med = tb["per_iteration_median"]
    assert set(timing.ITERATION_STAGES) <= set(med) and all(v >= 0 for v in med.values())
    assert 0 < med["render_forward"] <= med["iteration"]
    # the loop's stages fit inside the trainer's own clock (fit_seconds)
    loop = sum(tb[k] for k in (*timing.ITERATION_STAGES, "checkpoint"))
    assert loop <= metrics["fit_seconds"] + 0.05


def test_the_compiled_rasterisers_backward_is_its_own_stage():
    from conftest import require_extension
    from test_render_helpers import cameras, random_gaussians

    from recon.render import render
    from recon.types import RenderSettings

    require_extension()
    g = random_gaussians(200, seed=0)  # leaves that require grad
    with timing.recording() as times:
        out = render(g, cameras(48, 36, n=1), RenderSettings(sh_degree=g.sh_degree, backend="cpu"))
        with timing.stage("backward"):
            out.rgb.square().mean().backward()
    assert times.totals["render_backward"] > 0 and times.totals["backward"] >= 0
    assert g.means.grad is not None
