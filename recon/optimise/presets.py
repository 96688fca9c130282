"""Which preset ``recon fit SCENE`` uses when no ``--config`` is given: the one tuned for the
scene's format and protocol (LLFF 3-view -> ``llff3``, DTU -> ``dtu3``, Blender ->
``blender8``, SpaRe -> ``spare3``/``spare9``, the built-in scene -> ``synthetic``, anything
else -> ``generic``: a custom capture at a working resolution and budget that fit on a CPU
in minutes).

``--config quality`` asks for the same choice at the larger budget: the quality variant
``configs/quality-<preset>.yaml`` of the preset the scene would get (``base: <preset>`` plus
what the longer fit changes, chosen on validation views; at most ~15 min on 2 CPU cores).
A preset without a quality variant is a ConfigError naming those that have one.

The choice is made before the scene is loaded (the preset decides the resolution it loads
at), from the format detection and a cheap look at the camera files, never the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.data import BUILTIN_PREFIX, detect_format
from recon.data.splits import BLENDER8_TRAIN, DTU_VIEWS
from recon.errors import ConfigError
from recon.optimise.config import preset_names, preset_path

# protocol -> preset (a protocol the preset was tuned and benchmarked for)
PRESET_FOR_PROTOCOL = {"llff": "llff3", "dtu": "dtu3", "blender8": "blender8"}
SPARE_PRESETS = ((3, "spare3"), (9, "spare9"))  # (most training views, preset)
SYNTHETIC_PRESET = "synthetic"
GENERIC_PRESET = "generic"
QUALITY = "quality"  # --config quality: the quality variant of the preset the scene gets
QUALITY_PREFIX = "quality-"


@dataclass(frozen=True)
class PresetChoice:
    name: str  # preset in configs/
    format: str  # detected (or forced) scene format
    protocol: str  # the protocol the choice assumed
    reason: str  # one line for the user: why this preset

    def message(self) -> str:
        return f"config: {self.name} ({self.reason}; pass --config NAME to choose another)"

    def record(self) -> dict:
        """metrics.json's ``config.preset``/``reason`` (recon.pipeline.fit_scene(preset=...))."""
        return {"name": self.name, "reason": f"picked for this scene: {self.reason}"}


def quality_variant(preset: str) -> str:
    """``quality-<preset>``, the larger-budget variant of ``preset``; ConfigError when it has none."""
    name = QUALITY_PREFIX + preset
    try:
        preset_path(name)
    except ConfigError:
        have = [p.removeprefix(QUALITY_PREFIX) for p in preset_names() if p.startswith(QUALITY_PREFIX)]
        raise ConfigError(f"--config quality: the {preset} preset has no quality variant (configs/{name}.yaml); "
                          f"quality variants exist for: {', '.join(have) or 'none'}; pass --config {preset} "
                          f"for its CPU-minutes budget") from None
    return name


def choose_preset(scene_spec: str, *, format: str | None = None, protocol: str | None = None,
                  views: int | None = None, quality: bool = False) -> PresetChoice:
    """The preset for fitting ``scene_spec`` with ``views`` training views under ``protocol``
    (None: the format's usual protocol); with ``quality``, its quality variant. SceneError when
    the folder is not a scene, ConfigError when the preset has no quality variant."""
    choice = _choose_preset(scene_spec, format=format, protocol=protocol, views=views)
    if not quality:
        return choice
    return PresetChoice(quality_variant(choice.name), choice.format, choice.protocol,
                        f"{choice.reason}, quality budget (--config quality)")


def _choose_preset(scene_spec: str, *, format: str | None, protocol: str | None, views: int | None) -> PresetChoice:
    spec = str(scene_spec)
    if spec.startswith(BUILTIN_PREFIX):
        format = "synthetic"
    elif format is None:
        format = detect_format(Path(spec).expanduser())
    if protocol in (None, "auto"):
        protocol = usual_protocol(Path(spec).expanduser(), format)
    if format == "synthetic" and protocol == "llff":
        return PresetChoice(SYNTHETIC_PRESET, format, protocol, "the built-in forward-facing scene, LLFF protocol")
    if protocol in PRESET_FOR_PROTOCOL:
        name = PRESET_FOR_PROTOCOL[protocol]
        return PresetChoice(name, format, protocol, f"{format} scene, {protocol} protocol")
    if protocol == "spare":
        n = views if views is not None else 3
        name = next((p for most, p in SPARE_PRESETS if n <= most), SPARE_PRESETS[-1][1])
        return PresetChoice(name, format, protocol, f"{format} scene, SpaRe protocol, {n} views")
    return PresetChoice(GENERIC_PRESET, format, protocol,
                        f"{format} scene, {protocol} protocol: a custom capture, at the CPU working size "
                        f"and budget of configs/generic.yaml")


def usual_protocol(root: Path, format: str) -> str:
    """The protocol the fit will use when none is asked for, decided from the camera files
    alone: ``recon.data.splits.default_protocol``'s choice, except for the built-in scene,
    which imitates an LLFF capture (recon/data/synthetic.py) and whose preset says so."""
    if format == "synthetic":
        return "llff"
    if format == "llff":
        return "llff"
    if format == "blender":
        return "blender8" if _blender_train_frames(root) > max(BLENDER8_TRAIN) else "farthest"
    if format == "dtu":
        return "dtu" if _dtu_camera_count(root) == DTU_VIEWS else "farthest"
    if format == "spare":
        from recon.data.detect import find_projection_folder
        from recon.data.spare import find_split_file
        from recon.data.splits import read_spare_split

        folder = find_projection_folder(root)
        if folder is not None and len(list(folder.glob("pos_[0-9][0-9][0-9].txt"))) == DTU_VIEWS:
            return "dtu"
        split = find_split_file(root)
        if split is not None and root.name in read_spare_split(split):
            return "spare"
    return "farthest"


def _blender_train_frames(root: Path) -> int:
    import json

    try:
        return len(json.loads((root / "transforms_train.json").read_text()).get("frames", []))
    except (OSError, ValueError, AttributeError):
        return 0  # the loader reports what is wrong with the file


def _dtu_camera_count(root: Path) -> int:
    import numpy as np

    for name in ("cameras_sphere.npz", "cameras.npz", "cameras_large.npz"):
        if (root / name).is_file():
            with np.load(root / name) as cams:
                return sum(1 for k in cams.files if k.startswith("world_mat_") and not k.startswith("world_mat_inv"))
    return 0
