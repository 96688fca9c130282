"""Pose and rotation conventions (recon.geometry), property-based on random inputs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.geometry import (
    invert_pose,
    is_rotation,
    look_at,
    make_pose,
    opengl_to_opencv,
    pixel_centres,
    project,
    quat_to_rotmat,
    rotmat_to_quat,
    se3_exp,
    so3_exp,
    umeyama,
    unproject_depth,
    world_to_camera,
    zbuffer_depth,
)

floats = st.floats(-1.0, 1.0, allow_nan=False, width=32)
quats = st.tuples(floats, floats, floats, floats).filter(lambda q: sum(v * v for v in q) > 1e-2)


@settings(max_examples=60, deadline=None)
@given(quats)
def test_quaternion_round_trip(q):
    q = torch.tensor(q, dtype=torch.float64)
    R = quat_to_rotmat(q)
    assert is_rotation(R, atol=1e-9)
    q2 = rotmat_to_quat(R)
    qn = q / q.norm()
    # q and -q are the same rotation
    assert min((q2 - qn).abs().max(), (q2 + qn).abs().max()) < 1e-6


@settings(max_examples=40, deadline=None)
@given(quats, st.tuples(floats, floats, floats))
def test_invert_pose_is_inverse(q, t):
    T = make_pose(quat_to_rotmat(torch.tensor(q, dtype=torch.float64)), torch.tensor(t, dtype=torch.float64))
    assert torch.allclose(invert_pose(T) @ T, torch.eye(4, dtype=torch.float64), atol=1e-9)


def test_look_at_follows_opencv_axes():
    T_cam_world = look_at(torch.tensor([5.0, 0, 0]), torch.zeros(3), torch.tensor([0, 0, 1.0]))
    target = T_cam_world @ torch.tensor([0.0, 0, 0, 1])
    above = T_cam_world @ torch.tensor([0.0, 0, 1, 1])
    right = T_cam_world @ torch.tensor([0.0, 1, 0, 1])  # seen from +x looking at -x, +y is right
    assert torch.allclose(target[:3], torch.tensor([0, 0, 5.0]))
    assert above[1] < 0  # up in the world is -y (image up) in OpenCV
    assert right[0] > 0
    assert is_rotation(T_cam_world[:3, :3])


def test_opengl_to_opencv_flips_camera_y_and_z():
    T_world_cam_gl = torch.eye(4)
    cv = opengl_to_opencv(T_world_cam_gl)
    # An OpenGL camera looks down -z: the OpenCV forward axis (third column) is world -z.
    assert torch.allclose(cv[:3, 2], torch.tensor([0, 0, -1.0]))
    assert torch.allclose(opengl_to_opencv(cv), T_world_cam_gl)


def test_umeyama_recovers_similarity():
    g = torch.Generator().manual_seed(3)
    src = torch.randn(50, 3, generator=g, dtype=torch.float64)
    R = quat_to_rotmat(torch.randn(4, generator=g, dtype=torch.float64))
    dst = 2.5 * src @ R.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, R2, t = umeyama(src, dst)
    assert abs(s - 2.5) < 1e-9
    assert torch.allclose(R2, R, atol=1e-9)
    assert torch.allclose(t, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6))
def test_se3_exp_is_rigid_with_the_so3_rotation_block(xi):
    xi = torch.tensor(xi, dtype=torch.float64)
    T = se3_exp(xi)
    assert is_rotation(T[:3, :3], atol=1e-9)
    torch.testing.assert_close(T[:3, :3], so3_exp(xi[:3]))
    torch.testing.assert_close(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(se3_exp(torch.zeros(6)), torch.eye(4))
    w = xi[:3]  # exp(skew(w)) rotates about w by |w|: w itself is fixed
    torch.testing.assert_close(so3_exp(w) @ w, w)


def test_unproject_depth_then_project_returns_the_pixel_centres():
    K = torch.tensor([[50.0, 0.3, 16.5], [0.0, 55.0, 11.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    T = look_at(torch.tensor([0.5, -2.0, 0.3]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])).double()
    depth = torch.rand(24, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.0
    depth[3, 4] = 0.0  # unknown pixels are skipped
    pts = unproject_depth(K, T, depth)  # [M, 3]
    assert pts.shape == (24 * 32 - 1, 3)
    uv, z = project(K, world_to_camera(T, pts).T)
    keep = (depth > 0).reshape(-1)
    torch.testing.assert_close(uv, pixel_centres(24, 32, dtype=torch.float64)[:, keep])
    torch.testing.assert_close(z, depth.reshape(-1)[keep])


def test_zbuffer_depth_keeps_the_nearest_point_per_pixel():
    from recon.types import Camera

    cam = Camera(torch.tensor([[10.0, 0, 4.0], [0, 10.0, 3.0], [0, 0, 1.0]]), torch.eye(4), 8, 6)
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.15, 0.05, 1.0], [0.0, 0.0, -1.0], [9.0, 0.0, 1.0]])
    d = zbuffer_depth(pts, cam)
    expected = torch.zeros(6, 8)
    expected[3, 4] = 1.0  # nearer of the two on the axis
    expected[3, 5] = 1.0  # (0.15, 0.05, 1) lands at u = 5.5, v = 3.5
    torch.testing.assert_close(d, expected)  # behind the camera and off-image points are dropped


def test_axes_meeting_point_finds_the_target_and_rejects_parallel_or_diverging_axes():
    from recon.geometry import axes_meeting_point

    eyes = torch.tensor([[3.0, 0.0, 0.5], [0.0, 3.0, -0.5], [-3.0, 0.5, 0.0], [0.2, -3.0, 0.3]], dtype=torch.float64)
    target = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    torch.testing.assert_close(axes_meeting_point(eyes, target - eyes), target)
    # forward-facing: axes within ~3 degrees of one direction, at any scale -> None
    forward = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) + 0.05 * torch.randn(4, 3, dtype=torch.float64,
                                                                                     generator=torch.Generator().manual_seed(0))
    assert axes_meeting_point(eyes * 1e-3, forward) is None
    assert axes_meeting_point(eyes * 1e3, forward) is None
    assert axes_meeting_point(eyes, eyes - target) is None  # looking away: the axes meet behind the cameras
    assert axes_meeting_point(eyes[:1], target - eyes[:1]) is None  # one camera has no meeting point
