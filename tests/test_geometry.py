"""Pose and rotation conventions (recon.geometry), property-based on random inputs."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.geometry import (
    invert_pose, is_rotation, look_at, make_pose, opengl_to_opencv, quat_to_rotmat,
    rotmat_to_quat, umeyama,
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
