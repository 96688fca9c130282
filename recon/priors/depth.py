"""Monocular relative depth from a local transformers model (Depth Anything v1/v2, DPT).

Nothing is downloaded: ``load_depth_prior(path)`` reads a folder written by
``save_pretrained`` (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
``preprocessor_config.json``) with ``local_files_only=True``. Predictions are resized back
to the input image size and cached on disk per (model, image content) so that a second fit
on the same views costs nothing.

Relative models (Depth Anything, DPT) predict an affine-invariant *disparity* (larger =
nearer); metric variants predict z-depth. ``DepthMap.kind`` says which, so the loss can
compare in the right space (see ``DepthMap.as_disparity``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import MissingDependencyError, ReconError

DepthKind = Literal["depth", "disparity"]

# Files a transformers depth-estimation folder must hold (one of the weight files).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_EXPECTED = "config.json, preprocessor_config.json and model.safetensors (or pytorch_model.bin)"
# model_type values whose heads predict metric z-depth rather than relative disparity.
_METRIC_MODEL_TYPES = {"zoedepth", "glpn", "depth_pro"}
# Cache-file format version: bump when the stored layout or the resizing changes.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class DepthMap:
    values: Tensor  # [H, W] float32
    kind: DepthKind  # "depth": z-depth (larger = farther); "disparity": larger = nearer

    def __post_init__(self) -> None:
        if self.kind not in ("depth", "disparity"):
            raise ValueError(f"DepthMap.kind must be 'depth' or 'disparity', got {self.kind!r}")
        if self.values.ndim != 2:
            raise ValueError(f"DepthMap.values must have shape [H, W], got {list(self.values.shape)}")

    def as_disparity(self, eps: float = 1e-6) -> Tensor:
        """[H, W] disparity (inverse depth for kind "depth"; 0 where depth is unknown)."""
        if self.kind == "disparity":
            return self.values
        v = self.values
        return torch.where(v > eps, 1.0 / v.clamp_min(eps), torch.zeros_like(v))


@runtime_checkable
class DepthPrior(Protocol):
    """Anything that turns an image into a relative depth map of the same size."""

    name: str

    def predict(self, image: Tensor) -> DepthMap:  # image [H, W, 3] float32 in [0, 1]
        ...

    def predict_batch(self, images: Sequence[Tensor]) -> list[DepthMap]:  # each [H, W, 3]
        ...


def _check_image(image: Tensor, index: int) -> None:
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ReconError(
            f"depth prior: image {index} must have shape [H, W, 3], got {list(image.shape)}; "
            "pass float32 RGB in [0, 1]"
        )


def image_hash(image: Tensor) -> str:
    """Content hash of an image [H, W, 3] over its 8-bit quantisation: exactly what the
    model sees (the processor takes 8-bit images), so equal hashes mean equal predictions."""
    q = (image.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    h = hashlib.sha256()
    h.update(np.asarray(q.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(q).tobytes())
    return h.hexdigest()[:32]


def model_fingerprint(folder: Path) -> str:
    """Identifies a model folder by its configs and the names and sizes of its weight
    files (hashing gigabytes of weights on every run would cost more than inference)."""
    h = hashlib.sha256(f"v{_CACHE_VERSION}".encode())
    for name in ("config.json", "preprocessor_config.json"):
        p = folder / name
        if p.is_file():
            h.update(p.read_bytes())
    for name in _WEIGHT_FILES:
        p = folder / name
        if p.is_file():
            h.update(f"{name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class DepthCache:
    """On-disk cache: ``<root>/<model fingerprint>/<image hash>.npz`` with the values and
    the kind. Writes go through a temporary file so a killed run never leaves half a file."""

    def __init__(self, root: Path, model_key: str):
        self.folder = Path(root) / model_key

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str) -> DepthMap | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p) as data:
                return DepthMap(torch.from_numpy(data["values"].astype(np.float32)), str(data["kind"]))
        except (OSError, ValueError, KeyError):
            return None  # a corrupt entry is recomputed and overwritten

    def put(self, key: str, depth: DepthMap) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{key}.tmp.npz"
        np.savez(tmp, values=depth.values.cpu().numpy().astype(np.float32), kind=np.array(depth.kind))
        tmp.replace(self.path(key))


def check_model_folder(path: Path, what: str = "depth model") -> Path:
    """Raises MissingDependencyError naming the folder and the files it lacks."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MissingDependencyError(
            f"{what}: folder {path} not found; pass a local folder holding {_EXPECTED} "
            "(e.g. a copy of depth-anything/Depth-Anything-V2-Small-hf); nothing is downloaded"
        )
    missing = [n for n in ("config.json", "preprocessor_config.json") if not (path / n).is_file()]
    if not any((path / n).is_file() for n in _WEIGHT_FILES):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if missing:
        raise MissingDependencyError(
            f"{what}: folder {path} lacks {', '.join(missing)}; expected {_EXPECTED} "
            "as written by save_pretrained"
        )
    return path


class TransformersDepthPrior:
    """A transformers depth-estimation model (AutoModelForDepthEstimation) with its image
    processor, both read from a local folder."""

    def __init__(self, model, processor, *, name: str, kind: DepthKind, device: str = "cpu",
                 cache: DepthCache | None = None, batch_size: int = 4):
        self.model = model.eval().to(device)
        self.processor = processor
        self.name = name
        self.kind: DepthKind = kind
        self.device = device
        self.cache = cache
        self.batch_size = batch_size

    def predict(self, image: Tensor, *, use_cache: bool = True) -> DepthMap:
        return self.predict_batch([image], use_cache=use_cache)[0]

    def without_cache(self) -> TransformersDepthPrior:
        """The same model without the disk cache: for renders that never repeat (pseudo
        views), which would otherwise fill the cache with one file per call."""
        return TransformersDepthPrior(self.model, self.processor, name=self.name, kind=self.kind,
                                      device=self.device, cache=None, batch_size=self.batch_size)

    def predict_batch(self, images: Sequence[Tensor], *, use_cache: bool = True) -> list[DepthMap]:
        for i, im in enumerate(images):
            _check_image(im, i)
        cache = self.cache if use_cache else None
        keys = [image_hash(im) for im in images] if cache is not None else [""] * len(images)
        out: list[DepthMap | None] = [cache.get(k) if cache else None for k in keys]
        todo = [i for i, d in enumerate(out) if d is None or d.values.shape != images[i].shape[:2]]
        # The processor resizes to a common size only within one image shape: group by shape.
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            by_shape.setdefault(tuple(images[i].shape[:2]), []).append(i)
        for shape, idx in by_shape.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                values = self._infer([images[i] for i in chunk], shape)  # [b, H, W]
                for i, v in zip(chunk, values):
                    out[i] = DepthMap(v, self.kind)
                    if cache is not None:
                        cache.put(keys[i], out[i])
        return [d for d in out if d is not None]

    @torch.no_grad()
    def _infer(self, images: list[Tensor], shape: tuple[int, int]) -> Tensor:
        # The processors expect 8-bit images (they rescale by 1/255 and normalise).
        arrays = [(im.detach().cpu().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy() for im in images]
        inputs = self.processor(images=arrays, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)  # [b, 3, h', w']
        pred = self.model(pixel_values=pixel_values).predicted_depth  # [b, h'', w'']
        if pred.ndim == 4:
            pred = pred[:, 0]
        resized = F.interpolate(pred[:, None].float(), size=shape, mode="bilinear", align_corners=False)
        return resized[:, 0].cpu()  # [b, H, W]


def _import_transformers():
    try:
        import transformers  # noqa: F401
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    except ImportError as exc:  # pragma: no cover - transformers is a dev dependency here
        raise MissingDependencyError(
            "depth model: the 'transformers' package is not installed; "
            "install it with `pip install recon[depth]`"
        ) from exc
    return AutoImageProcessor, AutoModelForDepthEstimation


def _kind_of(config) -> DepthKind:
    if getattr(config, "depth_estimation_type", "relative") == "metric":
        return "depth"
    return "depth" if config.model_type in _METRIC_MODEL_TYPES else "disparity"


def load_depth_prior(path: str | Path, *, cache_dir: str | Path | None = None, device: str = "cpu",
                     batch_size: int = 4) -> TransformersDepthPrior:
    """Depth Anything v1/v2 or DPT from a local folder (``save_pretrained`` layout).

    ``cache_dir``: where predictions are cached (one sub-folder per model); None = no cache.
    Raises MissingDependencyError naming the folder and the files expected when the
    folder, its files or transformers are missing, or the weights cannot be read."""
    folder = check_model_folder(Path(path))
    AutoImageProcessor, AutoModelForDepthEstimation = _import_transformers()
    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise MissingDependencyError(
            f"depth model: cannot load {folder} as a transformers depth-estimation model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"expected {_EXPECTED} for Depth Anything v1/v2 or DPT"
        ) from exc
    key = model_fingerprint(folder)
    cache = DepthCache(Path(cache_dir), key) if cache_dir is not None else None
    name = f"{model.config.model_type}:{folder.name}"
    return TransformersDepthPrior(model, processor, name=name, kind=_kind_of(model.config),
                                  device=device, cache=cache, batch_size=batch_size)


def predict_views(prior: DepthPrior, images: Sequence[Tensor]) -> list[DepthMap]:
    """Convenience for the pipeline: one DepthMap per image, batched where the prior can."""
    return list(prior.predict_batch(list(images)))
