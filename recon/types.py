"""Shared types: the only module every stage may import.

Conventions (stated once, used everywhere):

* World-to-camera poses are named ``T_cam_world`` ([4, 4], maps a world point to camera
  coordinates). Cameras follow OpenCV: x right, y down, z forward (the camera looks
  down +z). ``T_world_cam`` is its inverse (camera-to-world).
* Intrinsics ``K`` ([3, 3]) are in pixels of the image the camera belongs to, with the
  continuous pixel convention of COLMAP and gsplat: the top-left corner of the image is
  (0, 0) and the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
* Images are float32 RGB in [0, 1], shape [H, W, 3]; masks are bool [H, W] (True = object);
  depths are float32 z-depth [H, W] with 0 meaning "unknown".
* Quaternions are (w, x, y, z).
* Gaussian parameters are stored in their optimisation space: log scales, unnormalised
  quaternions, opacity logits, spherical-harmonic coefficients (DC first).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor


@dataclass(frozen=True)
class Camera:
    K: Tensor  # [3, 3] float32 pixel intrinsics
    T_cam_world: Tensor  # [4, 4] float32 world-to-camera (OpenCV axes)
    width: int
    height: int
    # [4] OpenCV (k1, k2, p1, p2) or None when the image is undistorted / pinhole
    distortion: Tensor | None = None

    @property
    def T_world_cam(self) -> Tensor:  # [4, 4] camera-to-world
        return torch.linalg.inv(self.T_cam_world)

    @property
    def centre(self) -> Tensor:  # [3] camera centre in world coordinates
        R = self.T_cam_world[:3, :3]
        t = self.T_cam_world[:3, 3]
        return -R.T @ t

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera for an image resized to (width, height)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.clone()
        K[0] *= sx
        K[1] *= sy
        return replace(self, K=K, width=width, height=height)


@dataclass(frozen=True)
class View:
    name: str  # file stem, unique within a scene
    image: Tensor  # [H, W, 3] float32 in [0, 1]
    camera: Camera
    mask: Tensor | None = None  # [H, W] bool, True on the object
    depth: Tensor | None = None  # [H, W] float32 z-depth, 0 = unknown
    path: Path | None = None  # where the image was read from (for error messages)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class Normalisation:
    """Maps original world coordinates to the normalised frame the pipeline works in:
    ``x_normalised = (x_world - centre) * scale``. Recorded so outputs map back."""

    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def to_normalised(self, points: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
        return (points - points.new_tensor(self.centre)) * self.scale

    def to_world(self, points: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
        return points / self.scale + points.new_tensor(self.centre)


@dataclass(frozen=True)
class Split:
    train: tuple[int, ...]  # indices into Scene.views
    test: tuple[int, ...]
    protocol: str  # e.g. "llff", "dtu", "blender8", "spare", "farthest"
    description: str = ""  # human-readable account of how the views were chosen


@dataclass(frozen=True)
class Scene:
    views: tuple[View, ...]
    format: str  # detected or forced loader name ("llff", "dtu", "blender", ...)
    root: Path | None  # folder the scene was read from; None for generated scenes
    normalisation: Normalisation = field(default_factory=Normalisation)
    split: Split | None = None  # a split the format itself defines (Blender train/test)
    posed: bool = True  # False for a plain folder of images (poses must be recovered)
    background: tuple[float, float, float] | None = None  # for RGBA scenes
    # view names the format itself marks as test views (Blender test set, SpaRe test_views)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.views)

    def subset(self, indices: list[int] | tuple[int, ...]) -> tuple[View, ...]:
        return tuple(self.views[i] for i in indices)


@dataclass
class Gaussians:
    """Gaussian parameters in optimisation space. Tensors may require grad."""

    means: Tensor  # [N, 3] world positions
    log_scales: Tensor  # [N, 3] log standard deviations along the local axes
    quats: Tensor  # [N, 4] (w, x, y, z), not necessarily normalised
    opacity_logits: Tensor  # [N] logit of opacity
    sh: Tensor  # [N, K, 3] SH coefficients, K = (degree + 1) ** 2, sh[:, 0] is DC

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    def detach(self) -> Gaussians:
        return Gaussians(*(t.detach() for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return (self.means, self.log_scales, self.quats, self.opacity_logits, self.sh)

    def to(self, device: torch.device | str) -> Gaussians:
        return Gaussians(*(t.to(device) for t in self.tensors()))


@dataclass(frozen=True)
class RenderSettings:
    sh_degree: int | None = None  # None = use every band the Gaussians carry
    near: float = 0.01  # Gaussians whose centre is nearer than this are culled
    far: float = 1e10
    antialiased: bool = False  # gsplat's "antialiased" mode (mip filter, opacity compensation)
    tile_size: int = 16
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    backend: str = "auto"  # "auto" | "cpu" | "cuda" | "gsplat" | "reference"


@dataclass
class RenderOutput:
    rgb: Tensor  # [C, H, W, 3]
    depth: Tensor  # [C, H, W] expected z-depth (alpha-normalised; 0 where alpha is 0)
    alpha: Tensor  # [C, H, W] accumulated opacity
    means2d: Tensor  # [C, N, 2] projected centres; its .grad feeds densification
    radii: Tensor  # [C, N] int32 screen radius in pixels, 0 = not visible
    visible: Tensor  # [C, N] bool
