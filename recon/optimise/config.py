"""Fit configuration: typed dataclasses, YAML presets in ``configs/``, ``key=value`` overrides.

A preset is a partial YAML file over the dataclass defaults (``default.yaml`` is the
defaults themselves); ``base: NAME`` in a preset layers it on another preset first.
Every component has an ``enabled`` switch so an ablation is one override, e.g.
``depth.enabled=false`` or ``densify.enabled=false``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recon.errors import ConfigError

# Presets ship in the repository's configs/ folder (and inside the package when installed).
_PRESET_DIRS = (
    Path(__file__).resolve().parents[2] / "configs",
    Path(__file__).resolve().parents[1] / "configs",
)


@dataclass
class DataConfig:
    format: str | None = None  # None = detect
    protocol: str | None = None  # None = the scene format's usual protocol
    views: int = 3
    width: int | None = None  # image width to load at (loader option; None = native)
    max_side: int = 0  # then resize so the longer image side is at most this (0 = keep)
    options: dict = field(default_factory=dict)  # extra loader options, e.g. images: images_8


@dataclass
class InitConfig:
    method: str = "mvs"  # "mvs" (multi-view stereo; alias "stereo") | "sift" | "random" (see recon.init)
    sh_degree: int = 3
    max_points: int = 100_000
    random_points: int = 20_000
    # > 0: also seed Gaussians on this pixel grid where MVS found no depth, at push-pull filled depth (recon.init.fill)
    fill_stride: int = 0
    fill_max_gap: int = 0  # > 0: seed only holes within this many pixels of a stereo pixel (0 = every hole)
    opacity: float = 0.1  # initial opacity of every Gaussian (3DGS: 0.1)
    scale_factor: float = 1.0  # x the 3-NN initial scale of point-seeded Gaussians (recon.init.initialise)
    stereo: dict = field(default_factory=dict)  # recon.priors.stereo.StereoSettings overrides, e.g. window: 15


@dataclass
class OptimConfig:
    iterations: int = 3000
    ssim_weight: float = 0.2
    lr_means: float = 1.6e-4  # times scene extent, decays to lr_means_final
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 1.25e-4
    sh_degree_interval: int = 1000  # raise the active SH degree every this many steps
    # [[start_iteration, downscale], ...]: train on downscaled images first (coarse-to-fine)
    resolution_schedule: list = field(default_factory=lambda: [[0, 1]])
    max_loss: float = 10.0  # a loss above this (or NaN) stops the fit with diagnostics
    # 3DGS's random background: each step composites the view's background (outside its object mask) and the
    # render on one random colour, so no background colour is baked into the Gaussians. Needs masks (Blender, DTU).
    random_background: bool = False
    # torch's fused Adam (one kernel per parameter tensor, ~3x faster on CPU than the default for-loop Adam): the
    # same update rule, float rounding differs (~1e-9 relative per step). false = torch's default implementation.
    fused_adam: bool = True


@dataclass
class DepthConfig:
    enabled: bool = True
    model: str | None = None  # local folder of a monocular depth model; None = MVS depth
    pearson_weight: float = 0.05
    ranking_weight: float = 0.05
    ranking_pairs: int = 4096
    ranking_window: int = 8
    # |rendered - prior| / prior where the prior is metric (stereo depth and the stereo points
    # reprojected into pseudo views; never a monocular model's relative depth). 0 = off.
    metric_weight: float = 0.0
    start: int = 0
    stop: int = 1_000_000


@dataclass
class PseudoConfig:
    enabled: bool = True
    every: int = 4  # one pseudo view every this many steps
    start: int = 200
    weight: float = 0.5  # times the depth weights
    jitter: float = 0.02  # camera position noise, times scene extent
    # Reprojected stereo points: drop those farther than the nearest point in this window
    # (pixels), i.e. background showing through gaps of the foreground. 0 = keep all.
    occlusion_window: int = 0
    # Render the pseudo view at 1/downscale of the training render's size (the image pyramid's level): its
    # render and depth terms cost about 1/downscale^2 of full size. 1 = the training render's size.
    downscale: int = 1


@dataclass
class DensifyConfig:
    enabled: bool = True
    refine_start: int = 300
    refine_stop: int = 2000
    refine_every: int = 100
    grow_grad2d: float = 2e-4
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    reset_every: int = 0  # 0 = never reset opacities
    max_gaussians: int = 200_000


@dataclass
class RegulariseConfig:
    enabled: bool = True
    opacity_weight: float = 1e-3
    scale_weight: float = 1e-2
    max_scale: float = 0.1  # times scene extent
    max_ratio: float = 10.0
    # DropGaussian / DropoutGS: fraction of Gaussians made transparent in each training
    # render (the rest compensated by 1 / (1 - rate)); never at test time. 0 = off.
    dropout_rate: float = 0.0
    # Binocular3DGS opacity decay: every opacity_decay_every steps before opacity_decay_stop,
    # opacity <- opacity_decay * opacity, so floaters the views do not support fade. 1 = off.
    opacity_decay: float = 1.0
    opacity_decay_every: int = 1
    opacity_decay_stop: int = 1_000_000


@dataclass
class BinocularConfig:
    """Binocular consistency loss (Binocular3DGS): render a camera shifted sideways from the
    training view, warp it back through the rendered depth, compare with the training image."""

    enabled: bool = False
    weight: float = 0.5
    # Shift of the virtual camera as the disparity it gives at the rendered median depth,
    # as a fraction of the image width (scale-free across scenes); the side is random.
    disparity: float = 0.03
    ssim_weight: float = 0.2  # D-SSIM share of the binocular loss
    start: int = 300
    every: int = 1  # one binocular term every this many steps
    # Render the shifted camera and compare at 1/downscale of the training render's size (the
    # rendered depth area-averaged, the target from the image pyramid): the term's render, warp
    # and SSIM cost about 1/downscale^2 of full size. 1 = the training render's size.
    downscale: int = 1


@dataclass
class CoregConfig:
    """CoR-GS co-regularisation (Zhang et al., ECCV 2024; recon.optimise.coreg): a second Gaussian field trained
    beside the fit's from the same initial Gaussians with seed + 1 (its own view order, dropout, pseudo
    cameras), the two tied by a photometric loss between their renders at pseudo views and by co-pruning.
    The fit's outputs are the first field's; the partner is discarded at the end."""

    enabled: bool = False
    weight: float = 1.0  # weight of the pseudo-view loss between the two fields' renders
    ssim_weight: float = 0.2  # D-SSIM share of that loss (CoR-GS: 0.2)
    start: int = 100  # first step with the co-regularisation loss
    every: int = 1  # one co-regularised pseudo view every this many steps
    # Render the co-regularised pseudo view at 1/downscale of the training render's size (the image pyramid's level)
    downscale: int = 1
    prune: bool = True  # co-pruning: drop Gaussians with no Gaussian of the other field near them
    prune_every: int = 100  # co-pruning steps: every this many steps within densify.refine_start..refine_stop
    # A Gaussian is pruned when the nearest centre of the other field is farther than this times the Gaussian's
    # distance to the nearest training camera centre (a depth-relative test: see recon.optimise.coreg.co_prune_masks)
    prune_threshold: float = 0.05


@dataclass
class ExposureConfig:
    """Per-view exposure compensation (recon.optimise.exposure): an affine colour transform per channel
    (gain, bias) for each training view but the first, applied to its render in the photometric and
    binocular terms; test and novel views render with view 0's appearance."""

    enabled: bool = False
    lr: float = 0.001  # Adam lr of the log gains and biases
    start: int = 0  # first step the transforms are updated


@dataclass
class PoseConfig:
    refine: str = "auto"  # "auto" (only for unposed scenes) | "on" | "off"
    lr: float = 1e-4
    start: int = 0  # first step of pose (and focal) refinement
    # One focal scale per group of training views sharing intrinsics, refined with the poses
    # (recon.optimise.camera_refinement): "auto" = only for unposed scenes, whose focal is SfM's estimate.
    # Off by default: on the generated scene the photometric loss pulls the focal 3-5 % long even from
    # the exact one (posed), where the Gaussians do not yet cover the image (benchmarks/results/unposed/README.md)
    refine_focal: str = "off"  # "auto" | "on" | "off"
    focal_lr: float = 3e-3  # Adam step on log(focal scale); tuned on generated scenes of seeds 3 and 5
    focal_start: int = 0  # first step of focal refinement


@dataclass
class DiffusionConfig:
    enabled: bool = False
    model: str | None = None  # local diffusers img2img folder
    every: int = 500  # regenerate refined pseudo targets every this many steps
    start: int = 1000  # first step with the diffusion loss (and its first refresh)
    stop: int | None = None  # last step with it (None = to the end)
    weight: float = 0.1  # peak weight of the loss (recon.optimise.schedules.diffusion_weight)
    warmup: int = 0  # linear ramp from 0 to ``weight`` over this many steps after ``start``
    final_weight: float | None = None  # if set (with ``stop``), decays linearly to this at ``stop``
    num_views: int = 4
    strength: float = 0.3  # img2img strength: how far the refined target may move from the render
    steps: int = 20  # scheduler steps (about strength * steps are denoised)
    prompt: str = ""
    controlnet: str | None = None  # local ControlNet-tile folder (optional)


@dataclass
class RenderConfig:
    backend: str = "auto"
    antialiased: bool = False
    # colour behind the Gaussians: "scene" (the loader's, black when none) | "mean" (mean colour of
    # the training images, for photographs: what novel views show beyond the training frames; recon.optimise.background)
    background: str = "scene"


@dataclass
class FitConfig:
    seed: int = 0
    threads: int = 0  # torch CPU threads (0 = torch's default)
    checkpoint_every: int = 500
    log_every: int = 10
    stereo_model: str | None = None  # local folder of the learned stereo prior
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    binocular: BinocularConfig = field(default_factory=BinocularConfig)
    coreg: CoregConfig = field(default_factory=CoregConfig)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    regularise: RegulariseConfig = field(default_factory=RegulariseConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _apply(obj: Any, values: dict, where: str) -> None:
    """Writes nested ``values`` into dataclass ``obj``, checking keys and types (from the
    field annotations, so ``int | None`` fields are checked too)."""
    hints = typing.get_type_hints(type(obj)) if dataclasses.is_dataclass(obj) else {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if not dataclasses.is_dataclass(obj) or key not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config key {name!r}; see configs/default.yaml for the keys")
        current = getattr(obj, key)
        if isinstance(current, dict):  # free-form section (loader options)
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a mapping; set its keys as {name}.KEY=VALUE")
            current.update(value)
            continue
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} is a section; set its keys as {name}.KEY=VALUE")
            _apply(current, value, name)
            continue
        setattr(obj, key, _coerce(value, hints[key], name))


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` checked (and numbers converted) against a field annotation: bool, int,
    float, str or list, optionally ``| None``."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)] if args else [annotation]
    kind = typing.get_origin(kinds[0]) or kinds[0] if len(kinds) == 1 else None
    if value is None:
        if optional or kind is None:
            return None
        raise ConfigError(f"config key {name!r} needs a value ({_describe(kind)}); only optional keys may be null")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} must be true or false, got {value!r}")
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if kind is float and number is not None:
            return number
        if number is not None and number.is_integer():
            return int(number)
    if kind in (int, float):
        raise ConfigError(f"config key {name!r} must be {_describe(kind)}, got {value!r}")
    if kind is str and isinstance(value, bool):  # YAML 1.1 reads a bare on/off (pose.refine=off) as a bool
        return "on" if value else "off"
    if kind in (str, list) and not isinstance(value, kind):
        raise ConfigError(f"config key {name!r} must be {_describe(kind)}, got {value!r}")
    return value


def _describe(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(kind, str(kind))


def preset_path(name: str) -> Path:
    """A preset name ("fast") or a YAML path -> the file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in _PRESET_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {name!r} is neither a YAML file nor a preset; presets: {', '.join(preset_names())}")


def preset_names() -> list[str]:
    """The presets in configs/, sorted."""
    return sorted({p.stem for d in _PRESET_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def _read_layers(name: str, seen: tuple[str, ...] = ()) -> list[dict]:
    path = preset_path(name)
    if str(path) in seen:
        raise ConfigError(f"config {path} inherits from itself through 'base'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    base = data.pop("base", None)
    layers = _read_layers(base, seen + (str(path),)) if base else []
    return layers + [data]


def parse_override(text: str) -> dict:
    """``"optim.iterations=500"`` -> ``{"optim": {"iterations": 500}}`` (YAML-typed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. optim.iterations=500")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(name_or_path: str | None = "default", overrides: list[str] | tuple[str, ...] = ()) -> FitConfig:
    """Builds a FitConfig from a preset (or YAML path, or a saved run's config.yaml) and
    ``key=value`` overrides, applied in order."""
    config = FitConfig()
    for layer in _read_layers(name_or_path) if name_or_path else []:
        _apply(config, layer, "")
    for text in overrides:
        _apply(config, parse_override(text), "")
    validate(config)
    return config


def from_dict(values: dict) -> FitConfig:
    config = FitConfig()
    _apply(config, values, "")
    validate(config)
    return config


def validate(config: FitConfig) -> None:
    if config.optim.iterations < 1:
        raise ConfigError(f"optim.iterations must be >= 1, got {config.optim.iterations}")
    if config.data.views < 1:
        raise ConfigError(f"data.views must be >= 1, got {config.data.views}")
    if config.init.method not in ("mvs", "stereo", "sift", "random"):
        raise ConfigError(f"init.method must be mvs (alias stereo), sift or random, got {config.init.method!r}")
    if config.pose.refine not in ("auto", "on", "off"):
        raise ConfigError(f"pose.refine must be auto, on or off, got {config.pose.refine!r}")
    if config.pose.refine_focal not in ("auto", "on", "off"):
        raise ConfigError(f"pose.refine_focal must be auto, on or off, got {config.pose.refine_focal!r}")
    if not 0 <= config.init.sh_degree <= 3:
        raise ConfigError(f"init.sh_degree must be 0..3, got {config.init.sh_degree}")
    sched = config.optim.resolution_schedule
    if not sched or not all(isinstance(e, (list, tuple)) and len(e) == 2 and e[1] >= 1 for e in sched):
        raise ConfigError(f"optim.resolution_schedule must be [[start_iteration, downscale >= 1], ...], got {sched!r}")
    if config.pseudo.every < 1 or config.pseudo.downscale < 1:
        raise ConfigError(f"pseudo.every and pseudo.downscale must be >= 1, got {config.pseudo.every} "
                          f"and {config.pseudo.downscale}")
    if config.binocular.every < 1 or config.binocular.downscale < 1:
        raise ConfigError(f"binocular.every and binocular.downscale must be >= 1, got {config.binocular.every} "
                          f"and {config.binocular.downscale}")
    c = config.coreg
    if c.every < 1 or c.downscale < 1 or c.prune_every < 1:
        raise ConfigError(f"coreg.every, coreg.downscale and coreg.prune_every must be >= 1, got {c.every}, "
                          f"{c.downscale} and {c.prune_every}")
    if c.prune_threshold <= 0 or not 0 <= c.ssim_weight <= 1:
        raise ConfigError(f"coreg.prune_threshold must be > 0 and coreg.ssim_weight in [0, 1], got "
                          f"{c.prune_threshold} and {c.ssim_weight}")
    if config.exposure.lr <= 0 or config.exposure.start < 0:
        raise ConfigError(f"exposure.lr must be > 0 and exposure.start >= 0, got {config.exposure.lr} and "
                          f"{config.exposure.start}")
    if config.exposure.enabled and config.optim.random_background:
        raise ConfigError("exposure.enabled=true and optim.random_background=true do not combine: the transform "
                          "would also recolour the random background the target is composited on; random "
                          "backgrounds are for masked synthetic renders, exposure compensation for photographs: "
                          "set one of them to false")
    if config.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {config.checkpoint_every}")
