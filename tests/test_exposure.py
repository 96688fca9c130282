"""Per-view exposure compensation (recon.optimise.exposure): its config, the transform and its
gauge, checkpoints, and its effect on a generated scene whose training photos were shot at
different exposures: compensated, the held-out views (at view 0's exposure) come out right and
the fitted gains are the ones applied; uncompensated, the Gaussians average the exposures."""

from __future__ import annotations

import json

import pytest
import torch

from recon.errors import ConfigError
from recon.geometry import unproject_depth
from recon.init.points import gaussians_from_points
from recon.optimise import losses
from recon.optimise.config import FitConfig, load_config
from recon.optimise.exposure import ViewExposure
from recon.optimise.trainer import TrainData, Trainer
from recon.render import render

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TRAIN, TEST = (0, 2, 4), (1, 3, 5)
# (gain, bias) per channel applied to training photos 2 and 4 (photo 0 and the test photos keep
# theirs): darker and warmer, darker and bluer; kept below 1 so that nothing clips
SHOTS = {2: ((0.6, 0.55, 0.5), (0.04, 0.02, 0.0)), 4: ((0.75, 0.8, 0.9), (0.0, 0.0, 0.05))}


def test_exposure_is_on_only_for_custom_captures_and_its_keys_parse():
    assert FitConfig().exposure.enabled is False
    for name in ("default", "fast", "llff3", "dtu3", "blender8", "synthetic", "quality-llff3"):
        assert load_config(name).exposure.enabled is False, name
    assert load_config("generic").exposure.enabled is True  # custom captures: photos metered one by one
    e = load_config("llff3", ["exposure.enabled=true", "exposure.lr=0.005", "exposure.start=100"]).exposure
    assert (e.enabled, e.lr, e.start) == (True, 0.005, 100)
    with pytest.raises(ConfigError, match="exposure.lr must be > 0"):
        load_config("fast", ["exposure.lr=0"])
    with pytest.raises(ConfigError, match="random_background"):  # blender8 composites on random colours
        load_config("blender8", ["exposure.enabled=true"])


def test_view_zero_fixes_the_gauge_and_the_others_get_gradients():
    e = ViewExposure(3, enabled=True, lr=0.01)
    rgb = torch.rand(4, 5, 3, requires_grad=True)
    assert e.apply(0, rgb) is rgb  # the reference view: identity
    with torch.no_grad():
        e.log_gain[1] = torch.tensor([0.1, 0.0, -0.2])
        e.bias[1] = torch.tensor([0.0, 0.05, 0.0])
    out = e.apply(1, rgb)
    expected = rgb * torch.tensor([0.1, 0.0, -0.2]).exp() + torch.tensor([0.0, 0.05, 0.0])
    assert torch.allclose(out, expected)
    out.sum().backward()
    assert e.log_gain.grad[1].abs().sum() > 0 and e.bias.grad[1].abs().sum() > 0
    assert e.log_gain.grad[[0, 2]].abs().sum() == 0  # only the view rendered gets a gradient
    off = ViewExposure(3, enabled=False, lr=0.01)
    assert off.apply(2, rgb) is rgb and off.record(["a", "b", "c"]) is None


def test_checkpoint_round_trip_and_a_checkpoint_from_before_exposure():
    a = ViewExposure(3, enabled=True, lr=0.01)
    a.apply(1, torch.rand(2, 2, 3)).sum().backward()
    a.step(1)
    b = ViewExposure(3, enabled=True, lr=0.01)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.log_gain, b.log_gain) and torch.equal(a.bias, b.bias)
    assert b.opt.state_dict()["state"][0]["step"] == 1
    c = ViewExposure(3, enabled=True, lr=0.01)
    c.load_state_dict({"pose_deltas": torch.zeros(3, 6)})  # an older checkpoint: identity, no error
    assert c.log_gain.abs().sum() == 0


@pytest.fixture(scope="module")
def scene():
    from recon.data.synthetic import make_synthetic_scene

    return make_synthetic_scene(seed=1, n_views=6, width=40, height=30)


def _shot(image: torch.Tensor, v: int) -> torch.Tensor:
    if v not in SHOTS:
        return image
    gain, bias = (torch.tensor(x) for x in SHOTS[v])
    return image * gain + bias


def _fit(scene, *overrides) -> tuple[Trainer, dict[int, float]]:
    """300 steps from view 0's exact depth (geometry is not what is tested); PSNR at every camera
    against the photos as the scene renders them, i.e. all at view 0's exposure."""
    cfg = load_config("fast", ["optim.iterations=300", "depth.enabled=false", "pseudo.enabled=false",
                               "densify.enabled=false", "optim.sh_degree_interval=100",
                               "optim.resolution_schedule=[[0,1]]", "exposure.lr=0.01", *overrides])
    views = [scene.views[i] for i in TRAIN]
    data = TrainData(cameras=[v.camera for v in views], images=[_shot(v.image, i) for v, i in zip(views, TRAIN)],
                     names=[v.name for v in views], depth_priors=[None] * len(views), scene_scale=1.0)
    v0 = scene.views[0]
    points = unproject_depth(v0.camera.K, v0.camera.T_cam_world, v0.depth)
    trainer = Trainer(cfg, gaussians_from_points(points, v0.image.reshape(-1, 3)[v0.depth.reshape(-1) > 0], 1), data)
    result = trainer.run()
    settings = trainer.render_settings(trainer.max_sh)
    with torch.no_grad():
        psnr = {i: losses.psnr(render(result.gaussians, [scene.views[i].camera], settings).rgb[0].clamp(0, 1),
                               scene.views[i].image) for i in range(len(scene.views))}
    return trainer, psnr


def test_compensated_fit_renders_every_view_at_the_reference_exposure(scene):
    plain, plain_psnr = _fit(scene)
    comp, comp_psnr = _fit(scene, "exposure.enabled=true")
    # Uncompensated, the Gaussians average three exposures: held-out views come out too dark, and the
    # darker training photos are baked in where they were shot.
    held_out = sum(comp_psnr[i] - plain_psnr[i] for i in TEST) / len(TEST)
    assert held_out > 1.0, (comp_psnr, plain_psnr)
    assert comp_psnr[2] > plain_psnr[2] + 3.0, (comp_psnr, plain_psnr)
    record = comp.exposure.record(list(comp.data.names))
    assert record["reference_view"] == scene.views[0].name
    assert record["views"][scene.views[0].name] == {"gain": [1.0] * 3, "bias": [0.0] * 3}
    for v in SHOTS:  # the fitted transform takes the reference-exposure photo over half of the way to the shot one
        fitted = record["views"][scene.views[v].name]
        image = scene.views[v].image
        mapped = image * torch.tensor(fitted["gain"]) + torch.tensor(fitted["bias"])
        shot = _shot(image, v)
        assert (mapped - shot).abs().mean() < 0.5 * (image - shot).abs().mean(), (v, fitted)
    assert plain.exposure.record(list(plain.data.names)) is None
    json.dumps(record)  # metrics.json-ready


def test_fit_records_the_exposures_and_resumes_them(tmp_path):
    from recon.pipeline import fit_scene

    cfg = load_config("fast", ["data.width=40", "data.options.n_views=6", "optim.iterations=30", "init.method=random",
                               "init.random_points=400", "densify.enabled=false", "depth.enabled=false", "exposure.enabled=true",
                               "exposure.lr=0.01", "checkpoint_every=20", "threads=1"])
    run = fit_scene("builtin:synthetic", out_dir=tmp_path / "run", config=cfg, views=3)
    m = json.loads((run / "metrics.json").read_text())
    rec = m["exposure"]
    names = json.loads((run / "scene.json").read_text())["train_names"]
    assert rec["reference_view"] == names[0] and list(rec["views"]) == names
    assert any(g != 1.0 for n in names[1:] for g in rec["views"][n]["gain"])  # the others were fitted
    # A fit resumed from step 20 continues from the checkpoint's transforms (not from the identity)
    # and ends where the uninterrupted fit ended.
    ckpt = torch.load(run / "checkpoints" / "step_0000020.pt", weights_only=False)
    assert ckpt["exposure_log_gain"][1:].abs().sum() > 0
    for later in (run / "checkpoints").glob("step_*.pt"):
        if later.name != "step_0000020.pt":
            later.unlink()
    fit_scene("builtin:synthetic", out_dir=run, resume=True)
    again = json.loads((run / "metrics.json").read_text())
    assert again["resumed"] is not None and again["exposure"] == rec
