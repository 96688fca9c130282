"""Diffusion refinement of rendered pseudo views, from local weights (diffusers).

On the steps ``recon.optimise.schedules.diffusion_refresh_due`` names, the trainer renders
pseudo views and ``Img2ImgRefiner.refine`` denoises them at low strength (Stable Diffusion
img2img, or a ControlNet-tile img2img when a ControlNet folder is given); the trainer keeps
them as soft targets until the next refresh, weighted by
``recon.optimise.schedules.diffusion_weight`` (the ``diffusion.*`` config keys).
Nothing is downloaded: pipelines are read with ``local_files_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ConfigError, MissingDependencyError, ReconError

# Sub-folders a Stable Diffusion folder written by save_pretrained must hold.
_SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SD_EXPECTED = "model_index.json and the folders unet/, vae/, text_encoder/, tokenizer/, scheduler/"
# SD latents are 8x smaller than the image: sizes are rounded to this multiple.
_LATENT_FACTOR = 8


def check_sd_folder(path: Path, what: str = "diffusion model") -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MissingDependencyError(
            f"{what}: folder {path} not found; pass a local Stable Diffusion 1.x/2.x folder holding "
            f"{_SD_EXPECTED} (as written by save_pretrained); nothing is downloaded")
    missing = [p + "/" for p in _SD_PARTS if not (path / p).is_dir()]
    if not (path / "model_index.json").is_file():
        missing.insert(0, "model_index.json")
    if missing:
        raise MissingDependencyError(f"{what}: folder {path} lacks {', '.join(missing)}; expected {_SD_EXPECTED}")
    return path


def _import_diffusers():
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - diffusers is a dev dependency here
        raise MissingDependencyError(
            "diffusion model: the 'diffusers' package is not installed; install it with `pip install recon[diffusion]`"
        ) from exc
    return diffusers


def _load_error(what: str, path: Path, exc: Exception, expected: str) -> MissingDependencyError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return MissingDependencyError(f"{what}: cannot load {path} ({type(exc).__name__}: {first}); expected {expected}")


def _load_img2img(path: Path, controlnet_path: str | Path | None, device: str, dtype: torch.dtype | None):
    folder = check_sd_folder(path)
    diffusers = _import_diffusers()
    kwargs: dict[str, Any] = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if controlnet_path is not None:
        cn_folder = Path(controlnet_path).expanduser()
        if not (cn_folder / "config.json").is_file():
            raise MissingDependencyError(
                f"diffusion controlnet: folder {cn_folder} lacks config.json; expected a ControlNetModel folder "
                "(config.json + diffusion_pytorch_model.safetensors), e.g. a copy of control_v11f1e_sd15_tile")
    try:
        if controlnet_path is not None:
            controlnet = diffusers.ControlNetModel.from_pretrained(cn_folder, local_files_only=True)
            pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
                folder, controlnet=controlnet, **kwargs)
        else:
            pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise _load_error("diffusion model", folder, exc, _SD_EXPECTED) from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Img2ImgRefiner:
    """Low-strength img2img over a batch of images [B, H, W, 3] in [0, 1]."""

    def __init__(self, pipe, *, strength: float = 0.3, steps: int = 20, prompt: str = "", seed: int = 0,
                 device: str = "cpu", guidance_scale: float = 1.0, negative_prompt: str | None = None,
                 max_side: int | None = 512, controlnet_path: str | Path | None = None,
                 dtype: torch.dtype | None = None):
        """``pipe``: a loaded diffusers img2img pipeline, or a local folder to load one from
        (then ``controlnet_path`` selects the ControlNet-tile variant)."""
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"diffusion.strength must be in (0, 1], got {strength}")
        if steps < 1:
            raise ConfigError(f"diffusion.steps must be >= 1, got {steps}")
        if isinstance(pipe, (str, Path)):
            pipe = _load_img2img(Path(pipe), controlnet_path, device, dtype)
        self.pipe = pipe
        self.strength, self.steps, self.prompt, self.seed = strength, steps, prompt, seed
        self.device, self.guidance_scale, self.negative_prompt = device, guidance_scale, negative_prompt
        self.max_side = max_side
        self.use_controlnet = "ControlNet" in type(pipe).__name__

    @classmethod
    def from_pretrained(cls, path: str | Path, *, strength: float = 0.3, steps: int = 20, prompt: str = "",
                        seed: int = 0, device: str = "cpu", controlnet_path: str | Path | None = None,
                        guidance_scale: float = 1.0, negative_prompt: str | None = None,
                        max_side: int | None = 512, dtype: torch.dtype | None = None) -> Img2ImgRefiner:
        """Stable Diffusion img2img (or ControlNet-tile img2img when ``controlnet_path`` is
        given) from local folders. ``max_side``: longer image side the model runs at (the
        output is resized back); None = the input size rounded to a multiple of 8."""
        return cls(Path(path), strength=strength, steps=steps, prompt=prompt, seed=seed, device=device,
                   guidance_scale=guidance_scale, negative_prompt=negative_prompt, max_side=max_side,
                   controlnet_path=controlnet_path, dtype=dtype)

    def _work_size(self, h: int, w: int) -> tuple[int, int]:
        s = 1.0 if self.max_side is None else min(1.0, self.max_side / max(h, w))
        return (max(_LATENT_FACTOR, round(h * s / _LATENT_FACTOR) * _LATENT_FACTOR),
                max(_LATENT_FACTOR, round(w * s / _LATENT_FACTOR) * _LATENT_FACTOR))

    @torch.no_grad()
    def refine(self, images: Tensor, *, seeds: Sequence[int] | None = None) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> refined [B, H, W, 3]. Each image gets its own
        generator (``seeds``, default all ``self.seed``) so a result does not depend on
        which other images share the batch."""
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ReconError(f"diffusion refine: images must have shape [B, H, W, 3], got {list(images.shape)}")
        B, H, W, _ = images.shape
        seeds = [self.seed] * B if seeds is None else list(seeds)
        if len(seeds) != B:
            raise ReconError(f"diffusion refine: got {len(seeds)} seeds for {B} images")
        h, w = self._work_size(H, W)
        x = F.interpolate(images.permute(0, 3, 1, 2).float().clamp(0, 1), size=(h, w), mode="bilinear",
                          align_corners=False)  # [B, 3, h, w]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        kwargs: dict[str, Any] = dict(
            prompt=[self.prompt] * B, image=x.to(self.device), strength=self.strength,
            num_inference_steps=self.steps, guidance_scale=self.guidance_scale, generator=gens, output_type="pt")
        if self.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.negative_prompt] * B
        if self.use_controlnet:
            kwargs["control_image"] = x.to(self.device)  # the tile model conditions on the image itself
        out = self.pipe(**kwargs).images  # [B, 3, h, w] in [0, 1]
        out = F.interpolate(out.float().cpu(), size=(H, W), mode="bilinear", align_corners=False)
        return out.permute(0, 2, 3, 1).clamp(0, 1).contiguous()  # [B, H, W, 3]
