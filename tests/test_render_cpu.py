"""The C++/OpenMP backend against the dense pure-torch reference and finite differences."""

from __future__ import annotations

import pytest
import torch
from conftest import require_extension
from test_render_helpers import cameras, random_gaussians

from recon.render import _ext, _reference, render
from recon.types import Camera, Gaussians, RenderSettings

require_extension()


def _render(g, cams, backend, **kw):
    return render(g, cams, RenderSettings(backend=backend, **kw))


def _grads(g: Gaussians, cams: list[Camera], backend: str, seed: int = 1, **kw):
    """Loss = random projection of every output; returns outputs and all input gradients."""
    for t in (*g.tensors(), *(c.T_cam_world for c in cams)):
        t.grad = None
    out = _render(g, cams, backend, **kw)
    out.means2d.retain_grad()
    gen = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)).sum()
               for x in (out.rgb, out.depth, out.alpha))
    loss.backward()
    names = ("means", "log_scales", "quats", "opacity_logits", "sh")
    grads = {n: t.grad.clone() for n, t in zip(names, g.tensors())}
    grads["means2d"] = out.means2d.grad.clone()
    for i, c in enumerate(cams):
        grads[f"pose{i}"] = c.T_cam_world.grad.clone()
    return out, grads


def test_constants_match_reference():
    ext = _ext.load()
    assert ext.ALPHA_THRESHOLD == pytest.approx(_reference.ALPHA_THRESHOLD, rel=1e-6)
    assert ext.ALPHA_CAP == pytest.approx(_reference.ALPHA_CAP, rel=1e-6)
    assert ext.TRANSMITTANCE_MIN == pytest.approx(_reference.TRANSMITTANCE_MIN, rel=1e-6)
    assert ext.DILATION == pytest.approx(_reference.DILATION, rel=1e-6)
    assert ext.MAX_EXTEND == pytest.approx(_reference.MAX_EXTEND, rel=1e-6)


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("size", [(61, 47), (40, 72)])
def test_forward_matches_reference_float32(size, antialiased):
    g = random_gaussians(1500, grad=False)
    cams = cameras(*size, n=3)
    kw = dict(background=(0.1, 0.5, 0.9), antialiased=antialiased)
    ref = _render(g, cams, "reference", **kw)
    cpu = _render(g, cams, "cpu", **kw)
    assert ref.alpha.amax() > 0.9  # the scene really covers the images
    for key in ("rgb", "depth", "alpha"):
        err = (getattr(ref, key) - getattr(cpu, key)).abs().max().item()
        assert err < 1e-4, f"{key}: max abs error {err}"
    # radii are ceil()ed, so float rounding may move a handful by one pixel
    assert (ref.radii - cpu.radii).abs().le(1).all()
    assert (ref.radii != cpu.radii).float().mean() < 0.01
    assert torch.equal(ref.visible, cpu.visible)
    vis = ref.visible
    assert torch.allclose(ref.means2d[vis], cpu.means2d[vis], atol=1e-3)


@pytest.mark.parametrize("antialiased", [False, True])
def test_gradients_match_reference_float64(antialiased):
    g = random_gaussians(300, dtype=torch.float64, log_scale=-2.5)
    cams = cameras(33, 27, n=2, dtype=torch.float64, grad=True)
    _, ref = _grads(g, cams, "reference", antialiased=antialiased, background=(0.3, 0.2, 0.1))
    _, cpu = _grads(g, cams, "cpu", antialiased=antialiased, background=(0.3, 0.2, 0.1))
    for key, r in ref.items():
        assert r.abs().max() > 0, key  # every input really receives gradient
        err = (r - cpu[key]).abs().max().item()
        assert err <= 1e-6 * (1 + r.abs().max().item()), f"{key}: {err}"


def test_sparse_upstream_gradient_matches_reference():
    """A loss on a few scattered pixels' depth and one small patch's colour (most tile rows get no
    gradient: the backward skips those rows) still gives the reference's gradients."""
    g = random_gaussians(300, dtype=torch.float64, log_scale=-2.5)
    cams = cameras(45, 37, n=2, dtype=torch.float64, grad=True)
    gen = torch.Generator().manual_seed(3)
    depth_mask = torch.rand((2, 37, 45), generator=gen) < 0.05  # [C, H, W]
    grads = {}
    for backend in ("reference", "cpu"):
        for t in (*g.tensors(), *(c.T_cam_world for c in cams)):
            t.grad = None
        out = _render(g, cams, backend)
        loss = (out.depth * depth_mask).sum() + out.rgb[1, 20:23, 5:9].sum()
        loss.backward()
        grads[backend] = [t.grad.clone() for t in (*g.tensors(), *(c.T_cam_world for c in cams))]
    for r, c in zip(grads["reference"], grads["cpu"]):
        assert r.abs().max() > 0
        assert (r - c).abs().max().item() <= 1e-6 * (1 + r.abs().max().item())


@pytest.mark.parametrize("supervised", ["depth", "rgb", "alpha"])
def test_one_output_supervised_matches_reference(supervised):
    """A loss on one output only (a pseudo view's depth, the binocular shifted render's colour): the
    backward leaves out the terms of the channels without gradient, and the gradients stay the reference's."""
    g = random_gaussians(300, dtype=torch.float64, log_scale=-2.5)
    cams = cameras(45, 37, n=2, dtype=torch.float64, grad=True)
    grads = {}
    for backend in ("reference", "cpu"):
        for t in (*g.tensors(), *(c.T_cam_world for c in cams)):
            t.grad = None
        out = _render(g, cams, backend, background=(0.3, 0.2, 0.1))
        x = getattr(out, supervised)
        gen = torch.Generator().manual_seed(5)
        (x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum().backward()
        # the colours get no gradient from depth or alpha alone (None from the reference)
        grads[backend] = [torch.zeros_like(t) if t.grad is None else t.grad.clone()
                          for t in (*g.tensors(), *(c.T_cam_world for c in cams))]
    for r, c in zip(grads["reference"], grads["cpu"]):
        assert (r - c).abs().max().item() <= 1e-6 * (1 + r.abs().max().item())


def test_gradients_float32_close_to_reference():
    g = random_gaussians(400, log_scale=-2.5)
    cams = cameras(40, 30, n=2, grad=True)
    _, ref = _grads(g, cams, "reference")
    _, cpu = _grads(g, cams, "cpu")
    for key, r in ref.items():
        rel = ((r - cpu[key]).norm() / r.norm()).item()
        assert rel < 1e-3, f"{key}: relative error {rel}"


@pytest.mark.parametrize("antialiased", [False, True])
def test_gradcheck_finite_differences(antialiased):
    """Every differentiable input, incl. the pose, against central differences (double)."""
    g = random_gaussians(12, dtype=torch.float64, sh_degree=2, log_scale=-1.8, spread=0.4)
    cam = cameras(14, 11, n=1, dtype=torch.float64)[0]
    settings = RenderSettings(backend="cpu", antialiased=antialiased, background=(0.2, 0.4, 0.6))

    def fn(means, log_scales, quats, logits, sh, T):
        out = render(Gaussians(means, log_scales, quats, logits, sh), [cam.__class__(
            K=cam.K, T_cam_world=T, width=cam.width, height=cam.height)], settings)
        return out.rgb, out.depth, out.alpha

    T = cam.T_cam_world.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (*g.tensors(), T), eps=1e-6, atol=1e-5, rtol=1e-3,
                                     fast_mode=True)


@pytest.mark.parametrize("tile_size", [8, 16, 32])
def test_tile_sizes_agree(tile_size):
    g = random_gaussians(500, grad=False)
    cams = cameras(45, 37, n=1)
    base = _render(g, cams, "cpu")
    other = _render(g, cams, "cpu", tile_size=tile_size)
    assert (base.rgb - other.rgb).abs().max() < 1e-5


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (17, 9)])
def test_tiny_and_odd_images(size):
    g = random_gaussians(200, grad=False, log_scale=-1.5)
    cams = cameras(*size, n=2)
    ref = _render(g, cams, "reference")
    cpu = _render(g, cams, "cpu")
    assert cpu.rgb.shape == (2, size[1], size[0], 3)
    assert (ref.rgb - cpu.rgb).abs().max() < 1e-4
    assert (ref.alpha - cpu.alpha).abs().max() < 1e-4
