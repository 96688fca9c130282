"""Dense pure-torch renderer: the oracle the compiled backends are tested against.

Tests only: every Gaussian is evaluated at every pixel, so memory grows as C * H * W * N.
It follows the same two stages as the compiled backends (projection, then blending) with
the same constants, so that each stage can be compared on its own. It reuses gsplat's
pure-torch projection and SH code (they run on CPU) and never touches the extension.
"""

from __future__ import annotations

import torch
from gsplat.cuda._torch_impl import (
    _persp_proj,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
    _world_to_cam,
)
from torch import Tensor

# Mirrors cuda/include/recon/constants.h; tests check the two agree.
ALPHA_THRESHOLD = 1.0 / 255.0  # contributions below this are skipped
ALPHA_CAP = 0.99  # per-Gaussian alpha is clamped here so transmittance never hits 0
TRANSMITTANCE_MIN = 1e-4  # blending stops once transmittance would fall to this
DILATION = 0.3  # low-pass filter added to the 2D covariance (pixels^2)
MAX_EXTEND = 3.33  # sigma extent of the screen-space bounding box


def project(
    means: Tensor,  # [N, 3]
    log_scales: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any norm
    opacity_logits: Tensor,  # [N]
    sh: Tensor,  # [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4] T_cam_world
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    near: float,
    far: float,
    antialiased: bool,
) -> dict[str, Tensor]:
    """Per-camera screen-space Gaussians: means2d [C,N,2], conics [C,N,3], colors [C,N,3],
    opacities [C,N], depths [C,N], radii [C,N,2] int32 (0 where culled)."""
    covars, _ = _quat_scale_to_covar_preci(quats, torch.exp(log_scales), compute_preci=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)  # [C,N,3], [C,N,3,3]
    means2d, cov2d = _persp_proj(means_c, covars_c, Ks, width, height)  # [C,N,2], [C,N,2,2]
    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + DILATION * torch.eye(2, dtype=means.dtype)
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    det_c = det.clamp(min=1e-10)
    conics = torch.stack(
        [cov2d[..., 1, 1] / det_c, -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]) / det_c,
         cov2d[..., 0, 0] / det_c], dim=-1,
    )  # [C, N, 3]
    opacities = torch.sigmoid(opacity_logits)[None].expand(viewmats.shape[0], -1)  # [C, N]
    if antialiased:
        opacities = opacities * torch.sqrt((det_orig / det_c).clamp(min=0.0))
    depths = means_c[..., 2]  # [C, N]

    campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    colors = _spherical_harmonics(sh_degree, dirs, sh[None].expand(viewmats.shape[0], -1, -1, -1))
    colors = torch.clamp_min(colors + 0.5, 0.0)  # [C, N, 3]

    radii = screen_radii(means2d.detach(), cov2d.detach(), opacities.detach(), depths.detach(),
                         det.detach(), width, height, near, far)
    return dict(means2d=means2d, conics=conics, colors=colors, opacities=opacities,
                depths=depths, radii=radii)


@torch.no_grad()
def screen_radii(means2d, cov2d, opacities, depths, det, width, height, near, far) -> Tensor:
    """[C,N,2] int32 bounding half-extents in pixels. The extent shrinks with opacity:
    beyond sqrt(2 ln(255 o)) sigma the alpha is below 1/255 and never blended."""
    extend = torch.sqrt(2.0 * torch.log((opacities / ALPHA_THRESHOLD).clamp(min=1.0)))
    extend = extend.clamp(max=MAX_EXTEND)  # [C, N]
    sd = torch.sqrt(torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], -1).clamp(min=0.0))
    radius = torch.ceil(extend[..., None] * sd)  # [C, N, 2]
    valid = (det > 0) & (depths > near) & (depths < far) & (opacities >= ALPHA_THRESHOLD)
    inside = (
        (means2d[..., 0] + radius[..., 0] > 0) & (means2d[..., 0] - radius[..., 0] < width)
        & (means2d[..., 1] + radius[..., 1] > 0) & (means2d[..., 1] - radius[..., 1] < height)
    )
    keep = valid & inside & (radius > 0).all(-1)
    return torch.where(keep[..., None], radius, 0.0).int()


def rasterize(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int32
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back blending of every visible Gaussian at every pixel.
    Returns rgb [C,H,W,3] (no background), depth_sum [C,H,W] (sum of weight * z, not
    normalised) and alpha [C,H,W] (= 1 - final transmittance)."""
    outs = [
        _rasterize_one(means2d[c], conics[c], colors[c], opacities[c], depths[c], radii[c],
                       width, height)
        for c in range(means2d.shape[0])
    ]
    return tuple(torch.stack(t) for t in zip(*outs))  # type: ignore[return-value]


def _rasterize_one(means2d, conics, colors, opacities, depths, radii, width, height,
                   region: tuple[int, int, int, int] | None = None, ids=None):
    """One camera. region = (x0, y0, w, h) blends only that block of pixels (the tiled torch
    peer of the benchmark); ids [M] restricts the candidates (default: every visible one)."""
    x0, y0, w_px, h_px = region if region is not None else (0, 0, width, height)
    if ids is None:
        ids = torch.nonzero((radii > 0).all(-1)).squeeze(-1)  # [M]
    ids = ids[torch.argsort(depths.detach()[ids], stable=True)]
    ys, xs = torch.meshgrid(torch.arange(y0, y0 + h_px, dtype=means2d.dtype),
                            torch.arange(x0, x0 + w_px, dtype=means2d.dtype), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 1, 2) + 0.5  # [P, 1, 2] pixel centres
    d = means2d[ids][None] - pix  # [P, M, 2]
    a, b, c = conics[ids].unbind(-1)  # [M] each
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacities[ids] * torch.exp(-sigma), ALPHA_CAP)  # [P, M]
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, 0.0)
    # Early termination: a Gaussian is blended only while the transmittance after it stays
    # above the threshold; transmittance only falls, so the kept set is a prefix.
    t_after = torch.cumprod(1.0 - alpha, dim=-1)  # [P, M]
    alpha = torch.where(t_after > TRANSMITTANCE_MIN, alpha, 0.0)
    t_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], -1), -1)
    w = alpha * t_before  # [P, M]
    rgb = (w @ colors[ids]).reshape(h_px, w_px, 3)
    depth_sum = (w @ depths[ids]).reshape(h_px, w_px)
    t_final = t_before[:, -1] * (1.0 - alpha[:, -1]) if alpha.shape[1] else torch.ones(
        h_px * w_px, dtype=means2d.dtype) + 0.0 * means2d.sum()
    return rgb, depth_sum, (1.0 - t_final).reshape(h_px, w_px)

