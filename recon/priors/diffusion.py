"""Diffusion refinement of rendered pseudo views, from local weights (diffusers).

Every K iterations the fit renders pseudo views, ``Img2ImgRefiner.refine`` denoises them
at low strength (Stable Diffusion img2img, or a ControlNet-tile img2img when a ControlNet
folder is given), ``PseudoViewCache`` keeps them until the next refresh, and
``diffusion_weight`` gives the weight of the soft pseudo-view loss at an iteration.
Nothing is downloaded: pipelines are read with ``local_files_only=True``.

``VideoEnhancer`` optionally runs a diffusers video-to-video pipeline over a rendered
fly-through (behind a flag in the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ConfigError, MissingDependencyError, ReconError

# Sub-folders a Stable Diffusion folder written by save_pretrained must hold.
_SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SD_EXPECTED = "model_index.json and the folders unet/, vae/, text_encoder/, tokenizer/, scheduler/"
# SD latents are 8x smaller than the image: sizes are rounded to this multiple.
_LATENT_FACTOR = 8


@dataclass(frozen=True)
class DiffusionSchedule:
    """When pseudo views are refreshed and how much their loss weighs."""

    every: int = 500  # refresh pseudo views every this many iterations
    start: int = 500  # first iteration with a pseudo-view loss
    stop: int | None = None  # last iteration with it (None = to the end)
    weight: float = 0.05  # peak weight of the pseudo-view loss
    warmup: int = 500  # linear ramp from 0 to ``weight`` after ``start``
    final_weight: float | None = None  # if set, decays linearly to this at ``stop``


def _get(config: Any, key: str, default: Any) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def diffusion_weight(iteration: int, config: Any = None) -> float:
    """Weight of the pseudo-view loss at ``iteration``: 0 before ``start`` and after
    ``stop``, a linear warm-up to ``weight``, then constant or a linear decay to
    ``final_weight`` at ``stop``. ``config``: a DiffusionSchedule, any object with those
    attributes (e.g. the fit config's diffusion section) or a dict."""
    cfg = DiffusionSchedule() if config is None else config
    start, stop = int(_get(cfg, "start", 500)), _get(cfg, "stop", None)
    weight, warmup = float(_get(cfg, "weight", 0.05)), int(_get(cfg, "warmup", 500))
    final = _get(cfg, "final_weight", None)
    if iteration < start or (stop is not None and iteration > int(stop)):
        return 0.0
    ramp = 1.0 if warmup <= 0 else min(1.0, (iteration - start + 1) / warmup)
    w = weight * ramp
    if final is not None and stop is not None and int(stop) > start + warmup:
        frac = max(0.0, (iteration - start - warmup) / (int(stop) - start - warmup))
        if iteration >= start + warmup:
            w = weight + (float(final) - weight) * min(1.0, frac)
    return float(w)


def refresh_due(iteration: int, config: Any = None) -> bool:
    """True on iterations where pseudo views should be (re)rendered and refined."""
    cfg = DiffusionSchedule() if config is None else config
    every = int(_get(cfg, "every", 500))
    return diffusion_weight(iteration, cfg) > 0 and (iteration - int(_get(cfg, "start", 500))) % max(every, 1) == 0


class PseudoViewCache:
    """Refined pseudo views keyed by (iteration bucket, view id), bucket = iteration // every.
    Only the newest ``keep_buckets`` buckets are kept so memory stays bounded."""

    def __init__(self, every: int, keep_buckets: int = 1):
        if every <= 0:
            raise ConfigError(f"diffusion.every must be a positive number of iterations, got {every}")
        self.every = every
        self.keep_buckets = keep_buckets
        self._store: dict[tuple[int, Any], Tensor] = {}

    def bucket(self, iteration: int) -> int:
        return iteration // self.every

    def get(self, iteration: int, view_id: Any) -> Tensor | None:
        return self._store.get((self.bucket(iteration), view_id))

    def put(self, iteration: int, view_id: Any, image: Tensor) -> None:  # image [H, W, 3]
        b = self.bucket(iteration)
        self._store[(b, view_id)] = image.detach()
        for key in [k for k in self._store if k[0] <= b - self.keep_buckets]:
            del self._store[key]

    def get_or_refine(self, iteration: int, view_ids: Sequence[Any], render: Callable[[list[Any]], Tensor],
                      refiner: "Img2ImgRefiner") -> Tensor:
        """[B, H, W, 3] refined pseudo views; renders ([B, H, W, 3]) and refines only the
        views missing from the current bucket."""
        missing = [v for v in view_ids if self.get(iteration, v) is None]
        if missing:
            refined = refiner.refine(render(missing), seeds=[refiner.seed + hash_view(v) for v in missing])
            for v, im in zip(missing, refined):
                self.put(iteration, v, im)
        return torch.stack([self.get(iteration, v) for v in view_ids])

    def __len__(self) -> int:
        return len(self._store)


def hash_view(view_id: Any) -> int:
    """A stable small integer per view id (Python's hash() of str is salted per process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(str(view_id))) % 100_003


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
                        max_side: int | None = 512, dtype: torch.dtype | None = None) -> "Img2ImgRefiner":
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


# Video-to-video pipelines that accept a ``video`` and ``strength`` (diffusers class names).
_VIDEO_PIPELINES = ("VideoToVideoSDPipeline", "AnimateDiffVideoToVideoPipeline", "CogVideoXVideoToVideoPipeline",
                    "WanVideoToVideoPipeline")


class VideoEnhancer:
    """Optional: a diffusers video-to-video pipeline over a rendered fly-through."""

    def __init__(self, pipe, *, strength: float, steps: int, prompt: str, seed: int, device: str,
                 guidance_scale: float = 1.0):
        self.pipe, self.strength, self.steps = pipe, strength, steps
        self.prompt, self.seed, self.device, self.guidance_scale = prompt, seed, device, guidance_scale

    @classmethod
    def from_pretrained(cls, path: str | Path, *, strength: float = 0.3, steps: int = 20, prompt: str = "",
                        seed: int = 0, device: str = "cpu", guidance_scale: float = 1.0) -> "VideoEnhancer":
        folder = Path(path).expanduser()
        expected = (f"a diffusers video-to-video pipeline folder (model_index.json naming one of "
                    f"{', '.join(_VIDEO_PIPELINES)}, e.g. a copy of a zeroscope or AnimateDiff video-to-video model)")
        if not (folder / "model_index.json").is_file():
            raise MissingDependencyError(f"video diffusion: {folder} has no model_index.json; expected {expected}")
        import json

        cls_name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
        diffusers = _import_diffusers()
        # Text-to-video folders (same weights) are opened as their video-to-video twin.
        cls_name = {"TextToVideoSDPipeline": "VideoToVideoSDPipeline",
                    "AnimateDiffPipeline": "AnimateDiffVideoToVideoPipeline"}.get(cls_name, cls_name)
        if cls_name not in _VIDEO_PIPELINES:
            raise MissingDependencyError(f"video diffusion: {folder} holds a {cls_name or 'unknown'} pipeline; "
                                         f"expected {expected}")
        try:
            pipe = getattr(diffusers, cls_name).from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise _load_error("video diffusion", folder, exc, expected) from exc
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, strength=strength, steps=steps, prompt=prompt, seed=seed, device=device,
                   guidance_scale=guidance_scale)

    @torch.no_grad()
    def enhance(self, frames: Tensor) -> Tensor:
        """frames [T, H, W, 3] in [0, 1] -> [T, H, W, 3] (deterministic with the seed)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ReconError(f"video diffusion: frames must have shape [T, H, W, 3], got {list(frames.shape)}")
        T, H, W, _ = frames.shape
        h, w = (max(_LATENT_FACTOR, round(s / _LATENT_FACTOR) * _LATENT_FACTOR) for s in (H, W))
        x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear", align_corners=False)
        video = [f.permute(1, 2, 0).numpy() for f in x.clamp(0, 1)]  # T x [h, w, 3]
        out = self.pipe(prompt=self.prompt, video=video, strength=self.strength, num_inference_steps=self.steps,
                        guidance_scale=self.guidance_scale, generator=torch.Generator().manual_seed(self.seed),
                        output_type="pt").frames
        out = torch.as_tensor(out[0] if isinstance(out, (list, tuple)) or out.ndim == 5 else out).float()
        if out.shape[-1] != 3:  # [T, 3, h, w] -> [T, h, w, 3]
            out = out.permute(0, 2, 3, 1)
        out = F.interpolate(out.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
        return out.permute(0, 2, 3, 1).clamp(0, 1).contiguous()
