"""The fit's schedules (recon.optimise.schedules) and the trainer following them."""

from __future__ import annotations

import pytest
import torch
from test_render_helpers import cameras, random_gaussians

from recon.optimise import losses
from recon.optimise.config import DiffusionConfig, load_config
from recon.optimise.schedules import diffusion_refresh_due, diffusion_weight, resolution_factor_at
from recon.optimise.trainer import TrainData, Trainer


def test_diffusion_weight_warms_up_holds_and_decays():
    c = DiffusionConfig(every=100, start=200, stop=1000, weight=0.2, warmup=100, final_weight=0.0)
    assert diffusion_weight(199, c) == 0.0
    assert diffusion_weight(249, c) == pytest.approx(0.1)  # half-way up the warm-up
    assert diffusion_weight(300, c) == pytest.approx(0.2)  # peak
    assert diffusion_weight(650, c) == pytest.approx(0.1)  # half-way down the decay
    assert diffusion_weight(1000, c) == pytest.approx(0.0) and diffusion_weight(1001, c) == 0.0
    assert [i for i in range(600) if diffusion_refresh_due(i, c)] == [200, 300, 400, 500]
    constant = DiffusionConfig(start=5, weight=0.3)  # the defaults: constant weight from start, no stop
    assert [diffusion_weight(i, constant) for i in (4, 5, 10_000)] == [0.0, 0.3, 0.3]


def test_resolution_factor_follows_the_last_reached_entry():
    schedule = [[500, 1], [0, 4], [200, 2]]
    assert [resolution_factor_at(i, schedule) for i in (0, 199, 200, 499, 500, 10_000)] == [4, 4, 2, 2, 1, 1]


class _ShiftRefiner:
    """Stands in for the img2img refiner: the 'refined' target is the render made brighter."""

    def __init__(self):
        self.calls = 0

    def refine(self, images):
        self.calls += 1
        return (images + 0.25).clamp(0, 1)


def test_trainer_weights_the_diffusion_loss_by_the_schedule():
    cfg = load_config("default", ["diffusion.enabled=true", "diffusion.start=3", "diffusion.every=4",
                                  "diffusion.warmup=4", "diffusion.weight=0.5", "diffusion.num_views=1",
                                  "render.backend=reference"])
    cams = cameras(24, 16, n=2)
    data = TrainData(cameras=cams, images=[torch.rand(16, 24, 3) for _ in cams], names=["a", "b"])
    refiner = _ShiftRefiner()
    trainer = Trainer(cfg, random_gaussians(40, sh_degree=0, grad=False), data, refiner=refiner)
    assert trainer._diffusion_loss(2, 0) is None  # before start: no term, no refresh
    for it in (3, 4, 6, 7):
        loss = trainer._diffusion_loss(it, 0)
        cam, target = trainer.pseudo_targets[0]
        with torch.no_grad():
            l1 = losses.l1(trainer.render_fn(trainer.gaussians(), [cam], trainer.render_settings(0)).rgb[0], target)
        assert float(loss.detach()) == pytest.approx(diffusion_weight(it, cfg.diffusion) * float(l1), rel=1e-5)
    assert refiner.calls == 2  # refreshed at 3 and 7


def _transparent(n: int = 30):
    g = random_gaussians(n, sh_degree=0, grad=False)
    return type(g)(g.means, g.log_scales, g.quats, torch.full_like(g.opacity_logits, -30.0), g.sh)


def test_random_background_composites_target_and_render_on_one_random_colour():
    from recon.errors import ConfigError
    from recon.render import render

    cfg = load_config("default", ["optim.random_background=true", "render.backend=reference", "densify.enabled=false",
                                  "regularise.enabled=false", "depth.enabled=false", "pseudo.enabled=false"])
    cams = cameras(24, 16, n=2)
    images = [torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with pytest.raises(ConfigError, match="needs an object mask"):
        Trainer(cfg, _transparent(), TrainData(cameras=cams, images=images, names=["a", "b"]))
    backgrounds = []

    def spy(g, cs, settings):
        backgrounds.append(settings.background)
        return render(g, cs, settings)

    masks = [torch.zeros(16, 24, dtype=torch.bool)] * 2  # all background
    data = TrainData(cameras=cams, images=images, names=["a", "b"], masks=masks)
    trainer = Trainer(cfg, _transparent(), data, render_fn=spy)
    # Nothing is opaque: the render is the background, and so is the target on background pixels.
    assert [trainer.step(it)["photo"] for it in (1, 2, 3)] == pytest.approx([0.0] * 3, abs=1e-6)
    assert len(set(backgrounds)) == 3  # a new colour every step
    assert trainer.pyramid.level_masks(2.0)[0].shape == (8, 12)  # masks follow the coarse-to-fine levels
    plain = Trainer(load_config("default", ["render.backend=reference", "densify.enabled=false",
                                            "regularise.enabled=false", "depth.enabled=false",
                                            "pseudo.enabled=false"]), _transparent(), data)
    assert plain.step(1)["photo"] > 0.1  # without it the photographs' background is the target


def _cpu_steps(fill: bool, steps: int = 4) -> dict[str, torch.Tensor]:
    """Parameters after a few CPU-backend steps with every loss the llff3 preset uses."""
    cfg = load_config("llff3", ["render.backend=cpu", "binocular.start=0", "pseudo.enabled=false",
                                "optim.resolution_schedule=[[0, 1]]"])
    cams = cameras(40, 32, n=2)
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(32, 40, 3, generator=gen) for _ in cams]
    priors = [(1.0 + torch.rand(32, 40, generator=gen), "depth") for _ in cams]
    data = TrainData(cameras=cams, images=images, names=["a", "b"], depth_priors=priors)
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)  # as recon.pipeline.fit_scene runs the trainer
        torch.utils.deterministic.fill_uninitialized_memory = fill
        trainer = Trainer(cfg, random_gaussians(300, seed=2, sh_degree=1, grad=False), data)
        records = [trainer.step(it) for it in range(1, steps + 1)]
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
    assert "binocular" in records[-1] and "depth" in records[-1]
    return {k: p.detach().clone() for k, p in trainer.params.items()}


def test_steps_do_not_read_uninitialised_memory():
    """recon.pipeline.fit_scene turns off deterministic mode's NaN fill of new tensors (a few
    per cent of each iteration): every kernel a step runs must write its outputs in full, so
    the fill cannot change a result."""
    from recon.render import available_backends

    if "cpu" not in available_backends():
        pytest.skip("CPU extension unavailable")
    filled, unfilled = _cpu_steps(fill=True), _cpu_steps(fill=False)
    for key in filled:
        assert torch.equal(filled[key], unfilled[key]), key


def _binocular_trainer(downscale: int, render_fn=None) -> Trainer:
    cfg = load_config("default", ["render.backend=reference", "densify.enabled=false", "regularise.enabled=false",
                                  "depth.enabled=false", "pseudo.enabled=false", "binocular.enabled=true",
                                  "binocular.start=0", f"binocular.downscale={downscale}"])
    cams = cameras(24, 16, n=2)
    images = [torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    g = random_gaussians(60, seed=1, sh_degree=0, grad=False)
    return Trainer(cfg, g, TrainData(cameras=cams, images=images, names=["a", "b"]), render_fn=render_fn)


def test_binocular_downscale_renders_and_compares_the_shifted_camera_at_the_coarser_level():
    from recon.errors import ConfigError
    from recon.render import render

    for downscale, expected in ((1, [(24, 16), (24, 16)]), (2, [(24, 16), (12, 8)])):
        sizes = []

        def spy(g, cs, settings, sizes=sizes):
            sizes.append((cs[0].width, cs[0].height))
            return render(g, cs, settings)

        record = _binocular_trainer(downscale, spy).step(1)
        assert "binocular" in record and record["binocular"] > 0
        assert sizes == expected  # the training render, then the shifted camera's
    with pytest.raises(ConfigError, match="downscale"):
        load_config("default", ["binocular.downscale=0"])


def test_binocular_level_averages_depth_and_keeps_pixels_without_depth_out():
    trainer = _binocular_trainer(2)
    depth = torch.full((16, 24), 2.0, requires_grad=True)
    with torch.no_grad():
        depth[0, 0] = 0.0  # nothing rendered there
        depth[4:6, 4:6] = 4.0
    cam = trainer.train_camera(0, (24, 16))
    small_cam, small, gt = trainer._binocular_level(trainer.render_settings(0), cam, depth, 0, 2.0)
    assert (small_cam.width, small_cam.height) == (12, 8) and torch.allclose(small_cam.K[:2], cam.K[:2] / 2)
    values = small.detach()
    assert values.shape == (8, 12) and float(values[0, 0]) == 0.0  # a partly covered pixel has no depth
    assert float(values[2, 2]) == 4.0 and float(values[3, 3]) == 2.0
    assert torch.equal(gt, trainer.pyramid.level(2.0)[1][0])
    small.sum().backward()  # differentiable in the training render's depth
    assert float(depth.grad[0, 0]) == 0.0 and float(depth.grad[5, 5]) == pytest.approx(0.25)


def test_training_psnr_is_computed_on_logged_steps_only():
    """The per-step PSNR readout is a float64 pass over the image: only logged steps (every
    log_every, the first, the last) compute it; the other steps' events repeat the latest."""
    cfg = load_config("default", ["render.backend=reference", "densify.enabled=false", "depth.enabled=false",
                                  "pseudo.enabled=false", "log_every=3", "optim.iterations=7"])
    cams = cameras(24, 16, n=2)
    images = [torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    events = []

    class Listener:
        def on_start(self, event):
            pass

        def on_step(self, event):
            events.append(event.psnr)

        def on_finish(self, event):
            pass

    trainer = Trainer(cfg, random_gaussians(60, seed=1, sh_degree=0, grad=False),
                      TrainData(cameras=cams, images=images, names=["a", "b"]), listeners=[Listener()])
    result = trainer.run()
    assert [h["iteration"] for h in result.history] == [1, 3, 6, 7]
    assert [h["psnr"] for h in result.history] == [events[0], events[2], events[5], events[6]]
    assert events[1] == events[0] and events[3] == events[4] == events[2]
    assert len({events[0], events[2], events[5], events[6]}) == 4  # a new readout on each logged step


def _pseudo_trainer(downscale: int, render_fn) -> Trainer:
    cfg = load_config("default", ["render.backend=reference", "densify.enabled=false", "regularise.enabled=false",
                                  "binocular.enabled=false", "pseudo.start=0", "pseudo.every=1",
                                  f"pseudo.downscale={downscale}"])
    cams = cameras(24, 16, n=2)
    images = [torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    g = random_gaussians(60, seed=1, sh_degree=0, grad=False)
    data = TrainData(cameras=cams, images=images, names=["a", "b"], prior_points=g.means.clone())
    return Trainer(cfg, g, data, render_fn=render_fn)


def test_pseudo_downscale_renders_the_pseudo_view_at_the_coarser_level():
    from recon.errors import ConfigError
    from recon.render import render

    for downscale, expected in ((1, [(24, 16), (24, 16)]), (2, [(24, 16), (12, 8)])):
        sizes = []

        def spy(g, cs, settings, sizes=sizes):
            sizes.append((cs[0].width, cs[0].height))
            return render(g, cs, settings)

        record = _pseudo_trainer(downscale, spy).step(1)
        assert "pseudo" in record
        assert sizes == expected  # the training render, then the pseudo view's
    with pytest.raises(ConfigError, match="pseudo.every and pseudo.downscale"):
        load_config("default", ["pseudo.downscale=0"])


def _adam_trainer(fused: bool) -> Trainer:
    cfg = load_config("default", ["render.backend=reference", "densify.enabled=false", "depth.enabled=false",
                                  "pseudo.enabled=false", f"optim.fused_adam={str(fused).lower()}"])
    cams = cameras(24, 16, n=2)
    images = [torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return Trainer(cfg, random_gaussians(60, seed=1, sh_degree=0, grad=False),
                   TrainData(cameras=cams, images=images, names=["a", "b"]))


def test_fused_adam_is_the_default_and_takes_the_same_steps_as_torch_adam():
    fused, plain = _adam_trainer(True), _adam_trainer(False)
    assert all(o.param_groups[0]["fused"] is True for o in fused.optimizers.values())
    assert all(not o.param_groups[0]["fused"] for o in plain.optimizers.values())
    for it in (1, 2, 3):
        fused.step(it)
        plain.step(it)
    for key, p in fused.params.items():  # one update rule: only float rounding differs
        assert torch.allclose(p, plain.params[key], rtol=1e-5, atol=1e-6), key
    # a checkpoint of the torch-Adam run resumes with this config's (fused) optimiser
    resumed = _adam_trainer(True)
    resumed.load_state_dict(plain.state_dict())
    assert all(o.param_groups[0]["fused"] is True for o in resumed.optimizers.values())
    resumed.step(4)
    assert resumed.is_finite()
