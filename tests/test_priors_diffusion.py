"""Diffusion refinement: a tiny randomly initialised Stable Diffusion (UNet, VAE, CLIP text
encoder, a tokenizer with a toy vocabulary) is built offline, written with save_pretrained
and read back through Img2ImgRefiner.from_pretrained."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from recon.errors import ConfigError, MissingDependencyError, ReconError  # noqa: E402
from recon.priors.diffusion import Img2ImgRefiner  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: character-level BPE
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers 5.x
        tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    else:  # transformers 4.x reads the files
        tok = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                            model_max_length=16)
    assert tok("ab").input_ids[1:3] == [vocab["a"], vocab["b</w>"]], "tiny tokenizer did not load its vocabulary"
    return tok


def _tiny_parts(tmp: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer(tmp / "vocab")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> tuple[Path, Path]:
    """(Stable Diffusion folder, ControlNet folder), both written with save_pretrained."""
    from diffusers import ControlNetModel, StableDiffusionImg2ImgPipeline

    tmp = tmp_path_factory.mktemp("sd")
    parts = _tiny_parts(tmp)
    StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(tmp / "sd")
    ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(8, 16)).save_pretrained(tmp / "cn")
    return tmp / "sd", tmp / "cn"


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_refine_keeps_size_and_is_deterministic(tiny_sd):
    refiner = Img2ImgRefiner.from_pretrained(tiny_sd[0], strength=0.5, steps=4, prompt="a photo", seed=3)
    images = _images(2, 30, 44)  # not multiples of 8: resized for the latents and back
    out = refiner.refine(images)
    assert out.shape == (2, 30, 44, 3) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    assert torch.equal(refiner.refine(images), out)  # same seed, same result
    other = refiner.refine(images, seeds=[4, 4])
    assert not torch.allclose(other, out)
    # Each image has its own generator: refining it alone gives the same result as in a batch.
    torch.testing.assert_close(refiner.refine(images[1:]), out[1:], atol=1e-4, rtol=0)
    # The refinement depends on the input image.
    assert not torch.allclose(refiner.refine(_images(2, 30, 44, seed=9)), out)


def test_max_side_runs_smaller_and_resizes_back(tiny_sd):
    calls = []
    refiner = Img2ImgRefiner.from_pretrained(tiny_sd[0], strength=0.3, steps=4, max_side=32)
    pipe_call = refiner.pipe.__class__.__call__
    refiner.pipe.__class__.__call__ = lambda self, **k: calls.append(tuple(k["image"].shape)) or pipe_call(self, **k)
    try:
        out = refiner.refine(_images(1, 60, 90))
    finally:
        refiner.pipe.__class__.__call__ = pipe_call
    assert calls == [(1, 3, 24, 32)]  # long side 32, both sides multiples of 8
    assert out.shape == (1, 60, 90, 3)


def test_constructor_takes_a_folder_too(tiny_sd):
    """The pipeline may build the refiner from the configured folder directly."""
    a = Img2ImgRefiner(tiny_sd[0], strength=0.5, steps=2, seed=1)
    b = Img2ImgRefiner.from_pretrained(tiny_sd[0], strength=0.5, steps=2, seed=1)
    im = _images(1, 16, 16)
    assert torch.equal(a.refine(im), b.refine(im))


def test_controlnet_tile_path(tiny_sd):
    refiner = Img2ImgRefiner.from_pretrained(tiny_sd[0], controlnet_path=tiny_sd[1], strength=0.5, steps=2)
    assert type(refiner.pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    out = refiner.refine(_images(1, 16, 24))
    assert out.shape == (1, 16, 24, 3)
    torch.testing.assert_close(refiner.refine(_images(1, 16, 24)), out)


def test_missing_or_broken_weights_say_what_is_expected(tmp_path, tiny_sd):
    with pytest.raises(MissingDependencyError, match="not found"):
        Img2ImgRefiner.from_pretrained(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    with pytest.raises(MissingDependencyError, match=r"lacks model_index.json, vae/, text_encoder/"):
        Img2ImgRefiner.from_pretrained(partial)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_sd[0] / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / part).mkdir()
    with pytest.raises(MissingDependencyError, match=f"cannot load {broken}"):
        Img2ImgRefiner.from_pretrained(broken)
    with pytest.raises(MissingDependencyError, match="lacks config.json"):
        Img2ImgRefiner.from_pretrained(tiny_sd[0], controlnet_path=tmp_path)
    with pytest.raises(ConfigError, match="strength"):
        Img2ImgRefiner.from_pretrained(tiny_sd[0], strength=0.0)


def test_bad_image_shape(tiny_sd):
    refiner = Img2ImgRefiner.from_pretrained(tiny_sd[0], steps=2)
    with pytest.raises(ReconError, match=r"\[B, H, W, 3\]"):
        refiner.refine(torch.rand(2, 3, 16, 16))


def test_fit_uses_the_refiner_with_the_configured_settings(tiny_sd, tmp_path, monkeypatch):
    """Wire-in: `diffusion.*` keys reach the img2img refiner that the fit loads from the
    local folder, and the refined pseudo views are actually requested during the fit."""
    from recon import pipeline
    from recon.optimise.config import load_config

    made, refined = [], []
    original = Img2ImgRefiner.from_pretrained.__func__

    def spy_from_pretrained(cls, path, **kwargs):
        made.append((str(path), kwargs))
        refiner = original(cls, path, **kwargs)
        real_refine = refiner.refine

        def spy_refine(images, *args, **kw):
            refined.append(tuple(images.shape))
            return real_refine(images, *args, **kw)

        refiner.refine = spy_refine
        return refiner

    monkeypatch.setattr(Img2ImgRefiner, "from_pretrained", classmethod(spy_from_pretrained))
    cfg = load_config("fast", [
        "data.width=40", "data.options.n_views=6", "optim.iterations=8", "densify.enabled=false",
        "depth.enabled=false", "checkpoint_every=100", "threads=1", "diffusion.enabled=true",
        f"diffusion.model={tiny_sd[0]}", "diffusion.start=2", "diffusion.every=4", "diffusion.num_views=2",
        "diffusion.strength=0.5", "diffusion.steps=4", "diffusion.prompt=a photo", "pseudo.start=1"])
    pipeline.fit_scene("builtin:synthetic", out_dir=tmp_path / "run", config=cfg, views=3)
    assert made and made[0][0] == str(tiny_sd[0])
    assert made[0][1]["strength"] == 0.5 and made[0][1]["steps"] == 4 and made[0][1]["prompt"] == "a photo"
    assert refined, "the fit never asked the refiner for pseudo-view targets"
