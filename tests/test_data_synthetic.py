"""The embedded procedural scene: exact poses, depth and masks that agree across views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.data import load_scene
from recon.data.synthetic import make_synthetic_scene
from recon.geometry import is_rotation


@pytest.fixture(scope="module")
def scene():
    return make_synthetic_scene(seed=0, n_views=8, width=160, height=120)


def _reproject(view_a, view_b, stride: int = 3):
    """Pixels of a (with depth) carried into b: returns (depth predicted in b, depth b
    reads there, colour of a, colour of b) for points that land inside b."""
    H, W = view_a.height, view_a.width
    ii, jj = torch.meshgrid(torch.arange(0, H, stride), torch.arange(0, W, stride), indexing="ij")
    d = view_a.depth[ii, jj]  # [h, w]
    keep = d > 0
    pix = torch.stack([jj[keep] + 0.5, ii[keep] + 0.5, torch.ones(int(keep.sum()))], -1).double()  # [M, 3]
    cam_a = (torch.linalg.inv(view_a.camera.K.double()) @ pix.T).T * d[keep, None].double()  # [M, 3]
    world = (view_a.camera.T_world_cam.double() @ torch.cat([cam_a, torch.ones(len(cam_a), 1, dtype=torch.float64)], 1).T).T[:, :3]
    cam_b = (view_b.camera.T_cam_world.double()[:3, :3] @ world.T).T + view_b.camera.T_cam_world.double()[:3, 3]
    uv = (view_b.camera.K.double() @ cam_b.T).T
    z = uv[:, 2]
    u, v = uv[:, 0] / z, uv[:, 1] / z
    inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    ub, vb = u[inside].long(), v[inside].long()
    col_a = view_a.image[ii[keep], jj[keep]][inside]
    return z[inside], view_b.depth[vb, ub].double(), col_a, view_b.image[vb, ub]


def test_views_carry_exact_depth_masks_and_rotations(scene):
    assert len(scene) == 8 and scene.format == "synthetic" and scene.posed
    for v in scene.views:
        assert v.image.shape == (120, 160, 3) and v.image.dtype == torch.float32
        assert 0.0 <= float(v.image.min()) and float(v.image.max()) <= 1.0
        assert is_rotation(v.camera.T_cam_world[:3, :3].double())
        # objects are visible but do not fill the frame; object pixels have depth
        assert 0.03 < float(v.mask.float().mean()) < 0.6
        assert bool((v.depth[v.mask] > 0).all())
        # the image has texture: neighbouring pixels differ (stereo needs it)
        grad = (v.image[:, 1:] - v.image[:, :-1]).abs().mean()
        assert float(grad) > 0.01


def test_depth_reprojection_is_consistent_between_views(scene):
    # Neighbouring cameras on the ring see the same surface: depth carried from a into b
    # must match b's own depth where the point is not occluded, and the view-independent
    # shading must give the same colour.
    z_pred, z_b, col_a, col_b = _reproject(scene.views[0], scene.views[1])
    visible = (z_b > 0) & ((z_pred - z_b).abs() < 0.02 * z_b)
    assert float(visible.float().mean()) > 0.6  # most points are not occluded
    assert float((col_a[visible] - col_b[visible]).abs().median()) < 0.06


def test_seeded_and_deterministic():
    a = make_synthetic_scene(seed=3, n_views=2, width=64, height=48)
    b = make_synthetic_scene(seed=3, n_views=2, width=64, height=48)
    c = make_synthetic_scene(seed=4, n_views=2, width=64, height=48)
    assert torch.equal(a.views[1].image, b.views[1].image)
    assert torch.equal(a.views[1].camera.T_cam_world, b.views[1].camera.T_cam_world)
    assert not torch.equal(a.views[1].image, c.views[1].image)


def test_world_up_is_up_in_the_image(scene):
    # Sky (depth 0) can only appear in the top rows: cameras are upright.
    for v in scene.views:
        sky = (v.depth == 0).float()
        assert float(sky[v.height // 2 :].mean()) == 0.0


def test_builtin_spec_is_normalised_and_still_consistent():
    s = load_scene("builtin:synthetic", n_views=6, width=96)
    assert s.format == "synthetic" and s.root is None and s.views[0].width == 96 and s.views[0].height == 72
    centres = torch.stack([v.camera.centre for v in s.views])
    assert float((centres - centres.mean(0)).norm(dim=-1).max()) <= 1.0 + 1e-5
    assert s.normalisation.scale != 1.0
    # normalised depth still reprojects exactly between views
    z_pred, z_b, _, _ = _reproject(s.views[0], s.views[1], stride=2)
    ok = (z_b > 0) & ((z_pred - z_b).abs() < 0.02 * z_b)
    assert float(ok.float().mean()) > 0.5
    # the recorded normalisation maps normalised camera centres back to the world ones
    assert s.meta["layout"] == "forward"  # the built-in spec is the forward-facing capture
    raw = make_synthetic_scene(seed=0, n_views=6, width=96, height=72, layout="forward")
    back = s.normalisation.to_world(centres.double())
    raw_centres = torch.stack([v.camera.centre.double() for v in raw.views])
    assert torch.allclose(back, raw_centres, atol=1e-4)
    lo, hi = np.array(s.meta["aabb"])
    assert (hi > lo).all() and np.abs(lo).max() < 1.0


def test_forward_layout_is_an_llff_like_capture():
    """builtin:synthetic imitates an LLFF capture: cameras on a narrow arc in front of the
    objects, ordered along it, a textured wall behind (no sky: every pixel has a finite
    depth) and the LLFF split testing views between the training ones."""
    from recon.data.splits import llff_split

    s = make_synthetic_scene(seed=0, n_views=24, width=64, height=48, layout="forward")
    assert s.meta["layout"] == "forward"
    centres = torch.stack([v.camera.centre.double() for v in s.views])
    azimuth = torch.rad2deg(torch.atan2(centres[:, 1], centres[:, 0]))
    assert bool((azimuth[1:] > azimuth[:-1]).all())  # ordered along the sweep
    assert 30 < float(azimuth[-1] - azimuth[0]) < 45  # a forward-facing spread, not an orbit
    for v in s.views:
        assert bool((v.depth > 0).all())  # wall and ground everywhere: no sky
        assert 0.05 < float(v.mask.float().mean()) < 0.5  # the wall is backdrop, not object
    split = llff_split(len(s), 3)
    train_az = sorted(float(azimuth[i]) for i in split.train)
    inside = [train_az[0] - 3 <= float(azimuth[i]) <= train_az[-1] for i in split.test]
    assert all(inside)  # test views interpolate between training views (at most a few degrees outside)
    # the orbit layout (make_synthetic_scene's default) is unchanged by the forward option
    orbit = make_synthetic_scene(seed=0, n_views=3, width=32, height=24)
    assert orbit.meta["layout"] == "orbit" and bool((orbit.views[0].depth == 0).any())
