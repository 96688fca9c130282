"""LPIPS v0.1 (Zhang et al. 2018) from local weights only.

torchvision has no CPU build for our torch, so the AlexNet and VGG16 feature stacks are
defined here with the same module indices as ``torchvision.models.alexnet().features`` and
``vgg16().features``: torchvision's checkpoints (``alexnet-owt-7be5be79.pth``,
``vgg16-397923af.pth``) load into them key for key, and the ``lpips`` package's linear
layer files (``weights/v0.1/alex.pth``, ``vgg.pth``, keys ``lin{k}.model.1.weight``) load
into ``LPIPS.lins``. Nothing is downloaded: without both files LPIPS is reported as null
with the reason, never as a made-up number.

Where weights are looked for, in order: the ``--lpips-weights DIR`` flag, the
``RECON_LPIPS_WEIGHTS`` environment variable, ``$TORCH_HOME/hub/checkpoints`` (default
``~/.cache/torch/hub/checkpoints``), and an installed ``lpips`` package's weight folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from recon.errors import MissingDependencyError

# Module index ranges of torchvision's `features` that end at the ReLUs LPIPS taps.
_SLICES = {
    "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
    "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
}
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_BACKBONE_FILES = {"alex": ("alexnet-owt-7be5be79.pth", "alexnet"), "vgg": ("vgg16-397923af.pth", "vgg16")}
_LINEAR_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
_NET_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
# LPIPS' input scaling layer (constants of the published model, inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# AlexNet's stride-4 stem and three max-pools need this many pixels to keep 5 taps alive.
MIN_SIDE = 64


def alexnet_features() -> nn.Sequential:
    """torchvision.models.alexnet().features, same indices (state-dict compatible)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )


def vgg16_features() -> nn.Sequential:
    """torchvision.models.vgg16().features, same indices (state-dict compatible)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            c_in = int(v)
    return nn.Sequential(*layers)


class _Linear(nn.Module):
    """lpips' NetLinLayer: keys ``model.1.weight`` (Dropout at index 0, no parameters)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Call with (pred [H, W, 3], gt [H, W, 3]) in [0, 1] -> float distance (0 = identical)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net = _NET_ALIASES[net]
        self.features = alexnet_features() if self.net == "alex" else vgg16_features()
        self.lins = nn.ModuleList(_Linear(c) for c in _CHANNELS[self.net])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def _taps(self, x: Tensor) -> list[Tensor]:  # x [B, 3, H, W] in [-1, 1]
        x = (x - self.shift) / self.scale
        taps = []
        for start, end in _SLICES[self.net]:
            for i in range(start, end):
                x = self.features[i](x)
            taps.append(x)
        return taps

    def distance(self, pred: Tensor, gt: Tensor) -> Tensor:
        """pred, gt [B, 3, H, W] in [0, 1] -> [B] LPIPS distances."""
        h, w = pred.shape[-2:]
        if h < MIN_SIDE or w < MIN_SIDE:  # small crops (SpaRe boxes): pad by replication
            ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
            pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            pred = nn.functional.pad(pred, pads, mode="replicate")
            gt = nn.functional.pad(gt, pads, mode="replicate")
        total = pred.new_zeros(pred.shape[0])
        for f0, f1, lin in zip(self._taps(pred * 2 - 1), self._taps(gt * 2 - 1), self.lins):
            f0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit channel vectors
            f1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin.model((f0 - f1) ** 2).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def __call__(self, pred: Tensor, gt: Tensor) -> float:  # type: ignore[override]
        device = self.shift.device
        p = pred.float().to(device).permute(2, 0, 1)[None]  # [1, 3, H, W]
        g = gt.float().to(device).permute(2, 0, 1)[None]
        return float(self.distance(p, g)[0])


def _state_dict(path: Path) -> dict:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    return {k.removeprefix("module."): v for k, v in data.items()}


def build_lpips(net: str, backbone_path: Path, linear_path: Path) -> LPIPS:
    """LPIPS from a torchvision backbone checkpoint and an lpips linear-layer file."""
    model = LPIPS(net)
    backbone = {k.removeprefix("features."): v for k, v in _state_dict(backbone_path).items()
                if k.startswith("features.")}
    try:
        model.features.load_state_dict(backbone, strict=True)
    except RuntimeError as exc:
        raise MissingDependencyError(
            f"{backbone_path}: not a torchvision {net} checkpoint ({str(exc).splitlines()[0]}); "
            f"use torchvision's {_BACKBONE_FILES[model.net][0]}"
        ) from None
    try:
        model.lins.load_state_dict({k.removeprefix("lin"): v for k, v in _state_dict(linear_path).items()})
    except RuntimeError as exc:
        raise MissingDependencyError(
            f"{linear_path}: not an lpips v0.1 linear-layer file ({str(exc).splitlines()[0]}); "
            f"use the lpips package's weights/v0.1/{_LINEAR_FILES[model.net]}"
        ) from None
    return model.eval().requires_grad_(False)


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for weights, in priority order (see the module docstring)."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir).expanduser())
    if os.environ.get("RECON_LPIPS_WEIGHTS"):
        dirs.append(Path(os.environ["RECON_LPIPS_WEIGHTS"]).expanduser())
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")).expanduser()
    dirs.append(torch_home / "hub" / "checkpoints")
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "weights" / "v0.1")
    return dirs


def _find(dirs: list[Path], exact: str, prefix: str | None) -> Path | None:
    for d in dirs:
        for sub in (d, d / "v0.1", d / "lpips"):
            if (sub / exact).is_file():
                return sub / exact
    if prefix:  # torchvision names carry a hash suffix that differs between releases
        for d in dirs:
            hits = sorted(d.glob(f"{prefix}-*.pth")) if d.is_dir() else []
            if hits:
                return hits[0]
    return None


def find_lpips(net: str = "alex", weights_dir: str | os.PathLike | None = None) -> tuple[LPIPS | None, str]:
    """(scorer, "") when the backbone and linear weights are found locally, else (None, reason)."""
    if net not in _NET_ALIASES:
        return None, f"unknown LPIPS network {net!r} (use alex or vgg)"
    key = _NET_ALIASES[net]
    dirs = search_dirs(weights_dir)
    exact, prefix = _BACKBONE_FILES[key]
    backbone = _find(dirs, exact, prefix)
    linear = _find(dirs, _LINEAR_FILES[key], None)
    missing = [name for name, p in ((exact, backbone), (_LINEAR_FILES[key], linear)) if p is None]
    if missing:
        where = ", ".join(str(d) for d in dirs)
        return None, (
            f"LPIPS-{key} weights not found locally (missing {' and '.join(missing)} in {where}); "
            "pass --lpips-weights DIR or set RECON_LPIPS_WEIGHTS"
        )
    try:
        return build_lpips(key, backbone, linear), ""  # type: ignore[arg-type]
    except MissingDependencyError as exc:
        return None, str(exc)
