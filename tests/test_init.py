"""Initial Gaussians: kNN scales, colour -> SH, degenerate clouds, random baseline, and the
``initialise`` entry on generated posed views."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_stereo import plane_views

from recon.errors import ConfigError
from recon.init import initialise, scene_ball
from recon.init.isotropic import SH_C0, knn_log_scales
from recon.init.points import gaussians_from_points
from recon.init.random import random_gaussians


def test_gaussians_from_points_follow_the_3dgs_recipe():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(500, 3, generator=g) * torch.tensor([3.0, 1.0, 0.2])  # [500, 3] anisotropic cloud
    colors = torch.rand(500, 3, generator=g)
    out = gaussians_from_points(points, colors, sh_degree=2, opacity=0.2)
    assert len(out) == 500 and out.sh.shape == (500, 9, 3) and out.sh_degree == 2
    # scale = mean distance to the 3 nearest other points (brute force reference)
    dist = torch.cdist(points.double(), points.double())
    dist.fill_diagonal_(float("inf"))
    expected = dist.topk(3, largest=False).values.mean(1).log().float()  # [500]
    torch.testing.assert_close(out.log_scales, expected[:, None].expand(-1, 3), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.quats, torch.tensor([1.0, 0, 0, 0]).expand(500, 4))
    torch.testing.assert_close(torch.sigmoid(out.opacity_logits), torch.full((500,), 0.2))
    torch.testing.assert_close(0.5 + SH_C0 * out.sh[:, 0], colors, atol=1e-6, rtol=0)  # DC renders the colour
    assert torch.count_nonzero(out.sh[:, 1:]) == 0
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in out.tensors())


def test_duplicate_points_keep_finite_positive_scales():
    points = torch.cat([torch.zeros(10, 3), torch.randn(20, 3)])  # 10 copies of the origin
    scales = knn_log_scales(points)
    assert torch.isfinite(scales).all()


def test_non_finite_rows_are_dropped_not_propagated():
    points = torch.randn(50, 3)
    points[3, 1] = float("nan")
    points[7, 0] = float("inf")
    out = gaussians_from_points(points, torch.rand(50, 3), sh_degree=0)
    assert len(out) == 48 and all(torch.isfinite(t).all() for t in out.tensors())


@pytest.mark.parametrize(
    "points",
    [torch.zeros(0, 3), torch.ones(2, 3), torch.full((100, 3), 2.5), torch.full((5, 3), float("nan"))],
    ids=["empty", "two-points", "collapsed", "all-nan"],
)
def test_degenerate_cloud_falls_back_to_random_with_a_warning(points):
    with pytest.warns(RuntimeWarning, match="falling back to 300 random Gaussians"):
        out = gaussians_from_points(points, torch.rand(len(points), 3), 1, fallback_n=300,
                                    fallback_centre=torch.tensor([1.0, 2.0, 3.0]), fallback_radius=0.5,
                                    generator=torch.Generator().manual_seed(0))
    assert len(out) == 300
    assert ((out.means - torch.tensor([1.0, 2.0, 3.0])).norm(dim=-1) <= 0.5 + 1e-5).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), spread=st.sampled_from([0.0, 1e-9, 1e-3, 1.0, 1e4]), dup=st.booleans())
def test_any_cloud_gives_usable_gaussians(n, spread, dup):
    g = torch.Generator().manual_seed(n)
    points = torch.randn(n, 3, generator=g) * spread + 7.0  # [n, 3]
    if dup and n > 1:
        points[: n // 2] = points[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = gaussians_from_points(points, torch.rand(n, 3, generator=g), 0, fallback_n=16)
    assert len(out) >= 4 and all(torch.isfinite(t).all() for t in out.tensors())


def test_random_gaussians_are_seeded_and_inside_the_ball():
    make = lambda s: random_gaussians(2000, (1.0, -1.0, 0.5), 2.0, 3, torch.Generator().manual_seed(s))  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    assert not torch.equal(a.means, c.means)
    r = (a.means - torch.tensor([1.0, -1.0, 0.5])).norm(dim=-1)
    assert r.max() <= 2.0 + 1e-5 and r.mean() > 1.2  # uniform in volume: mean radius is 3/4 R
    assert a.sh.shape == (2000, 16, 3) and torch.isfinite(a.log_scales).all()
    for n in (1, 3):
        assert len(random_gaussians(n, (0, 0, 0), 1.0, 0)) == n


def test_scene_ball_finds_where_converging_cameras_look():
    views = plane_views(n=3, size=(48, 36))
    centre, radius = scene_ball(views)
    assert centre[2] > 0 and radius > 0  # ahead of the cameras, which look down +z


def test_initialise_methods_on_posed_views():
    views = plane_views(n=3, size=(80, 60))
    mvs = initialise(views, "stereo", sh_degree=1, progress=False, num_depths=32)  # "stereo": pipeline alias
    assert mvs.method == "mvs" and mvs.points is not None and len(mvs.gaussians) == len(mvs.points) > 100
    assert len(mvs.depths) == 3 and mvs.depths[0].shape == (views[0].height, views[0].width)
    sift = initialise(views, "sift", sh_degree=0)
    assert sift.method == "sift" and sift.depths is None and len(sift.gaussians) > 20
    rnd = initialise(views, "random", sh_degree=0, random_points=123, with_depths=True, progress=False,
                     num_depths=16, generator=torch.Generator().manual_seed(0))
    assert rnd.method == "random" and len(rnd.gaussians) == 123 and len(rnd.depths) == 3
    with pytest.raises(ConfigError, match="init.method"):
        initialise(views, "colmap")


def test_initialise_on_textureless_views_falls_back_instead_of_crashing():
    views = plane_views(n=3, size=(48, 36), texture=False)
    with pytest.warns(RuntimeWarning):
        res = initialise(views, "mvs", sh_degree=0, random_points=64, progress=False)
    assert res.method == "random" and len(res.gaussians) == 64
    assert all(float(d.abs().sum()) == 0.0 for d in res.depths)
    assert math.isfinite(float(res.gaussians.means.sum()))


def test_init_scale_factor_widens_the_splats_so_the_views_have_fewer_holes():
    """init.scale_factor: stereo points about a pixel apart start as ~1-px splats (3-NN scale) and leave the
    views full of holes (DTU: 14% alpha at init); a factor scales every initial size and covers more pixels."""
    from recon.render import render
    from recon.types import RenderSettings

    views = plane_views(n=3, size=(80, 60))
    kw = dict(sh_degree=0, progress=False, num_depths=32, max_points=400, seed=0)
    base = initialise(views, "mvs", **kw)
    wide = initialise(views, "mvs", scale_factor=2.0, opacity=0.3, **kw)
    assert torch.equal(wide.gaussians.means, base.gaussians.means)  # the same points, only their size and opacity
    assert torch.allclose(wide.gaussians.log_scales, base.gaussians.log_scales + math.log(2.0))
    assert torch.allclose(torch.sigmoid(wide.gaussians.opacity_logits), torch.full((len(wide.gaussians),), 0.3))
    settings = RenderSettings(sh_degree=0, backend="reference")
    cover = {name: float(render(r.gaussians, [v.camera for v in views], settings).alpha.mean())
             for name, r in (("base", base), ("wide", wide))}
    assert cover["wide"] > cover["base"] + 0.1, cover
    with pytest.raises(ConfigError, match="scale_factor"):
        initialise(views, "mvs", scale_factor=0.0, **kw)


def test_init_stereo_settings_reach_the_plane_sweep():
    """init.stereo: StereoSettings overrides from the config, through the pipeline's one initialise call."""
    from recon.optimise.config import load_config
    from recon.pipeline import _initialise

    views = plane_views(n=3, size=(80, 60))
    gen = torch.Generator().manual_seed(0)
    common = ["init.max_points=100000", "init.stereo.num_depths=16"]
    fine = _initialise(views, load_config("default", common), gen)[2]
    coarse = _initialise(views, load_config("default", [*common, "init.stereo.voxel_pixels=4"]), gen)[2]
    assert 0 < len(coarse) < 0.25 * len(fine), (len(coarse), len(fine))  # 4-pixel voxels: ~1/16 of the points
    with pytest.raises(ConfigError, match="unknown stereo setting"):
        _initialise(views, load_config("default", ["init.stereo.bogus=1"]), gen)
