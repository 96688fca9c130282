"""The fit: configs, schedules, densification adapter, trainer (seed, resume, NaN), and a
short end-to-end `recon fit` on the procedural scene. Everything runs at tiny sizes."""

from __future__ import annotations

import json

import pytest
import torch

from recon.errors import ConfigError
from recon.init.random import random_gaussians
from recon.optimise.config import FitConfig, load_config, parse_override
from recon.optimise.events import FitControl
from recon.optimise.schedules import exp_decay, sh_degree_at
from recon.optimise.trainer import FitDivergedError, TrainData, Trainer

TINY = [
    "optim.iterations=12", "densify.refine_start=4", "densify.refine_every=4", "densify.grow_grad2d=1e-6",
    "pseudo.start=2", "pseudo.every=2", "depth.ranking_pairs=256", "checkpoint_every=4", "log_every=2",
    "optim.sh_degree_interval=5",
]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def scene():
    from recon.data.synthetic import make_synthetic_scene

    return make_synthetic_scene(seed=1, n_views=6, width=32, height=24)


def _data(scene, with_depth=True) -> TrainData:
    views = [scene.views[i] for i in (0, 1, 2)]
    pts = []
    for v in views:  # exact depth, unprojected: stands in for the MVS points in pseudo views
        ys, xs = torch.nonzero(v.depth > 0, as_tuple=True)
        z = v.depth[ys, xs]
        rays = torch.stack([(xs + 0.5 - v.camera.K[0, 2]) / v.camera.K[0, 0],
                            (ys + 0.5 - v.camera.K[1, 2]) / v.camera.K[1, 1], torch.ones_like(z)], -1)
        T = v.camera.T_world_cam
        pts.append((rays * z[:, None]) @ T[:3, :3].T + T[:3, 3])
    return TrainData(
        cameras=[v.camera for v in views], images=[v.image for v in views], names=[v.name for v in views],
        depth_priors=[(v.depth, "depth") for v in views] if with_depth else [None] * 3,
        prior_points=torch.cat(pts) if with_depth else None, scene_scale=1.0)


def _gaussians(scene, n=300):
    centre = torch.tensor(scene.meta["aabb"]).mean(0)
    return random_gaussians(n, centre, 1.5, 1, torch.Generator().manual_seed(0))


def _config(*extra) -> FitConfig:
    return load_config("fast", [*TINY, *extra])


# ---- config ------------------------------------------------------------------------------


def test_presets_load_and_layer():
    for name in ("default", "fast", "llff3", "dtu3", "blender8", "spare3", "spare9"):
        load_config(name)
    llff = load_config("llff3")
    assert llff.data.protocol == "llff" and llff.optim.iterations == load_config("fast").optim.iterations
    assert load_config("default").to_dict() == FitConfig().to_dict()  # default.yaml is the dataclass


def test_overrides_and_errors(tmp_path):
    cfg = load_config("default", ["optim.iterations=5", "depth.enabled=false", "optim.lr_means=1e-3",
                                  "data.options.images=images_8", "depth.model=/x/y"])
    assert cfg.optim.iterations == 5 and cfg.depth.enabled is False and cfg.optim.lr_means == 1e-3
    assert cfg.data.options == {"images": "images_8"} and cfg.depth.model == "/x/y"
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match="optim.iteratons"):
        load_config("default", ["optim.iteratons=5"])
    with pytest.raises(ConfigError, match="depth.enabled"):
        load_config("default", ["depth.enabled=maybe"])
    with pytest.raises(ConfigError, match="integer"):
        load_config("default", ["optim.iterations=1.5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("default", ["optim.iterations"])
    with pytest.raises(ConfigError, match="presets"):
        load_config("no-such-preset")
    # A resolved config saved in a run loads back to the same values.
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert load_config(str(tmp_path / "config.yaml")).to_dict() == cfg.to_dict()


def test_schedules():
    assert exp_decay(0, 100, 1e-2, 1e-4) == pytest.approx(1e-2)
    assert exp_decay(50, 100, 1e-2, 1e-4) == pytest.approx(1e-3)
    assert exp_decay(500, 100, 1e-2, 1e-4) == pytest.approx(1e-4)
    assert [sh_degree_at(s, 10, 2) for s in (0, 9, 10, 25, 99)] == [0, 0, 1, 2, 2]


# ---- trainer -----------------------------------------------------------------------------


def _run(scene, cfg, checkpoints=None, control=None, state=None, render_fn=None):
    trainer = Trainer(cfg, _gaussians(scene), _data(scene), control=control, render_fn=render_fn,
                      checkpoint_fn=(checkpoints.append if checkpoints is not None else None))
    if state is not None:
        trainer.load_state_dict(state)
    return trainer, trainer.run()


def test_densification_grows_and_caps(scene):
    cfg = _config("densify.max_gaussians=400", "depth.enabled=false", "pseudo.enabled=false")
    trainer, result = _run(scene, cfg)
    counts = [h["num_gaussians"] for h in result.history]
    assert counts[0] == 300 and max(counts) > 300  # a tiny threshold makes everything grow
    assert max(counts) <= 400  # ... but never beyond the cap
    assert len(result.gaussians) == len(trainer.params["sh0"]) == len(trainer.params["shN"])


def test_same_seed_same_result_and_resume(scene):
    """Two runs with one seed are identical; a run stopped after a checkpoint and resumed
    from it ends exactly where an uninterrupted run ends."""
    cfg = _config()
    saved: list = []
    _, a = _run(scene, cfg, checkpoints=saved)
    _, b = _run(scene, cfg)
    for x, y in zip(a.gaussians.tensors(), b.gaussians.tensors()):
        assert torch.equal(x, y)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in a.history)
    assert {"photo", "depth", "pseudo", "reg"} <= set(a.history[-1]) | set(a.history[-2])

    class StopAt:  # interrupts the fit after iteration 6 (checkpoint at 4): loses <= 1 interval
        def __init__(self, control):
            self.control = control

        def on_start(self, e): ...

        def on_step(self, e):
            if e.iteration == 6:
                self.control.stop()

        def on_finish(self, e): ...

    control = FitControl()
    partial: list = []
    trainer = Trainer(cfg, _gaussians(scene), _data(scene), control=control, listeners=[StopAt(control)],
                      checkpoint_fn=partial.append)
    stopped = trainer.run()
    assert stopped.stopped and stopped.iteration == 6 and partial[-1]["iteration"] == 4
    _, resumed = _run(scene, cfg, state=partial[-1])
    assert resumed.iteration == 12
    for x, y in zip(a.gaussians.tensors(), resumed.gaussians.tensors()):
        assert torch.equal(x, y)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(scene):
    from recon.render import render

    calls = {"n": 0}

    def poisoned(gaussians, cameras, settings):
        out = render(gaussians, cameras, settings)
        calls["n"] += 1
        if calls["n"] >= 7:  # after the checkpoint at iteration 4
            out.rgb = out.rgb * float("nan")
        return out

    cfg = _config("pseudo.enabled=false")
    saved: list = []
    with pytest.raises(FitDivergedError, match=r"not finite at iteration \d+.*checkpoint"):
        _run(scene, cfg, checkpoints=saved, render_fn=poisoned)
    assert saved and saved[-1]["iteration"] == 4
    assert all(torch.isfinite(p).all() for p in saved[-1]["params"].values())


def test_pose_refinement_moves_only_refined_views(scene):
    cfg = _config("densify.enabled=false", "depth.enabled=false", "pose.lr=1e-3")
    data = _data(scene, with_depth=False)
    true = [c.T_cam_world.clone() for c in data.cameras]
    trainer = Trainer(cfg, _gaussians(scene), data, refine_poses=True)
    result = trainer.run()
    assert torch.equal(result.cameras[0].T_cam_world, true[0])  # view 0 fixes the gauge
    moved = max(float((result.cameras[v].T_cam_world - true[v]).abs().max()) for v in (1, 2))
    assert 0 < moved < 0.1
    assert trainer.pose_deltas.grad is None or torch.isfinite(trainer.pose_deltas.grad).all()


def test_learned_prior_hooks_are_called(scene):
    """A monocular depth model guides pseudo views (on their rendered image) and a
    diffusion refiner supplies pseudo targets; both are plain objects here."""
    from recon.priors.depth import DepthMap

    class Mono:
        name = "stub"
        calls = 0

        def predict(self, image):
            Mono.calls += 1
            return DepthMap(values=image.mean(-1) + 0.1, kind="disparity")  # [H, W]

    class Refiner:
        batches = []

        def refine(self, images):
            Refiner.batches.append(images.shape)
            return images.flip(-1)  # any change of the images is fine

    cfg = _config("diffusion.enabled=true", "diffusion.start=3", "diffusion.every=5", "diffusion.num_views=2",
                  "densify.enabled=false")
    trainer = Trainer(cfg, _gaussians(scene), _data(scene), depth_model=Mono(), refiner=Refiner())
    result = trainer.run()
    assert Mono.calls == len([i for i in range(2, 13) if i % 2 == 0])  # every pseudo step
    assert Refiner.batches == [(2, 24, 32, 3)] * 2  # refreshed at iterations 3 and 8
    keys = set().union(*(h.keys() for h in result.history))
    assert {"pseudo", "diffusion"} <= keys


def test_resolution_schedule_renders_coarse_then_full(scene):
    from recon.render import render

    sizes = []

    def recording(gaussians, cameras, settings):
        sizes.append((cameras[0].width, cameras[0].height))
        return render(gaussians, cameras, settings)

    cfg = _config("optim.resolution_schedule=[[0, 2], [7, 1]]", "pseudo.enabled=false", "optim.iterations=8")
    _run(scene, cfg, render_fn=recording)
    assert sizes == [(16, 12)] * 6 + [(32, 24)] * 2
    with pytest.raises(ConfigError, match="resolution_schedule"):
        _config("optim.resolution_schedule=[[0, 0.5]]")


# ---- end to end ----------------------------------------------------------------------------


def test_recon_fit_end_to_end(tmp_path, capsys):
    from recon.cli import main
    from recon.export.ply import read_ply

    run = tmp_path / "run"
    args = ["fit", "builtin:synthetic", "--views", "5", "--config", "fast", "--out", str(run), "--no-progress",
            "--set", "data.width=40", "--set", "data.options.n_views=8", "--set", "optim.iterations=60",
            "--set", "init.method=random", "--set", "init.random_points=800", "--set", "checkpoint_every=20",
            "--set", "densify.refine_start=20", "--set", "densify.refine_every=20", "--set", "pseudo.start=10",
            "--set", "pose.refine_focal=auto"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "Gaussians" in out and str(run / "report.html") in out  # the summary names the report
    for name in ("config.yaml", "point_cloud.ply", "metrics.json", "cameras.json", "scene.json",
                 "training_curve.png", "log.jsonl", "report.html"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["num_views"] == 3 and metrics["seed"] == 0
    assert metrics["test"]["psnr"] > metrics["test_initial"]["psnr"]  # the fit helped on held-out views
    # No LPIPS weights exist here: the value is null and the reason is stated, never made up.
    assert metrics["test"]["lpips"] is None and "LPIPS" in metrics["test"]["lpips_reason"]
    assert metrics["protocol"]["views"] == 5 and metrics["protocol"]["resolution"] == [40, 30]
    assert metrics["num_gaussians"] == len(read_ply(run / "point_cloud.ply"))
    assert metrics["fit_seconds"] > 0 and metrics["peak_rss_bytes"] > 0
    # What rasterised, with the instruction set and thread count that fix its float rounding.
    compute = metrics["compute"]
    assert (compute["requested"], compute["used"], compute["fallback_reason"]) == ("auto", "cpu", None)
    assert compute["cpu_isa"] in ("generic", "avx2", "avx512") and compute["threads"] == torch.get_num_threads()
    assert "cpu_model" in compute  # two CPU models with one ISA round differently: say which one ran
    assert not [f for f in metrics["fallbacks"] if f["stage"] == "render"]
    # A posed dataset's cameras are taken as given: pose.refine and pose.refine_focal "auto" leave them.
    refined = metrics["camera_refinement"]
    assert refined["poses"] is False and refined["focal"] is False and "test_focal_scales" not in refined
    assert [(g["initial_fx"], g["scale"]) for g in refined["focal_groups"]] == [(refined["focal_groups"][0]["final_fx"], 1.0)]
    cams = json.loads((run / "cameras.json").read_text())["cameras"]
    assert sorted(c["split"] for c in cams) == ["test"] * 3 + ["train"] * 5
    scene_rec = json.loads((run / "scene.json").read_text())
    assert scene_rec["scene"] == "builtin:synthetic" and len(scene_rec["train"]) == 5
    assert len(list((run / "renders" / "test").glob("*.png"))) == 3
    assert len(list((run / "renders" / "train").glob("*.png"))) == 5
    assert len(list((run / "renders" / "depth").glob("*.png"))) == 8
    assert load_config(str(run / "config.yaml")).optim.iterations == 60
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert ckpts and ckpts[-1].name == "step_0000060.pt"
    # Resuming a finished run reloads the last checkpoint and only rewrites the outputs.
    assert main(["fit", "--resume", str(run), "--no-progress"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"]["psnr"] == pytest.approx(metrics["test"]["psnr"], abs=1e-9)


def test_fit_names_the_reference_renderer_when_the_extension_fails(tmp_path, monkeypatch):
    """backend=auto falls back to the dense torch renderer when the C++ extension cannot be
    built; metrics.json says so under fallbacks and compute, never silently."""
    import recon.render as rr
    from recon.cli import main
    from recon.errors import MissingDependencyError
    from recon.render import _ext

    def broken(verbose=False):
        raise MissingDependencyError("no C++ compiler found (test)")

    monkeypatch.setattr(_ext, "load", broken)
    monkeypatch.setattr(rr, "_auto_fallback_warned", False)
    run = tmp_path / "run"
    args = ["fit", "builtin:synthetic", "--views", "3", "--config", "fast", "--out", str(run), "--no-progress",
            "--set", "data.width=32", "--set", "optim.iterations=4", "--set", "init.method=random",
            "--set", "init.random_points=200", "--set", "pseudo.start=100"]
    with pytest.warns(UserWarning, match="reference renderer"):
        assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["compute"]["used"] == "reference" and "no C++ compiler" in metrics["compute"]["fallback_reason"]
    assert "cpu_isa" not in metrics["compute"]
    render_fallbacks = [f for f in metrics["fallbacks"] if f["stage"] == "render"]
    assert render_fallbacks == [{"stage": "render", "wanted": "cpu", "used": "reference",
                                 "reason": metrics["compute"]["fallback_reason"]}]


def test_unposed_folder_recovers_poses_and_fits(tmp_path):
    """A plain folder of photos (no poses): pycolmap recovers the cameras, the fit refines
    them with the Gaussians, and the run records that the input was unposed."""
    import shutil

    from conftest import shared_scene

    from recon.pipeline import fit_scene

    fern = shared_scene("llff_fern") / "images_8"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("image002.png", "image004.png", "image006.png", "image008.png", "image009.png"):
        shutil.copy(fern / name, photos / name)
    config = load_config("fast", ["data.width=252", "optim.iterations=40", "init.method=random",
                                  "init.random_points=2000", "checkpoint_every=40", "pseudo.enabled=false",
                                  "depth.enabled=false", "pose.refine_focal=auto"])
    run = fit_scene(str(photos), out_dir=tmp_path / "run", config=config, views=3)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"]["posed"] is False
    assert metrics["test"]["num_views"] == 2
    assert metrics["test"]["psnr"] > metrics["test_initial"]["psnr"]
    cams = json.loads((run / "cameras.json").read_text())["cameras"]
    assert len(cams) == 5 and all(abs(c["K"][0][0] - c["K"][1][1]) < 1e-3 * c["K"][0][0] for c in cams)
    # The SfM focal is refined with the poses (pose.refine_focal=auto), one scale for the shared camera,
    # and the registered test views (same camera) render with the refined focal.
    (group,) = metrics["camera_refinement"]["focal_groups"]
    assert metrics["camera_refinement"]["focal"] is True and group["views"] == [0, 1, 2]
    assert group["initial_fx"] == pytest.approx(metrics["protocol"]["poses"]["train_poses"]["focal_px"], abs=0.01)
    assert metrics["camera_refinement"]["test_focal_scales"] == [pytest.approx(group["scale"])] * 2
    assert all(c["K"][0][0] == pytest.approx(group["final_fx"], rel=1e-5) for c in cams)
