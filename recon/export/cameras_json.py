"""The run folder's camera file, ``cameras.json``: written by the pipeline, read by
``recon eval``, ``recon view`` and ``recon export``. One reader and one writer so the
format cannot drift between them.

Layout: ``{"convention": ..., "cameras": [{"name", "split", "K", "T_cam_world", "width",
"height", ["distortion"]}, ...]}`` with the conventions of ``recon.types``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from recon.errors import SceneError
from recon.types import Camera

CONVENTION = "OpenCV axes, T_cam_world world-to-camera, K in pixels (pixel centres at +0.5)"


@dataclass(frozen=True)
class NamedCamera:
    name: str
    split: str  # "train" | "test"
    camera: Camera


def camera_record(name: str, split: str, camera: Camera) -> dict:
    record = {"name": name, "split": split, "K": camera.K.tolist(),
              "T_cam_world": camera.T_cam_world.tolist(),
              "width": camera.width, "height": camera.height}
    if camera.distortion is not None:
        record["distortion"] = camera.distortion.tolist()
    return record


def write_cameras_json(path: str | Path, cameras: Iterable[NamedCamera]) -> Path:
    path = Path(path)
    records = [camera_record(c.name, c.split, c.camera) for c in cameras]
    path.write_text(json.dumps({"convention": CONVENTION, "cameras": records}, indent=2))
    return path


def _camera_from_record(record: dict, where: str) -> Camera:
    try:
        K = torch.tensor(record["K"], dtype=torch.float32)
        T = torch.tensor(record["T_cam_world"], dtype=torch.float32)
        width, height = int(record["width"]), int(record["height"])
    except KeyError as exc:
        raise SceneError(f"{where}: camera entry lacks key {exc.args[0]!r}; "
                         "expected name, split, K, T_cam_world, width, height") from exc
    except (TypeError, ValueError) as exc:
        raise SceneError(f"{where}: camera entry has a malformed value ({exc})") from exc
    if K.shape != (3, 3) or T.shape != (4, 4):
        raise SceneError(f"{where}: K must be 3x3 and T_cam_world 4x4, got "
                         f"{tuple(K.shape)} and {tuple(T.shape)}")
    distortion = record.get("distortion")
    return Camera(K=K, T_cam_world=T, width=width, height=height,
                  distortion=torch.tensor(distortion, dtype=torch.float32) if distortion else None)


def read_cameras_json(path: str | Path) -> list[NamedCamera]:
    """All cameras of a run, in file order. Raises SceneError naming the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(f"{path} not found: pass a folder written by `recon fit`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SceneError(f"{path}: not valid JSON ({exc}); re-run the fit or fix the file") from None
    entries = data.get("cameras") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SceneError(f"{path}: expected {{'cameras': [...]}} as `recon fit` writes it")
    return [NamedCamera(str(e.get("name", f"camera_{i:03d}")), str(e.get("split", "train")),
                        _camera_from_record(e, f"{path} camera {i}"))
            for i, e in enumerate(entries)]
