"""The gsplat adapter (recon/render/_gsplat_backend.py): input errors on any machine, and
on a GPU that it renders the same picture as gsplat called directly."""

from __future__ import annotations

import pytest
import torch

from recon.errors import ReconError
from recon.geometry import look_at
from recon.render._gsplat_backend import gsplat_available, render_gsplat
from recon.types import Camera, Gaussians, RenderSettings


def _camera(width: int = 40, height: int = 30) -> Camera:
    K = torch.tensor([[36.0, 0.0, 21.0], [0.0, 38.0, 14.0], [0.0, 0.0, 1.0]])
    T_cam_world = look_at(torch.tensor([0.0, 0.0, -3.0]), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
    return Camera(K=K, T_cam_world=T_cam_world, width=width, height=height)


def _gaussians(n: int = 64, device: str = "cpu") -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.rand(n, 3, generator=gen) - 0.5,  # [N, 3]
        log_scales=torch.log(0.05 + 0.1 * torch.rand(n, 3, generator=gen)),  # [N, 3]
        quats=torch.randn(n, 4, generator=gen),  # [N, 4]
        opacity_logits=torch.randn(n, generator=gen),  # [N]
        sh=0.3 * torch.randn(n, 4, 3, generator=gen),  # [N, 4, 3]
    ).to(device)


def test_cpu_tensors_are_refused_with_the_fix():
    with pytest.raises(ReconError, match="needs CUDA tensors.*to\\('cuda'\\)"):
        render_gsplat(_gaussians(), _camera())


def test_mixed_image_sizes_are_refused():
    with pytest.raises(ReconError, match="camera 1 is 41x30 but camera 0 is 40x30"):
        render_gsplat(_gaussians(), [_camera(), _camera(width=41)])


def test_availability_needs_a_gpu():
    assert gsplat_available() == torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_matches_gsplat_called_directly():
    from gsplat import rasterization

    g = _gaussians(device="cuda")
    cam = _camera()
    out = render_gsplat(g, [cam, cam], RenderSettings(background=(0.2, 0.4, 0.6)))
    colors, alphas, _ = rasterization(
        g.means, g.quats, torch.exp(g.log_scales), torch.sigmoid(g.opacity_logits), g.sh,
        cam.T_cam_world[None].cuda(), cam.K[None].cuda(), cam.width, cam.height, sh_degree=1,
        packed=False, backgrounds=torch.tensor([[0.2, 0.4, 0.6]], device="cuda"))
    assert out.rgb.shape == (2, 30, 40, 3) and out.radii.shape == (2, 64)
    assert out.alpha.max() > 0.5, "the Gaussians should be in view"
    assert torch.allclose(out.rgb[0], colors[0], atol=1e-6)
    assert torch.allclose(out.alpha[0], alphas[0, ..., 0], atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_zero_gaussians_render_the_background():
    g = Gaussians(*(t[:0] for t in _gaussians(device="cuda").tensors()))
    out = render_gsplat(g, _camera(), RenderSettings(background=(0.2, 0.4, 0.6)))
    assert torch.allclose(out.rgb, torch.tensor([0.2, 0.4, 0.6], device="cuda").expand_as(out.rgb))
    assert out.alpha.abs().max() == 0 and out.means2d.shape == (1, 0, 2)
