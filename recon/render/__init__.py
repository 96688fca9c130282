"""The one public entry to rasterisation:

    render(gaussians, cameras, settings) -> RenderOutput

Differentiable w.r.t. every Gaussian parameter and the camera poses (``T_cam_world``).
Backends: "cpu" (C++/OpenMP extension), "cuda" (CUDA extension), "reference" (dense pure
torch; tests only). "auto" picks cuda for CUDA tensors, otherwise cpu.
"""

from __future__ import annotations

from collections.abc import Sequence

from recon.types import Camera, Gaussians, RenderOutput, RenderSettings

__all__ = ["render"]


def render(
    gaussians: Gaussians,
    cameras: Camera | Sequence[Camera],
    settings: RenderSettings = RenderSettings(),
) -> RenderOutput:
    """Render a batch of cameras sharing one image size. See recon.types for shapes."""
    raise NotImplementedError("being written: see issue 3")
