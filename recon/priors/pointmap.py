"""Pointmap stereo prior for unposed input (DUSt3R / MASt3R / VGGT style).

A ``PointmapModel`` maps images to ``PointmapGroup`` s: per group, every view's pixels as
3D points in the camera frame of the group's first view, a confidence per pixel and,
optionally, intrinsics. Pairwise models (DUSt3R, MASt3R) give one group per image pair;
multi-view models (VGGT) give one group over all views. ``align_pointmaps`` (our own,
``pointmap_align.py``) turns any set of groups into consistent world-to-camera poses
(OpenCV axes), focal lengths and a fused point cloud.

The models are not on PyPI: ``load_pointmap_model(path)`` imports the package the user has
installed (``dust3r``, ``mast3r`` or ``vggt``) and reads a local checkpoint; it says which
package or file is missing. The adapters follow those projects' public inference APIs;
they run only where the user has the package (none is installed here).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import replace
from itertools import permutations
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import MissingDependencyError, ReconError
from recon.priors.pointmap_align import AlignmentResult, AlignSettings, PointmapGroup, align_pointmaps
from recon.types import Camera

__all__ = [
    "AlignSettings", "AlignmentResult", "PointmapGroup", "PointmapModel", "align_pointmaps",
    "cameras_from_alignment", "load_pointmap_model", "all_pairs", "PointmapReconstruction",
]

# Where each family lives and how to get it (for the error message).
_PACKAGES = {
    "dust3r": ("dust3r", "git clone --recursive https://github.com/naver/dust3r and add it to PYTHONPATH"),
    "mast3r": ("mast3r", "git clone --recursive https://github.com/naver/mast3r and add it to PYTHONPATH"),
    "vggt": ("vggt", "pip install git+https://github.com/facebookresearch/vggt (or clone it)"),
}


@runtime_checkable
class PointmapModel(Protocol):
    name: str

    def predict(self, images: Sequence[Tensor], pairs: Sequence[tuple[int, int]] | None = None
                ) -> list[PointmapGroup]:  # images: V x [H, W, 3] float32 in [0, 1]
        ...


def all_pairs(n_views: int) -> list[tuple[int, int]]:
    """Every ordered pair: for 3-9 views the full symmetric graph is affordable."""
    return list(permutations(range(n_views), 2))


def cameras_from_alignment(result: AlignmentResult, sizes: Sequence[tuple[int, int]]) -> list[Camera]:
    """Cameras for the original images (``sizes``: V x (width, height)); the alignment's
    intrinsics are at pointmap resolution and are rescaled here."""
    cams = []
    for v, (w, h) in enumerate(sizes):
        ph, pw = result.resolution[v]
        cam = Camera(K=result.K[v].float(), T_cam_world=result.T_cam_world[v].float(), width=pw, height=ph)
        cams.append(cam.scaled(int(w), int(h)))
    return cams


def _resize_for_model(images: Sequence[Tensor], long_side: int, multiple: int) -> Tensor:
    """V x [H, W, 3] -> [V, 3, h, w] with the long side near ``long_side`` and both sides
    multiples of ``multiple`` (these models need patch-aligned sizes)."""
    h0, w0 = images[0].shape[:2]
    for i, im in enumerate(images):
        if im.shape[:2] != (h0, w0):
            raise ReconError(f"pointmap model: image {i} is {tuple(im.shape[:2])}, image 0 is {(h0, w0)}; "
                             "resize the views to one size first")
    s = long_side / max(h0, w0)
    h, w = (max(multiple, round(x * s / multiple) * multiple) for x in (h0, w0))
    x = torch.stack([im.permute(2, 0, 1) for im in images]).float()
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


class _Dust3rAdapter:
    """DUSt3R / MASt3R through dust3r's ``inference`` (one group per ordered pair)."""

    def __init__(self, model, *, name: str, device: str, long_side: int = 512):
        self.model, self.name, self.device, self.long_side = model.eval().to(device), name, device, long_side

    @torch.no_grad()
    def predict(self, images, pairs=None):
        from dust3r.inference import inference

        x = _resize_for_model(images, self.long_side, 16) * 2 - 1  # dust3r normalises to [-1, 1]
        views = [dict(img=x[i:i + 1], true_shape=torch.tensor([x.shape[2:]]), idx=i, instance=str(i))
                 for i in range(len(images))]
        pairs = list(pairs) if pairs is not None else all_pairs(len(images))
        out = inference([(views[i], views[j]) for i, j in pairs], self.model, self.device, batch_size=1,
                        verbose=False)
        groups = []
        for k, (i, j) in enumerate(pairs):
            pts = torch.stack([out["pred1"]["pts3d"][k], out["pred2"]["pts3d_in_other_view"][k]]).cpu()
            conf = torch.stack([out["pred1"]["conf"][k], out["pred2"]["conf"][k]]).cpu()
            groups.append(PointmapGroup((i, j), pts.float(), conf.float()))
        return groups


class _VggtAdapter:
    """VGGT: one forward over all views -> one group with predicted intrinsics."""

    def __init__(self, model, *, device: str, long_side: int = 518):
        self.model, self.name, self.device, self.long_side = model.eval().to(device), "vggt", device, long_side

    @torch.no_grad()
    def predict(self, images, pairs=None):
        from vggt.utils.pose_enc import pose_encoding_to_extri_intri

        x = _resize_for_model(images, self.long_side, 14).to(self.device)  # [V, 3, h, w] in [0, 1]
        pred = self.model(x)
        _, intrinsics = pose_encoding_to_extri_intri(pred["pose_enc"], x.shape[-2:])
        pts = pred["world_points"][0].cpu().float()  # [V, h, w, 3] in the first camera's frame
        conf = pred["world_points_conf"][0].cpu().float()  # [V, h, w]
        return [PointmapGroup(tuple(range(len(images))), pts, conf, intrinsics[0].cpu().float())]


def _require(package: str, path: Path):
    module, how = _PACKAGES[package]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"pointmap model {path}: the '{module}' package is not installed (it is not on PyPI): {how}"
        ) from exc


def _family(path: Path, family: str | None) -> str:
    if family is not None:
        if family not in _PACKAGES:
            raise ReconError(f"pointmap model: unknown family {family!r}; choose one of {sorted(_PACKAGES)}")
        return family
    name = path.name.lower()
    for fam in ("mast3r", "dust3r", "vggt"):  # mast3r first: its checkpoints mention dust3r too
        if fam in name:
            return fam
    raise ReconError(f"pointmap model {path}: cannot tell the family from the name; pass family= one of "
                     f"{sorted(_PACKAGES)}")


def load_pointmap_model(path: str | Path, *, family: str | None = None, device: str = "cpu") -> PointmapModel:
    """A pointmap model from a local checkpoint (a .pth file or a save_pretrained folder),
    through the user's installed dust3r / mast3r / vggt package."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingDependencyError(
            f"pointmap model: checkpoint {path} not found; pass a local DUSt3R/MASt3R .pth file or a VGGT "
            "folder (config.json + model.safetensors); nothing is downloaded")
    fam = _family(path, family)
    _require(fam, path)
    try:
        if fam == "vggt":
            from vggt.models.vggt import VGGT

            if path.is_dir():
                model = VGGT.from_pretrained(str(path), local_files_only=True)
            else:
                model = VGGT()
                model.load_state_dict(torch.load(path, map_location="cpu"))
            return _VggtAdapter(model, device=device)
        if fam == "mast3r":
            _require("dust3r", path)  # mast3r runs its inference through dust3r
            from mast3r.model import AsymmetricMASt3R as Model
        else:
            from dust3r.model import AsymmetricCroCo3DStereo as Model
        return _Dust3rAdapter(Model.from_pretrained(str(path)), name=fam, device=device)
    except ReconError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise MissingDependencyError(
            f"pointmap model: cannot load {path} with the installed {fam} package "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


class PointmapReconstruction:
    """Training views posed by a pointmap model (global alignment of all their pairs),
    frozen once made: new views are located against it (``register``) from pairs with a
    training view, without changing any training pose or point."""

    def __init__(self, model: PointmapModel, views, result: AlignmentResult, settings: AlignSettings):
        self.model, self.result, self.settings = model, result, settings
        sizes = [(v.width, v.height) for v in views]
        self.views = tuple(replace(v, camera=c) for v, c in zip(views, cameras_from_alignment(result, sizes)))
        self.points, self.colors = result.points, result.colors

    @classmethod
    def from_views(cls, model: PointmapModel, views, settings: AlignSettings | None = None) -> PointmapReconstruction:
        settings = settings or AlignSettings()
        views = tuple(views)
        if len(views) < 2:
            raise ReconError(f"pointmap pose recovery needs at least 2 views, got {len(views)}")
        images = [v.image for v in views]
        groups = model.predict(images, all_pairs(len(views)))
        return cls(model, views, align_pointmaps(groups, len(views), images=images, settings=settings), settings)

    def record(self) -> dict:
        return {"method": f"pointmap model ({getattr(self.model, 'name', type(self.model).__name__)}), global "
                          "alignment of the training views' pairs", "route": "pointmap alignment",
                "num_points": int(self.points.shape[0]),
                "alignment_loss": round(self.result.losses[-1], 6) if self.result.losses else None,
                "focal_px": round(float(self.views[0].camera.K[0, 0]), 2)}

    def register(self, views) -> tuple[list, list[dict]]:
        """Each new view -> its pose from a pair with the most confident training view
        (the pair's own prediction; the training alignment stays frozen)."""
        from recon.priors.pointmap_align import locate_view

        posed, details = [], []
        for v in views:
            best = None
            for i, train in enumerate(self.views):
                group = self.model.predict([train.image, v.image], [(0, 1)])[0]
                score = float(group.confidence[1].mean())
                if best is None or score > best[0]:
                    best = (score, i, group)
            _, i, group = best
            ph, pw = self.result.resolution[i]
            K = self.result.K[i].clone()  # one shared camera: the reference view's intrinsics
            try:
                T = locate_view(PointmapGroup((0, 1), group.points, group.confidence), self.result.world_points[i],
                                K, self.settings)
            except ReconError as exc:
                posed.append(None)
                details.append({"name": v.name, "ok": False, "reference": self.views[i].name, "reason": str(exc)})
                continue
            cam = Camera(K=K, T_cam_world=T, width=pw, height=ph).scaled(v.width, v.height)
            posed.append(replace(v, camera=cam))
            details.append({"name": v.name, "ok": True, "reference": self.views[i].name})
        return posed, details
