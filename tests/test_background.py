"""render.background: the colour behind the Gaussians (recon.optimise.background). The
mean colour of the training images, on a generated scene whose end views see beyond the
frames of the training views, scores those views better than black."""

from __future__ import annotations

import pytest
import torch
from conftest import depth_points

from recon.errors import ConfigError
from recon.optimise.background import fit_background

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_modes():
    images = [torch.full((4, 6, 3), 0.2), torch.full((2, 3, 3), 0.8)]
    images[1][..., 2] = 0.5
    mean = fit_background("mean", None, images)  # pixel-weighted: 24 pixels of one, 6 of the other
    assert mean == pytest.approx((0.32, 0.32, 0.26), abs=1e-6)
    assert fit_background("scene", None, images) == (0.0, 0.0, 0.0)
    assert fit_background("scene", (1.0, 1.0, 1.0), images) == (1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="composited"):  # Blender: the images need their own colour
        fit_background("mean", (1.0, 1.0, 1.0), images)
    with pytest.raises(ConfigError, match="render.background must be one of"):
        fit_background("grey", None, images)


def test_config_default_keeps_the_scene_background():
    from recon.optimise.config import load_config

    assert load_config("default").render.background == "scene"
    assert load_config("llff3").render.background == "mean"


def test_mean_background_scores_views_beyond_the_training_frames_better():
    """Three middle views of an orbit train; the two end views see ground and sky no training
    view saw. Black there is far from the scene's colours; the training images' mean is not,
    and the training views themselves fit as well with it."""
    from recon.data.synthetic import make_synthetic_scene
    from recon.init.points import gaussians_from_points
    from recon.optimise import losses
    from recon.optimise.config import load_config
    from recon.optimise.trainer import TrainData, Trainer
    from recon.render import render

    scene = make_synthetic_scene(seed=2, n_views=9, width=64, height=48)
    train, test = [scene.views[i] for i in (3, 4, 5)], [scene.views[i] for i in (0, 8)]
    pts, cols = (torch.cat(t) for t in zip(*[depth_points(v, stride=2) for v in train]))
    cfg = load_config("fast", ["optim.iterations=120", "densify.enabled=false", "pseudo.enabled=false",
                               "depth.enabled=false", "optim.resolution_schedule=[[0,1]]", "log_every=1000",
                               "checkpoint_every=1000"])
    results = {}
    for mode in ("scene", "mean"):
        bg = fit_background(mode, scene.background, [v.image for v in train])
        data = TrainData(cameras=[v.camera for v in train], images=[v.image for v in train],
                         names=[v.name for v in train], depth_priors=[None] * 3, scene_scale=1.0, background=bg)
        trainer = Trainer(cfg, gaussians_from_points(pts, cols, 1), data)
        g = trainer.run().gaussians
        settings = trainer.render_settings(1)
        assert settings.background == bg  # what the evaluation composites on
        with torch.no_grad():
            out = [render(g, [v.camera], settings) for v in (*test, *train)]
        psnr = [float(losses.psnr(o.rgb[0].clamp(0, 1), v.image)) for o, v in zip(out, (*test, *train))]
        holes = float(torch.cat([(o.alpha[0] < 0.5).flatten() for o in out[:2]]).float().mean())
        results[mode] = (sum(psnr[:2]) / 2, sum(psnr[2:]) / 3, holes)
    (test0, train0, holes), (test1, train1, _) = results["scene"], results["mean"]
    assert holes > 0.05  # the end views do see beyond the training frames (measured 18% of their pixels)
    assert test1 > test0 + 0.5  # and there the mean colour is much closer than black (measured 13.6 -> 18.6 dB)
    assert train1 > train0 - 0.3  # at no cost on the views the fit saw (measured 23.2 -> 24.2 dB)
