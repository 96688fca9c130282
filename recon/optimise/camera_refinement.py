"""The training cameras as parameters of the fit (joint refinement with the Gaussians, as
InstantSplat does for unposed captures): a pose delta per view, T = se3_exp(delta_v) @ T_init
(view 0 fixes the gauge), and one focal scale per group of views that share intrinsics
(fx, fy -> s * fx, s * fy; the principal point stays).

The rasteriser takes gradients through ``T_cam_world`` but not through ``K``, so the focal
scale is rendered as the stretch diag(s, s, 1, 1) @ T with ``K`` unchanged: the projected mean
fx * (s x) / z + cx and the projected covariance J diag(s, s, 1) Sigma diag(s, s, 1) J^T are
exactly those of the focal s * fx, and depth is untouched. The one difference: the SH viewing
direction uses the camera centre -R^T t, which the stretch moves by -R^T (D^2 - I) t, i.e. by
(s^2 - 1) |t_xy| (zero when the world origin is on the optical axis; a few % of the camera
distance for a 5 % focal change off-axis): a colour, not a geometry, error, and only while
training. The cameras handed out of the fit (``refined_camera``) are rigid, with the scaled K.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from recon.geometry import se3_exp
from recon.types import Camera


def _intrinsics_key(c: Camera) -> tuple:
    return (c.width, c.height, *(round(float(x), 4) for x in c.K.flatten()))


def intrinsics_groups(cameras: list[Camera]) -> list[int]:
    """Index of the focal group of each camera: cameras with the same image size and K
    (SfM's one shared camera, or EXIF that agrees) share one focal scale; cameras whose
    intrinsics differ (per-image EXIF focal lengths) get their own."""
    keys: list[tuple] = []
    groups = []
    for c in cameras:
        key = _intrinsics_key(c)
        if key not in keys:
            keys.append(key)
        groups.append(keys.index(key))
    return groups


def with_focal_scale(cam: Camera, scale: float | Tensor) -> Camera:
    """The rigid camera with fx, fy multiplied by ``scale`` (principal point kept)."""
    K = cam.K.clone()
    K[0, 0] = K[0, 0] * scale
    K[1, 1] = K[1, 1] * scale
    return Camera(K, cam.T_cam_world, cam.width, cam.height, cam.distortion)


class CameraRefinement:
    """Pose deltas [V, 6] and log focal scales [G], each with its own Adam; off parts stay at
    their initial values (zeros) and never step."""

    def __init__(self, cameras: list[Camera], *, poses: bool, focal: bool, pose_lr: float, focal_lr: float,
                 start: int = 0, focal_start: int = 0):
        self.initial = list(cameras)
        self.poses, self.focal, self.start, self.focal_start = poses, focal, start, focal_start
        self.groups = intrinsics_groups(cameras)
        self.pose_deltas = torch.nn.Parameter(torch.zeros(len(cameras), 6))  # [V, 6] (rotation, translation)
        self.pose_opt = torch.optim.Adam([self.pose_deltas], lr=pose_lr, eps=1e-15)
        self.log_focal = torch.nn.Parameter(torch.zeros(max(self.groups, default=-1) + 1))  # [G]
        self.focal_opt = torch.optim.Adam([self.log_focal], lr=focal_lr, eps=1e-15)

    def _pose(self, v: int, T: Tensor) -> Tensor:
        if not self.poses or v == 0:  # view 0 fixes the gauge
            return T
        return se3_exp(self.pose_deltas[v]) @ T  # [4, 4]

    def render_camera(self, v: int, cam: Camera) -> Camera:
        """Camera v (``cam``: its initial camera, possibly resized) as the trainer renders it:
        refined pose, and the focal scale as the stretch diag(s, s, 1, 1) (see the module note),
        so both carry gradients. Not rigid when the focal is refined: render with it, never hand it out."""
        T = self._pose(v, cam.T_cam_world)
        if self.focal:
            s = torch.exp(self.log_focal[self.groups[v]])
            T = torch.diag(torch.stack([s, s, s.new_ones(()), s.new_ones(())])) @ T
        return Camera(cam.K, T, cam.width, cam.height, cam.distortion)

    def refined_camera(self, v: int) -> Camera:
        """Camera v after refinement, rigid and detached: the refined pose and K with the focal scale."""
        cam = self.initial[v]
        with torch.no_grad():
            T = self._pose(v, cam.T_cam_world).detach().clone()
        return with_focal_scale(Camera(cam.K, T, cam.width, cam.height, cam.distortion), self.focal_scale(v))

    def focal_scale(self, v: int) -> float:
        return float(torch.exp(self.log_focal[self.groups[v]].detach())) if self.focal else 1.0

    def step(self, it: int) -> None:
        if self.poses and it >= self.start:
            self.pose_opt.step()
        if self.focal and it >= self.focal_start:
            self.focal_opt.step()
        self.pose_opt.zero_grad(set_to_none=True)
        self.focal_opt.zero_grad(set_to_none=True)

    def record(self) -> dict:
        """metrics.json["camera_refinement"]: what was refined, and each focal group's initial and final fx."""
        groups = []
        for g in range(len(self.log_focal)):
            v = self.groups.index(g)
            fx0 = float(self.initial[v].K[0, 0])
            groups.append({"views": [i for i, x in enumerate(self.groups) if x == g], "initial_fx": round(fx0, 3),
                           "final_fx": round(fx0 * self.focal_scale(v), 3), "scale": self.focal_scale(v)})
        return {"poses": self.poses, "focal": self.focal, "focal_groups": groups}

    def state_dict(self) -> dict:
        # deep copies: Adam updates its moments in place after this snapshot
        return {"pose_deltas": self.pose_deltas.detach().clone(), "pose_opt": copy.deepcopy(self.pose_opt.state_dict()),
                "log_focal": self.log_focal.detach().clone(), "focal_opt": copy.deepcopy(self.focal_opt.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        """``state``: a checkpoint's; one written before focal refinement existed has no focal keys
        (the focal then starts at its initial value)."""
        with torch.no_grad():
            self.pose_deltas.copy_(state["pose_deltas"])
            if "log_focal" in state:
                self.log_focal.copy_(state["log_focal"])
        self.pose_opt.load_state_dict(state["pose_opt"])
        if "focal_opt" in state:
            self.focal_opt.load_state_dict(state["focal_opt"])


def follow_refined_intrinsics(test: list[Camera], initial_train: list[Camera], refined_train: list[Camera]
                              ) -> tuple[list[Camera], list[float | None]]:
    """Test cameras -> the same cameras with the refined focal of the training group whose
    initial intrinsics they share (same size and K); a test camera matching no training camera
    keeps its K (its scale is None in the returned list)."""
    keys = [_intrinsics_key(c) for c in initial_train]
    cams, scales = [], []
    for c in test:
        key = _intrinsics_key(c)
        if key not in keys:
            cams.append(c)
            scales.append(None)
            continue
        i = keys.index(key)
        s = float(refined_train[i].K[0, 0] / initial_train[i].K[0, 0])
        cams.append(with_focal_scale(c, s))
        scales.append(s)
    return cams, scales
