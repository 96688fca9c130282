"""render(): input checks, backend choice, and the statistics densification reads."""

from __future__ import annotations

import math

import pytest
import torch
from test_render_helpers import cameras, random_gaussians

from recon.errors import ConfigError, ReconError
from recon.render import _ext, _reference, available_backends, render
from recon.types import Camera, Gaussians, RenderSettings

HAS_EXT = "cpu" in available_backends()


def test_reference_blending_matches_a_per_pixel_loop():
    """The dense reference against a literal per-pixel, per-Gaussian loop."""
    g = random_gaussians(25, grad=False, log_scale=-1.8, dtype=torch.float64)
    cam = cameras(9, 7, n=1, dtype=torch.float64)[0]
    args = (*g.tensors(), cam.T_cam_world[None], cam.K[None], 9, 7, 3, 0.01, 1e10, False)
    proj = _reference.project(*args)
    rgb, depth_sum, alpha = _reference.rasterize(*proj.values(), 9, 7)
    vis = torch.nonzero((proj["radii"][0] > 0).all(-1)).squeeze(-1).tolist()
    order = sorted(vis, key=lambda i: (proj["depths"][0, i].item(), i))
    for y in range(7):
        for x in range(9):
            T, acc = 1.0, torch.zeros(3, dtype=torch.float64)
            for i in order:
                dx, dy = (proj["means2d"][0, i] - torch.tensor([x + 0.5, y + 0.5])).tolist()
                a, b, c = proj["conics"][0, i].tolist()
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                al = min(0.99, proj["opacities"][0, i].item() * math.exp(-sigma))
                if sigma < 0 or al < 1 / 255:
                    continue
                if T * (1 - al) <= 1e-4:
                    break
                acc += al * T * proj["colors"][0, i]
                T *= 1 - al
            assert torch.allclose(rgb[0, y, x], acc, atol=1e-9)
            assert alpha[0, y, x].item() == pytest.approx(1 - T, abs=1e-9)


def test_bad_inputs_raise_recon_errors():
    g = random_gaussians(10, grad=False)
    cam = cameras(8, 6, n=1)[0]
    bad_quats = Gaussians(g.means, g.log_scales, g.quats[:, :3], g.opacity_logits, g.sh)
    with pytest.raises(ConfigError, match=r"quats must have shape \[10, 4\], got \[10, 3\]"):
        render(bad_quats, [cam], RenderSettings(backend="reference"))
    bad_sh = Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :5])
    with pytest.raises(ConfigError, match="sh must have shape"):
        render(bad_sh, [cam])
    with pytest.raises(ConfigError, match="backend"):
        render(g, [cam], RenderSettings(backend="vulkan"))
    with pytest.raises(ConfigError, match="sh_degree"):
        render(g, [cam], RenderSettings(sh_degree=4))
    other = Camera(K=cam.K, T_cam_world=cam.T_cam_world, width=9, height=6)
    with pytest.raises(ConfigError, match="one size per call"):
        render(g, [cam, other])
    with pytest.raises(ConfigError, match="no cameras"):
        render(g, [])
    with pytest.raises(ConfigError, match="tile_size"):
        render(g, [cam], RenderSettings(tile_size=12))


@pytest.mark.skipif(not HAS_EXT, reason="rasteriser extension unavailable")
def test_binding_checks_shapes():
    ext = _ext.load()
    g = random_gaussians(5, grad=False)
    cam = cameras(8, 6, n=1)[0]
    with pytest.raises(RuntimeError, match=r"quats must have shape \[N, 4\], got \[5, 3\]"):
        ext.project_forward(g.means, g.log_scales, g.quats[:, :3].contiguous(), g.opacity_logits,
                            g.sh, cam.T_cam_world[None], cam.K[None], 8, 6, 3, 0.01, 1e10, False)


def test_auto_backend_and_single_camera():
    g = random_gaussians(50, grad=False)
    cam = cameras(12, 10, n=1)[0]
    out = render(g, cam)  # a lone Camera is accepted
    ref = render(g, [cam], RenderSettings(backend="reference"))
    assert out.rgb.shape == (1, 10, 12, 3)
    assert (out.rgb - ref.rgb).abs().max() < 1e-4


def test_sh_degree_setting_limits_bands():
    g = random_gaussians(100, grad=False)
    cams = cameras(16, 12, n=1)
    low = Gaussians(*g.tensors()[:4], g.sh[:, :1].contiguous())
    for backend in ["reference"] + (["cpu"] if HAS_EXT else []):
        a = render(g, cams, RenderSettings(sh_degree=0, backend=backend))
        b = render(low, cams, RenderSettings(backend=backend))
        assert torch.allclose(a.rgb, b.rgb, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if HAS_EXT else []))
def test_means2d_grad_feeds_gsplat_default_strategy(backend):
    from gsplat.strategy import DefaultStrategy

    g = random_gaussians(200)
    cams = cameras(30, 20, n=2)
    params = torch.nn.ParameterDict({
        "means": g.means, "scales": g.log_scales, "quats": g.quats,
        "opacities": g.opacity_logits, "sh0": g.sh[:, :1].detach().requires_grad_(True),
        "shN": g.sh[:, 1:].detach().requires_grad_(True)})
    optimizers = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    strategy = DefaultStrategy(refine_start_iter=10_000, verbose=False)
    state = strategy.initialize_state()
    out = render(g, cams, RenderSettings(backend=backend))
    info = {"means2d": out.means2d, "radii": out.radii[..., None].expand(-1, -1, 2),
            "width": 30, "height": 20, "n_cameras": 2, "gaussian_ids": None}
    strategy.step_pre_backward(params, optimizers, state, 0, info)
    out.rgb.square().mean().backward()
    strategy.step_post_backward(params, optimizers, state, 0, info, packed=False)
    seen = out.visible.any(0)
    assert seen.any() and (~seen).any()
    # (a visible Gaussian hidden behind opaque ones may get no gradient)
    assert (state["grad2d"][seen] > 0).float().mean() > 0.8
    assert (state["grad2d"][~seen] == 0).all()
    assert torch.equal(state["count"], out.visible.sum(0).float())


def test_extension_error_is_missing_dependency(monkeypatch, tmp_path):
    """A source tree without the binding gives MissingDependencyError, and auto falls back."""
    monkeypatch.setattr(_ext, "source_dir", lambda: tmp_path)
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", None)
    with pytest.raises(ReconError, match="sources not found"):
        _ext.load()
    monkeypatch.setattr("recon.render._auto_fallback_warned", False)
    g = random_gaussians(10, grad=False)
    with pytest.warns(UserWarning, match="reference"):
        out = render(g, cameras(6, 5, n=1))
    assert out.rgb.shape == (1, 5, 6, 3)
