"""Monocular depth prior: tiny randomly initialised Depth Anything / DPT models are built
offline, written with save_pretrained and read back through load_depth_prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from recon.errors import MissingDependencyError, ReconError  # noqa: E402
from recon.priors.depth import DepthMap, DepthPrior, image_hash, load_depth_prior  # noqa: E402

_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _processor(size: int, keep_aspect: bool):
    from transformers import DPTImageProcessor

    return DPTImageProcessor(size={"height": size, "width": size}, keep_aspect_ratio=keep_aspect,
                             ensure_multiple_of=14 if keep_aspect else 1, image_mean=_MEAN, image_std=_STD)


def save_tiny_depth_anything(folder: Path, *, seed: int = 0, metric: bool = False) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
                                 reassemble_factors=[1.0, 0.5],
                                 depth_estimation_type="metric" if metric else "relative")
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder)
    _processor(56, keep_aspect=True).save_pretrained(folder)
    return folder


def save_tiny_dpt(folder: Path) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).eval().save_pretrained(folder)
    _processor(32, keep_aspect=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_da(tmp_path_factory) -> Path:
    return save_tiny_depth_anything(tmp_path_factory.mktemp("depth_anything"))


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A smooth gradient plus noise, so the model sees structure and the hash sees content.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)], -1)  # [H, W, 3]
    return (0.7 * base + 0.3 * torch.rand(h, w, 3, generator=g)).clamp(0, 1)


def test_depth_anything_loads_predicts_and_resizes(tiny_da):
    prior = load_depth_prior(tiny_da)
    assert isinstance(prior, DepthPrior)
    image = _image(37, 53, seed=1)
    depth = prior.predict(image)
    assert isinstance(depth, DepthMap)
    assert depth.kind == "disparity"  # relative Depth Anything predicts disparity
    assert depth.values.shape == (37, 53) and depth.values.dtype == torch.float32
    assert torch.isfinite(depth.values).all()
    assert depth.values.std() > 0  # random weights still give a non-constant map
    # Deterministic, and it responds to the image content.
    assert torch.equal(prior.predict(image).values, depth.values)
    assert not torch.allclose(prior.predict(_image(37, 53, seed=2)).values, depth.values)


def test_batch_matches_single_and_handles_mixed_sizes(tiny_da):
    prior = load_depth_prior(tiny_da, batch_size=2)
    images = [_image(40, 60, 3), _image(30, 30, 4), _image(40, 60, 5), _image(40, 60, 6)]
    batch = prior.predict_batch(images)
    assert [tuple(d.values.shape) for d in batch] == [(40, 60), (30, 30), (40, 60), (40, 60)]
    for im, d in zip(images, batch):
        torch.testing.assert_close(prior.predict(im).values, d.values, atol=1e-4, rtol=1e-4)


def test_dpt_loads_through_the_same_code(tmp_path):
    prior = load_depth_prior(save_tiny_dpt(tmp_path / "dpt"))
    depth = prior.predict(_image(21, 45, 7))
    assert depth.values.shape == (21, 45) and depth.kind == "disparity"
    assert prior.name.startswith("dpt:")


def test_metric_variant_is_depth(tmp_path):
    prior = load_depth_prior(save_tiny_depth_anything(tmp_path / "metric", metric=True))
    d = prior.predict(_image(28, 28, 8))
    assert d.kind == "depth"
    disp = d.as_disparity()
    pos = d.values > 1e-6
    torch.testing.assert_close(disp[pos], 1.0 / d.values[pos])


def test_disk_cache_hits_per_image_and_model(tiny_da, tmp_path):
    cache = tmp_path / "cache"
    first = load_depth_prior(tiny_da, cache_dir=cache)
    images = [_image(33, 44, 9), _image(33, 44, 10)]
    expected = first.predict_batch(images)
    assert len(list(cache.rglob("*.npz"))) == 2

    # A fresh prior over the same model reads the cache: its network must not run.
    second = load_depth_prior(tiny_da, cache_dir=cache)
    calls = []
    forward = second.model.forward
    second.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    again = second.predict_batch(images)
    assert calls == []
    for a, b in zip(expected, again):
        assert torch.equal(a.values, b.values) and a.kind == b.kind
    # A new image misses the cache and runs the network once.
    second.predict(_image(33, 44, 11))
    assert calls == [1]

    # Pseudo views never repeat: they can bypass the cache.
    n = len(list(cache.rglob("*.npz")))
    second.predict(_image(33, 44, 13), use_cache=False)
    second.without_cache().predict(_image(33, 44, 14))
    assert len(list(cache.rglob("*.npz"))) == n

    # A different model (other weights) gets its own cache folder.
    other = load_depth_prior(save_tiny_depth_anything(tmp_path / "other", seed=5), cache_dir=cache)
    other.predict(images[0])
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_image_hash_is_over_the_8bit_image_the_model_sees():
    im = torch.round(_image(16, 16, 12) * 255) / 255
    assert image_hash(im) == image_hash(im + 1e-4)  # same 8-bit image, same prediction
    assert image_hash(im) != image_hash(im.flip(0))


def test_missing_and_wrong_weights_say_what_is_expected(tmp_path, tiny_da):
    with pytest.raises(MissingDependencyError, match="not found"):
        load_depth_prior(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_da / "config.json").read_text())
    with pytest.raises(MissingDependencyError, match=r"lacks preprocessor_config.json, model.safetensors"):
        load_depth_prior(partial)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_text((tiny_da / name).read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MissingDependencyError, match=str(broken)):
        load_depth_prior(broken)


def test_bad_image_shape_is_a_recon_error(tiny_da):
    prior = load_depth_prior(tiny_da)
    with pytest.raises(ReconError, match=r"image 0 must have shape \[H, W, 3\]"):
        prior.predict(torch.rand(3, 20, 20))


def test_depth_prior_drives_the_relative_depth_loss_in_a_fit(tiny_da, tmp_path, monkeypatch):
    """Wire-in: `depth.model=<folder>` makes the fit predict each training view's depth
    with the model and hand exactly those maps (kind "disparity") to the Pearson loss."""
    from recon import pipeline
    from recon.optimise import losses
    from recon.optimise.config import load_config

    seen = []
    original = losses.pearson_depth_loss

    def spy(rendered, prior, kind="depth", valid=None):
        seen.append((prior.detach().clone(), kind))
        return original(rendered, prior, kind, valid)

    monkeypatch.setattr(losses, "pearson_depth_loss", spy)
    before = torch.get_num_threads()
    cfg = load_config("fast", [
        "data.width=40", "data.options.n_views=6", "optim.iterations=6", "densify.enabled=false",
        "pseudo.enabled=false", "depth.ranking_pairs=128", "checkpoint_every=100", "log_every=2",
        f"depth.model={tiny_da}", "threads=1"])
    try:
        run = pipeline.fit_scene("builtin:synthetic", out_dir=tmp_path / "run", config=cfg, views=3)
    finally:
        torch.set_num_threads(before)
    assert seen and all(kind == "disparity" for _, kind in seen)
    # The priors the loss saw are the model's predictions for the training images ...
    scene = pipeline._load("builtin:synthetic", cfg)
    train = json.loads((run / "scene.json").read_text())["train"]
    expected = load_depth_prior(tiny_da).predict_batch([scene.views[i].image for i in train])
    for prior, _ in seen:  # the trainer may run coarse-to-fine: it then samples the prior (nearest)
        at_size = [F.interpolate(e.values[None, None], size=tuple(prior.shape), mode="nearest")[0, 0] for e in expected]
        assert any(torch.allclose(prior, e, atol=1e-5) for e in at_size)
    # ... and were cached in the run folder, one file per training view.
    assert len(list((run / "cache" / "depth").rglob("*.npz"))) == len(train)
