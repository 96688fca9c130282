"""Autograd functions over the compiled stages (recon/render/_ext.py).

Two functions, so that the screen-space means are a real graph node whose ``.grad``
densification can read: ``_Project`` (Gaussians + poses -> screen-space Gaussians) and
``_Rasterize`` (screen-space Gaussians -> rgb, depth sum, alpha).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.render import _ext
from recon.timing import stage


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, log_scales, quats, opacity_logits, sh, viewmats, Ks, width, height,
                sh_degree, near, far, antialiased):
        ext = _ext.load()
        options = (width, height, sh_degree, near, far, antialiased)
        means2d, conics, colors, opacities, depths, radii = ext.project_forward(
            means, log_scales, quats, opacity_logits, sh, viewmats, Ks, *options)
        ctx.save_for_backward(means, log_scales, quats, opacity_logits, sh, viewmats, Ks, radii)
        ctx.options = options
        ctx.mark_non_differentiable(radii)
        return means2d, conics, colors, opacities, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_colors, v_opacities, v_depths, _v_radii):
        means, log_scales, quats, opacity_logits, sh, viewmats, Ks, radii = ctx.saved_tensors
        C, N = radii.shape[:2]

        def dense(g, *shape):  # outputs unused by the loss come back as None
            return torch.zeros(shape, dtype=means.dtype, device=means.device) if g is None else g.contiguous()

        with stage("render_backward"):  # nested in the trainer's "backward": the rest is other autograd
            grads = _ext.load().project_backward(
                means, log_scales, quats, opacity_logits, sh, viewmats, Ks, *ctx.options, radii,
                dense(v_means2d, C, N, 2), dense(v_conics, C, N, 3), dense(v_colors, C, N, 3),
                dense(v_opacities, C, N), dense(v_depths, C, N))
        v_means, v_log_scales, v_quats, v_logits, v_sh, v_viewmats = grads
        return (v_means, v_log_scales, v_quats, v_logits, v_sh, v_viewmats, None,
                None, None, None, None, None, None)


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, width, height, tile_size):
        ext = _ext.load()
        rgb, depth_sum, alpha, n_contrib, tile_offsets, flat_ids = ext.rasterize_forward(
            means2d, conics, colors, opacities, depths, radii, width, height, tile_size)
        ctx.save_for_backward(means2d, conics, colors, opacities, depths, tile_offsets, flat_ids,
                              alpha, n_contrib)
        ctx.options = (width, height, tile_size)
        return rgb, depth_sum, alpha

    @staticmethod
    def backward(ctx, v_rgb, v_depth_sum, v_alpha):
        saved = ctx.saved_tensors
        alpha = saved[7]
        v_rgb = torch.zeros((*alpha.shape, 3), dtype=alpha.dtype, device=alpha.device) if v_rgb is None else v_rgb
        v_depth_sum = torch.zeros_like(alpha) if v_depth_sum is None else v_depth_sum
        v_alpha = torch.zeros_like(alpha) if v_alpha is None else v_alpha
        with stage("render_backward"):
            grads = _ext.load().rasterize_backward(
                *saved, v_rgb.contiguous(), v_depth_sum.contiguous(), v_alpha.contiguous(), *ctx.options)
        return (*grads, None, None, None, None)


def project(means, log_scales, quats, opacity_logits, sh, viewmats, Ks, width, height,
            sh_degree, near, far, antialiased) -> dict[str, Tensor]:
    """Same contract as recon.render._reference.project."""
    out = _Project.apply(means, log_scales, quats, opacity_logits, sh, viewmats, Ks, width,
                         height, sh_degree, near, far, antialiased)
    keys = ("means2d", "conics", "colors", "opacities", "depths", "radii")
    return dict(zip(keys, out))


def rasterize(proj: dict[str, Tensor], width: int, height: int, tile_size: int):
    """-> rgb [C,H,W,3] (no background), depth_sum [C,H,W], alpha [C,H,W]."""
    return _Rasterize.apply(proj["means2d"], proj["conics"], proj["colors"], proj["opacities"],
                            proj["depths"], proj["radii"], width, height, tile_size)
