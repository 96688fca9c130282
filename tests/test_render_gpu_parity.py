"""CUDA backend against the CPU backend and gsplat's CUDA rasteriser (GPU only)."""

from __future__ import annotations

import pytest
import torch
from test_render_helpers import cameras, random_gaussians

from recon.render import render
from recon.types import Camera, Gaussians, RenderSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _to(g: Gaussians, cams: list[Camera], device: str):
    g2 = Gaussians(*(t.detach().to(device).requires_grad_(True) for t in g.tensors()))
    cams2 = [Camera(K=c.K.to(device), T_cam_world=c.T_cam_world.detach().to(device).requires_grad_(True),
                    width=c.width, height=c.height) for c in cams]
    return g2, cams2


def _run(g, cams, backend, seed=1):
    out = render(g, cams, RenderSettings(backend=backend, background=(0.2, 0.3, 0.4)))
    out.means2d.retain_grad()
    gen = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=gen).to(x.device)).sum()
               for x in (out.rgb, out.depth, out.alpha))
    loss.backward()
    grads = [t.grad.cpu() for t in g.tensors()] + [c.T_cam_world.grad.cpu() for c in cams]
    return out, grads + [out.means2d.grad.cpu()]


def test_cuda_matches_cpu_forward_and_gradients():
    g = random_gaussians(2000, grad=False)
    cams = cameras(97, 61, n=3)
    g_cpu, c_cpu = _to(g, cams, "cpu")
    g_gpu, c_gpu = _to(g, cams, "cuda")
    out_cpu, grads_cpu = _run(g_cpu, c_cpu, "cpu")
    out_gpu, grads_gpu = _run(g_gpu, c_gpu, "cuda")
    for key in ("rgb", "depth", "alpha"):
        err = (getattr(out_cpu, key) - getattr(out_gpu, key).cpu()).abs().max().item()
        assert err < 1e-4, f"{key}: {err}"
    assert torch.equal(out_cpu.visible, out_gpu.visible.cpu())
    for a, b in zip(grads_cpu, grads_gpu):
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < 1e-3, rel


def test_cuda_matches_gsplat_rasterization():
    from gsplat import rasterization

    g = random_gaussians(2000, grad=False)
    cams = cameras(128, 96, n=2)
    g_gpu, c_gpu = _to(g, cams, "cuda")
    ours = render(g_gpu, c_gpu, RenderSettings(backend="cuda"))
    rgb, alpha, _ = rasterization(
        g_gpu.means, g_gpu.quats, torch.exp(g_gpu.log_scales), torch.sigmoid(g_gpu.opacity_logits),
        g_gpu.sh, torch.stack([c.T_cam_world for c in c_gpu]), torch.stack([c.K for c in c_gpu]),
        128, 96, sh_degree=3)
    # gsplat's tile bounds use a slightly different extent, so allow tiny differences.
    assert (ours.rgb - rgb).abs().max() < 2e-3
    assert (ours.alpha - alpha[..., 0]).abs().max() < 2e-3
