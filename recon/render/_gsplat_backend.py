"""Render our ``Gaussians`` and ``Camera``s with gsplat's CUDA ``rasterization``.

Not a product backend: it exists so that the CUDA parity tests and the raster benchmark
can compare our kernels with gsplat on exactly the same scene. It maps our optimisation-
space parameters (log scales, opacity logits, unnormalised wxyz quaternions, SH) to what
gsplat expects and gsplat's outputs back to a ``RenderOutput``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recon.errors import MissingDependencyError, ReconError
from recon.types import Camera, Gaussians, RenderOutput, RenderSettings

__all__ = ["gsplat_available", "render_gsplat"]


def gsplat_available() -> bool:
    """True when gsplat imports and a CUDA device is present (its rasteriser is CUDA-only)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def _image_size(cameras: Sequence[Camera]) -> tuple[int, int]:
    width, height = cameras[0].width, cameras[0].height
    for index, camera in enumerate(cameras):
        if (camera.width, camera.height) != (width, height):
            raise ReconError(
                f"camera {index} is {camera.width}x{camera.height} but camera 0 is "
                f"{width}x{height}; render cameras of one image size per call"
            )
    return width, height


def _empty_output(
    n_cameras: int, width: int, height: int, background: Tensor, device: torch.device
) -> RenderOutput:
    rgb = background.view(1, 1, 1, 3).expand(n_cameras, height, width, 3).contiguous()
    zeros = torch.zeros(n_cameras, height, width, device=device)  # [C, H, W]
    return RenderOutput(
        rgb=rgb,
        depth=zeros,
        alpha=zeros.clone(),
        means2d=torch.zeros(n_cameras, 0, 2, device=device),
        radii=torch.zeros(n_cameras, 0, dtype=torch.int32, device=device),
        visible=torch.zeros(n_cameras, 0, dtype=torch.bool, device=device),
    )


def render_gsplat(
    gaussians: Gaussians,
    cameras: Camera | Sequence[Camera],
    settings: RenderSettings = RenderSettings(),
) -> RenderOutput:
    """Render with gsplat 1.5's ``rasterization`` (CUDA tensors only); same contract as
    ``recon.render.render``: differentiable w.r.t. every Gaussian tensor and the poses."""
    try:
        from gsplat import rasterization
    except ImportError as exc:  # pragma: no cover - gsplat is a core dependency
        raise MissingDependencyError(
            "gsplat is not installed; install it to compare with gsplat's rasteriser"
        ) from exc
    cameras = [cameras] if isinstance(cameras, Camera) else list(cameras)
    if not cameras:
        raise ReconError("render_gsplat got no cameras; pass at least one Camera")
    width, height = _image_size(cameras)
    device = gaussians.means.device
    if device.type != "cuda":
        raise ReconError(
            f"gsplat's rasteriser needs CUDA tensors but the Gaussians are on {device}; "
            "move them with gaussians.to('cuda')"
        )
    viewmats = torch.stack([c.T_cam_world for c in cameras]).to(device)  # [C, 4, 4]
    Ks = torch.stack([c.K for c in cameras]).to(device)  # [C, 3, 3]
    background = torch.tensor(settings.background, dtype=torch.float32, device=device)  # [3]
    if len(gaussians) == 0:
        return _empty_output(len(cameras), width, height, background, device)

    colors, alphas, info = _rasterize(rasterization, gaussians, viewmats, Ks, width, height,
                                      settings, background)
    rgb = colors[..., :3]  # [C, H, W, 3]
    depth = colors[..., 3]  # [C, H, W] expected depth (gsplat divides by alpha)
    alpha = alphas[..., 0]  # [C, H, W]
    means2d = info["means2d"]  # [C, N, 2]
    if means2d.requires_grad:
        # densification reads means2d.grad, as with our own backends
        means2d.retain_grad()
    radii = info["radii"]  # [C, N, 2] in gsplat 1.5 (x and y radius)
    if radii.dim() == 3:
        radii = radii.max(dim=-1).values  # [C, N]
    radii = radii.to(torch.int32)
    return RenderOutput(rgb=rgb, depth=depth, alpha=alpha, means2d=means2d, radii=radii,
                        visible=radii > 0)


def _rasterize(rasterization, gaussians: Gaussians, viewmats: Tensor, Ks: Tensor, width: int,
               height: int, settings: RenderSettings,
               background: Tensor) -> tuple[Tensor, Tensor, dict]:
    """gsplat's rasterization in "RGB+ED" mode: colours [C,H,W,4], alphas [C,H,W,1], info."""
    n_cameras = viewmats.shape[0]
    degree = gaussians.sh_degree if settings.sh_degree is None else settings.sh_degree
    n_coeffs = (degree + 1) ** 2
    return rasterization(
        means=gaussians.means,  # [N, 3]
        quats=gaussians.quats,  # [N, 4] wxyz; gsplat normalises them
        scales=torch.exp(gaussians.log_scales),  # [N, 3]
        opacities=torch.sigmoid(gaussians.opacity_logits),  # [N]
        colors=gaussians.sh[:, :n_coeffs],  # [N, K, 3]
        viewmats=viewmats,  # [C, 4, 4]
        Ks=Ks,  # [C, 3, 3]
        width=width,
        height=height,
        near_plane=settings.near,
        far_plane=settings.far,
        sh_degree=degree,
        packed=False,  # keep the dense [C, N] layout our RenderOutput uses
        tile_size=settings.tile_size,
        backgrounds=background.expand(n_cameras, 3),  # [C, 3]
        render_mode="RGB+ED",
        rasterize_mode="antialiased" if settings.antialiased else "classic",
    )
