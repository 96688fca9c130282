"""Pose, rotation and pinhole-camera conventions, pure torch: the one home of pose
conversions, the pose exponentials, pixel projection/unprojection and the point where
camera axes meet, and the similarity that aligns two frames of the same cameras
(``camera_similarity``, ``map_camera``, ``rotation_angle_deg``: pose recovery and its evaluation).

``T_a_b`` maps coordinates in frame b to frame a: ``x_a = T_a_b @ x_b``. Cameras use
OpenCV axes (x right, y down, z forward). OpenGL/Blender/LLFF cameras use x right, y up,
z backward; ``opengl_to_opencv`` converts a camera-to-world matrix between the two.
Quaternions are (w, x, y, z).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from recon.errors import ReconError

if TYPE_CHECKING:
    from recon.types import Camera

# Flips camera y and z: OpenGL camera axes <-> OpenCV camera axes.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def opengl_to_opencv(T_world_cam_gl: Tensor) -> Tensor:
    """[..., 4, 4] camera-to-world with OpenGL camera axes -> same with OpenCV axes."""
    return T_world_cam_gl @ _GL_TO_CV.to(T_world_cam_gl)


def invert_pose(T: Tensor) -> Tensor:
    """[..., 4, 4] rigid transform -> its inverse, without a general matrix inverse."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = torch.zeros_like(T)
    Rt = R.transpose(-1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def make_pose(R: Tensor, t: Tensor) -> Tensor:
    """R [..., 3, 3], t [..., 3] -> [..., 4, 4]."""
    T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def is_rotation(R: Tensor, atol: float = 1e-3) -> bool:
    """True when R [3, 3] is orthonormal with determinant +1 and finite."""
    if not torch.isfinite(R).all():
        return False
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    ortho = torch.allclose(R @ R.T, eye, atol=atol)
    return bool(ortho and abs(float(torch.det(R)) - 1.0) < atol)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z), any norm -> [..., 3, 3]."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """[..., 3, 3] rotation -> [..., 4] unit quaternion (w, x, y, z) with w >= 0."""
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = torch.stack(
        [
            torch.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
            torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
            torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
        ],
        dim=1,
    )  # [B, 4 candidates, 4]
    # Pick the numerically best-conditioned candidate (largest diagonal term).
    diag = torch.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    best = diag.argmax(-1)
    q = cand[torch.arange(m.shape[0]), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """Camera at ``eye`` looking at ``target`` -> T_cam_world [4, 4] (OpenCV axes);
    ``up`` is the world direction that should appear up in the image."""
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)  # right = forward x up (OpenCV: y down = -up)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R_world_cam = torch.stack([x, y, z], dim=1)  # columns are camera axes in world
    return invert_pose(make_pose(R_world_cam, eye))


def umeyama(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[float, Tensor, Tensor]:
    """Similarity (s, R, t) minimising ||dst - (s R src + t)||^2; src, dst [N, 3]."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / src.shape[0]
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=src.dtype, device=src.device)
    if torch.det(U) * torch.det(Vh) < 0:
        D[2, 2] = -1
    R = U @ D @ Vh
    var_s = (xs**2).sum() / src.shape[0]
    s = float((S * D.diagonal()).sum() / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


# ---------------------------------------------------------------- pose exponentials


def skew(w: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] cross-product matrix: ``skew(w) @ x == cross(w, x)``."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([z, -w[..., 2], w[..., 1], w[..., 2], z, -w[..., 0], -w[..., 1], w[..., 0], z],
                       -1).reshape(*w.shape[:-1], 3, 3)


def so3_exp(w: Tensor) -> Tensor:
    """Axis-angle [..., 3] (direction = axis, norm = angle in radians) -> rotation [..., 3, 3]."""
    return torch.linalg.matrix_exp(skew(w))


def se3_exp(xi: Tensor) -> Tensor:
    """Twist [..., 6] (rotation omega, then translation v) -> rigid transform [..., 4, 4], the
    matrix exponential of [[skew(omega), v], [0, 0]]. Pose corrections are left-multiplied:
    ``T = se3_exp(xi) @ T_init``; ``xi = 0`` is the identity and the rotation block equals
    ``so3_exp(omega)``."""
    hat = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype, device=xi.device)
    hat[..., :3, :3] = skew(xi[..., :3])
    hat[..., :3, 3] = xi[..., 3:]
    return torch.linalg.matrix_exp(hat)


# ---------------------------------------------------------------- pinhole projection
# Column layout: points and rays are [..., 3, N] (one column per point) so a pose applies
# as ``R @ X + t[:, None]``; pixel coordinates follow types.py (pixel centres at +0.5).


def world_to_camera(T_cam_world: Tensor, points_world: Tensor) -> Tensor:
    """points [N, 3] in the world -> [N, 3] in the camera frame of ``T_cam_world`` [4, 4]."""
    return points_world @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]


def project(K: Tensor, points_cam: Tensor, min_depth: float = 1e-9) -> tuple[Tensor, Tensor]:
    """Camera-frame points [..., 3, N] -> (pixel coordinates [..., 2, N], z-depth [..., N]).
    Depths are clamped to ``min_depth`` in the division only: callers test ``z`` to drop
    points behind the camera."""
    z = points_cam[..., 2, :]
    uv = (K @ points_cam)[..., :2, :] / z.clamp_min(min_depth).unsqueeze(-2)  # [..., 2, N]
    return uv, z


def unproject(K: Tensor, uv: Tensor, depth: Tensor | None = None) -> Tensor:
    """Pixel coordinates [2, N] (and z-depths [N]) -> camera-frame points [3, N]; without
    ``depth``, the rays through the pixels with z = 1. Solves ``K x = (u, v, 1)`` rather than
    dividing by the focal lengths, so any K (skew included) is inverted exactly."""
    rays = torch.linalg.solve(K, torch.cat([uv, torch.ones_like(uv[:1])]))  # [3, N]
    return rays if depth is None else rays * depth


def pixel_centres(height: int, width: int, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """[2, H*W] (u, v) of every pixel centre, row-major (pixel (i, j) -> (j + 0.5, i + 0.5))."""
    dtype = dtype or torch.get_default_dtype()
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)])


def pixel_rays(K: Tensor, height: int, width: int) -> Tensor:
    """[3, H*W] camera-frame rays with z = 1 through every pixel centre, row-major."""
    return unproject(K, pixel_centres(height, width, device=K.device, dtype=K.dtype))


def unproject_depth(K: Tensor, T_cam_world: Tensor, depth: Tensor) -> Tensor:
    """z-depth map [H, W] (0 = unknown) -> world points [M, 3] of its valid pixels, row-major."""
    h, w = depth.shape
    valid = depth.reshape(-1) > 0  # [HW]
    X_cam = pixel_rays(K, h, w)[:, valid] * depth.reshape(-1)[valid]  # [3, M]
    T_world_cam = torch.linalg.inv(T_cam_world)
    return (T_world_cam[:3, :3] @ X_cam + T_world_cam[:3, 3:]).T  # [M, 3]


def zbuffer_depth(points_world: Tensor, camera: Camera, near: float = 1e-3) -> Tensor:
    """Points [M, 3] splatted into ``camera`` with a z-buffer: [H, W] z-depth of the nearest
    point per pixel, 0 where none lands (the sparse-depth convention of types.py)."""
    p = world_to_camera(camera.T_cam_world, points_world)  # [M, 3]
    uv, z = project(camera.K, p.T, min_depth=1e-6)  # [2, M], [M]
    u, v = uv[0].floor().long(), uv[1].floor().long()
    ok = (z > near) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    flat = torch.full((camera.height * camera.width,), float("inf"), dtype=points_world.dtype)
    flat = flat.scatter_reduce(0, v[ok] * camera.width + u[ok], z[ok], "amin")
    return torch.where(torch.isfinite(flat), flat, 0.0).reshape(camera.height, camera.width)


# ---------------------------------------------------------------- where the cameras look


def axes_meeting_point(centres: Tensor, axes: Tensor, min_spread: float = 0.02,
                       min_in_front: float = 0.9) -> Tensor | None:
    """The least-squares point nearest to every optical axis (what inward-facing cameras
    look at), or None when there is no such point. centres, axes [V, 3] (axes: forward
    directions, any norm); computed in their dtype.

    Degenerate when the axes are (nearly) parallel: A = sum_v (I - a_v a_v^T) has
    eigenvalues in [0, V], and its smallest one divided by V is the mean squared sine of
    the angle between the axes and their least-spread direction, so ``min_spread`` = 0.02
    rejects axes within ~8 degrees (rms) of one direction (forward-facing captures), at any
    scene scale; a condition-number test depends on V and misses axes converging far away.
    Also None unless the point is in front of more than ``min_in_front`` of the cameras
    (diverging axes meet behind them)."""
    axes = axes / axes.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=centres.dtype, device=centres.device)
    proj = eye - axes[:, :, None] * axes[:, None, :]  # [V, 3, 3] projects onto the plane normal to each axis
    A, b = proj.sum(0), (proj @ centres[:, :, None]).sum(0)[:, 0]
    if len(centres) < 2 or float(torch.linalg.eigvalsh(A)[0]) < min_spread * len(centres):
        return None
    point = torch.linalg.solve(A, b)  # [3]
    in_front = ((point - centres) * axes).sum(-1) > 0
    return point if float(in_front.float().mean()) > min_in_front else None


def viewed_ball(cameras: Sequence[Camera]) -> tuple[Tensor, float]:
    """(centre [3], radius) of the region the cameras look at, from the cameras alone:
    the point their optical axes meet (``axes_meeting_point``) when they converge
    (object-centric captures), else a point ahead of the cameras (forward-facing captures)."""
    centres = torch.stack([c.centre.float() for c in cameras])  # [V, 3]
    axes = torch.stack([c.T_cam_world[2, :3].float() for c in cameras])  # [V, 3] optical axes
    axes = axes / axes.norm(dim=-1, keepdim=True)
    spread = max(float((centres - centres.mean(0)).norm(dim=-1).max()), 1e-3)
    centre = axes_meeting_point(centres, axes)
    if centre is None:
        centre = centres.mean(0) + axes.mean(0) * 4 * spread
    radius = max(float((centres - centre).norm(dim=-1).mean()) * 0.75, spread)
    return centre, radius


def rotation_angle_deg(R: Tensor) -> float:
    """Angle of a rotation [3, 3] in degrees, from ||R - I||_F = 2 sqrt(2) sin(angle / 2)
    (exact near 0, where acos of the trace loses ~0.03 degrees to float32 rounding)."""
    R = R.double()
    return math.degrees(2 * math.asin(min(1.0, float(torch.linalg.matrix_norm(R - torch.eye(3, dtype=R.dtype)))
                                               / (2 * math.sqrt(2)))))


def camera_similarity(src: list[Camera], dst: list[Camera]) -> tuple[float, Tensor, Tensor]:
    """(s, R [3, 3], t [3]) with x_dst = s R x_src + t mapping the frame of cameras ``src``
    onto the frame of the same cameras ``dst``: R is the chordal mean of the per-camera
    rotation offsets (a camera's rotation pins the frame's rotation even when the centres
    are nearly collinear, as three forward-facing views are); s, t fit the centres by
    least squares given R."""
    if len(src) != len(dst) or len(src) < 2:
        raise ReconError(f"aligning camera frames needs the same >= 2 cameras on both sides, got {len(src)} and "
                         f"{len(dst)}")
    M = sum(d.T_cam_world[:3, :3].double().T @ s.T_cam_world[:3, :3].double() for s, d in zip(src, dst))
    U, _, Vh = torch.linalg.svd(M)
    D = torch.diag(torch.tensor([1.0, 1.0, float(torch.det(U @ Vh))], dtype=torch.float64))
    R = U @ D @ Vh  # [3, 3]
    cs = torch.stack([c.centre.double() for c in src])  # [V, 3]
    cd = torch.stack([c.centre.double() for c in dst])
    xs, xd = (cs - cs.mean(0)) @ R.T, cd - cd.mean(0)
    var = float((xs * xs).sum())
    if var < 1e-18:
        raise ReconError("aligning camera frames: the cameras share one centre; the scale is undefined")
    s = float((xs * xd).sum()) / var
    if not s > 0:
        raise ReconError("aligning camera frames: the recovered cameras are mirrored against the reference")
    t = cd.mean(0) - s * R @ cs.mean(0)
    return s, R, t


def map_camera(camera: Camera, s: float, R: Tensor, t: Tensor) -> Camera:
    """A camera of frame a -> the same camera in frame b, where x_b = s R x_a + t. The
    camera-space scale is dropped (it does not change the image)."""
    T = camera.T_cam_world.double()
    R_c, t_c = T[:3, :3], T[:3, 3]
    R, t = R.double(), t.double()
    # x_cam = R_c x_a + t_c = R_c R^T (x_b - t) / s + t_c; multiply by s (same image)
    R_new = R_c @ R.T
    t_new = s * t_c - R_new @ t
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3], out[:3, 3] = R_new, t_new
    return replace(camera, T_cam_world=out.float())
