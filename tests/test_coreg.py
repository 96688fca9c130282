"""CoR-GS co-regularisation (recon.optimise.coreg): its config, the two-sided photometric loss,
co-pruning of planted outliers, that co-regularised fields agree more at held-out cameras than
independent ones, and the pipeline's record and refusal to resume. Tiny generated scenes."""

from __future__ import annotations

import json

import pytest
import torch

from recon.errors import ConfigError
from recon.init.random import random_gaussians
from recon.optimise import _fused_ssim, losses
from recon.optimise.config import FitConfig, load_config
from recon.optimise.coreg import CoRegularisation, co_prune_masks, partner_config
from recon.optimise.trainer import TrainData, Trainer
from recon.types import Gaussians

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def scene():
    from recon.data.synthetic import make_synthetic_scene

    return make_synthetic_scene(seed=1, n_views=6, width=32, height=24)


def _data(scene, train=(0, 2, 4)) -> TrainData:
    views = [scene.views[i] for i in train]
    return TrainData(
        cameras=[v.camera for v in views],
        images=[v.image for v in views],
        names=[v.name for v in views],
        depth_priors=[None] * len(views),
        scene_scale=1.0,
    )


def _gaussians(scene, n=300, seed=0) -> Gaussians:
    centre = torch.tensor(scene.meta["aabb"]).mean(0)
    return random_gaussians(n, centre, 1.5, 1, torch.Generator().manual_seed(seed))


def _config(*extra):
    return load_config(
        "fast",
        [
            "optim.iterations=40",
            "depth.enabled=false",
            "pseudo.enabled=false",
            "densify.enabled=false",
            "log_every=10",
            "optim.sh_degree_interval=20",
            *extra,
        ],
    )


# ---- config -----------------------------------------------------------------------------


def test_coreg_is_off_by_default_and_its_keys_parse():
    assert FitConfig().coreg.enabled is False
    for name in ("default", "fast", "llff3", "dtu3", "blender8", "synthetic", "generic", "quality-llff3"):
        assert load_config(name).coreg.enabled is False, name
    cfg = load_config(
        "llff3",
        [
            "coreg.enabled=true",
            "coreg.weight=0.5",
            "coreg.prune_threshold=0.1",
            "coreg.every=2",
            "coreg.downscale=2",
            "coreg.prune=false",
        ],
    )
    c = cfg.coreg
    assert (c.enabled, c.weight, c.prune_threshold, c.every, c.downscale, c.prune) == (True, 0.5, 0.1, 2, 2, False)
    assert partner_config(cfg).seed == cfg.seed + 1 and partner_config(cfg).coreg is cfg.coreg
    for bad in ("coreg.every=0", "coreg.prune_threshold=0", "coreg.ssim_weight=2", "coreg.prune_every=0"):
        with pytest.raises(ConfigError, match="coreg"):
            load_config("fast", [bad])
    with pytest.raises(ConfigError, match="coreg.wieght"):
        load_config("fast", ["coreg.wieght=1"])


# ---- the loss ---------------------------------------------------------------------------


def test_mutual_photometric_has_the_full_gradient_in_both_renders():
    """The fused SSIM differentiates its first argument only; the two-sided loss must still equal
    photometric(a, b) with both images free (torch's SSIM path), in value and in both gradients."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(24, 32, 3, generator=g)
    a0 = (base + 0.1 * torch.rand(24, 32, 3, generator=g)).clamp(0, 1)
    b0 = (base + 0.1 * torch.rand(24, 32, 3, generator=g)).clamp(0, 1)
    if not _fused_ssim.usable(a0, b0):
        pytest.skip("the compiled SSIM kernel is not available here")
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    loss = losses.mutual_photometric(a, b, 0.2)
    loss.backward()
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ref = losses.photometric(ra, rb, 0.2)  # b requires grad: torch's differentiable SSIM
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(a.grad, ra.grad, atol=1e-7, rtol=1e-3)
    assert torch.allclose(b.grad, rb.grad, atol=1e-7, rtol=1e-3)
    assert float(b.grad.abs().sum()) > 0


# ---- co-pruning -------------------------------------------------------------------------


def test_co_prune_masks_are_relative_to_the_distance_from_the_cameras():
    cams = torch.zeros(1, 3)
    a = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 10.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[0.04, 0.0, 1.0], [0.4, 0.0, 10.0], [0.2, 0.0, 1.5]])
    far_a, far_b = co_prune_masks(a, b, cams, 0.05)
    # 0.04 at depth 1 and 0.4 at depth 10 are both within 5 %; nothing of A is within 5 % of B's third
    assert far_a.tolist() == [False, False, False] and far_b.tolist() == [False, False, True]


def test_co_pruning_removes_planted_outliers_and_keeps_adam_state_consistent(scene):
    """Field A = the partner's Gaussians (moved a little) + planted outliers far from everything of the
    partner: one co-pruning step removes exactly the outliers from A and nothing from the partner, and
    both fields train on afterwards (Adam's moments and the densification state were cut with them)."""
    cfg = _config("densify.enabled=true", "densify.refine_start=1000")
    inliers = _gaussians(scene, 300)
    gen = torch.Generator().manual_seed(3)
    centre = torch.tensor(scene.meta["aabb"]).mean(0)
    n_out = 25
    far = centre + torch.nn.functional.normalize(torch.randn(n_out, 3, generator=gen), dim=-1) * 8.0
    outliers = random_gaussians(n_out, centre, 1.0, 1, gen)
    outliers = Gaussians(far, outliers.log_scales, outliers.quats, outliers.opacity_logits, outliers.sh)
    moved = inliers.means + 0.005 * torch.randn(inliers.means.shape, generator=gen)
    field = Gaussians(
        torch.cat([moved, outliers.means]),
        torch.cat([inliers.log_scales, outliers.log_scales]),
        torch.cat([inliers.quats, outliers.quats]),
        torch.cat([inliers.opacity_logits, outliers.opacity_logits]),
        torch.cat([inliers.sh, outliers.sh]),
    )
    data = _data(scene)
    a = Trainer(cfg, field, data)
    b = Trainer(partner_config(cfg), inliers, data)
    coupling = a.coupling = CoRegularisation(cfg.coreg, b, cfg.seed)
    a.step(1), b.step(1)  # Adam moments and densification statistics exist now
    kept_before = a.params["means"][:300].detach().clone()
    removed = coupling.co_prune(a)
    assert removed == (n_out, 0)
    assert len(a.params["means"]) == 300 and len(b.params["means"]) == 300
    assert torch.equal(a.params["means"].detach(), kept_before)  # the inliers stay, the outliers went
    for t in (a, b):
        for k, p in t.params.items():
            state = t.optimizers[k].state[p]
            assert state["exp_avg"].shape == p.shape, k
        assert all(
            v.shape[0] == len(t.params["means"]) for v in t.densifier.state.values() if isinstance(v, torch.Tensor)
        )
    a.step(2), b.step(2)
    assert a.is_finite() and b.is_finite()
    assert coupling.record()["pruned"] == {"field": n_out, "partner": 0}


# ---- the effect -------------------------------------------------------------------------


def _disagreement(a: Trainer, b: Trainer, cameras) -> float:
    with torch.no_grad():
        s = a.render_settings(a.max_sh)
        ra = a.render_fn(a.gaussians(), cameras, s).rgb
        rb = b.render_fn(b.gaussians(), cameras, s).rgb
    return float((ra - rb).abs().mean())


def test_coregularised_fields_disagree_less_at_held_out_cameras(scene):
    """Two fields from one initialisation with different seeds (view order, dropout): trained
    independently they diverge at the held-out cameras; with the co-regularisation term they agree
    markedly more. Fails if the term is left out or does not reach the partner field."""
    held_out = [scene.views[i].camera for i in (1, 3, 5)]
    results, partners = {}, {}
    for on in (False, True):
        cfg = _config(
            "regularise.dropout_rate=0.3",
            f"coreg.enabled={str(on).lower()}",
            "coreg.start=1",
            "coreg.weight=1.0",
            "coreg.prune=false",
        )
        g, data = _gaussians(scene, 400), _data(scene)
        a, b = Trainer(cfg, g, data), Trainer(partner_config(cfg), g, data)
        if on:
            a.coupling = CoRegularisation(cfg.coreg, b, cfg.seed)
            a.run()
            assert b.iteration == cfg.optim.iterations and a.coupling.record()["loss_steps"] == 40
            assert "coreg" in a.history[-1]
        else:
            a.run(), b.run()
        results[on], partners[on] = _disagreement(a, b, held_out), b.params["means"].detach()
    # measured: 0.018 independent, 0.0045 co-regularised (0.0065 with the partner's render detached)
    assert results[True] < 0.5 * results[False], results
    # the term's gradient reached the partner too: it did not train as it does alone (a detached
    # partner render leaves it bit-identical to the independent one)
    assert not torch.equal(partners[True], partners[False])


# ---- the pipeline -----------------------------------------------------------------------


def test_fit_records_coregularisation_and_refuses_to_resume_it(tmp_path):
    from recon.pipeline import fit_scene

    cfg = load_config(
        "fast",
        [
            "data.width=40",
            "data.options.n_views=6",
            "optim.iterations=30",
            "init.method=random",
            "init.random_points=400",
            "densify.refine_start=10",
            "densify.refine_every=10",
            "pseudo.start=5",
            "coreg.enabled=true",
            "coreg.start=5",
            "coreg.prune_every=10",
            "checkpoint_every=100",
            "threads=1",
        ],
    )
    seen = []

    class Listener:
        def on_start(self, e):
            seen.append("start")

        def on_step(self, e):
            seen.append(e.iteration)

        def on_finish(self, e):
            seen.append("finish")

    run = fit_scene("builtin:synthetic", out_dir=tmp_path / "run", config=cfg, views=3, listeners=(Listener(),))
    assert seen == ["start", *range(1, 31), "finish"]  # one fit for the listeners, not two
    m = json.loads((run / "metrics.json").read_text())
    rec = m["coreg"]
    assert rec["enabled"] is True and rec["loss_steps"] == 26 and rec["prune_steps"] == 2
    assert rec["partner_seed"] == 1 and rec["partner_num_gaussians"] > 0
    assert set(rec["pruned"]) == {"field", "partner"}
    with pytest.raises(ConfigError, match="coreg.enabled=true"):
        fit_scene("builtin:synthetic", out_dir=run, resume=True)
