"""Global alignment of pointmap groups (DUSt3R / MASt3R / VGGT style) into one world.

Input: groups of views whose pointmaps are expressed in the camera frame of the group's
first view, each group at its own unknown scale. Output: world-to-camera poses (OpenCV
axes), per-view focal lengths, depth maps and a fused point cloud, all in one frame fixed
by the most confident group (its reference camera is the world origin, its scale is the
world scale: the result is defined up to that one global similarity).

Method (our own; the idea follows DUSt3R's global alignment):
1. focal per view: given intrinsics, else a robust least-squares fit of the projection of
   the view's own-frame pointmap (centred principal point), else the median of the others;
2. pose of every view inside each group by PnP-RANSAC (OpenCV) on its pointmap;
3. a spanning tree over groups: each new group is attached to the world by a trimmed
   weighted Umeyama similarity on the pixels of views already placed;
4. joint refinement in torch: per-view depth maps, focal lengths and poses, per-group
   similarities, minimising a confidence-weighted robust distance between each view's
   world pointmap and every group's similarity-mapped prediction of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from recon.errors import ReconError
from recon.geometry import invert_pose, make_pose, so3_exp, umeyama


@dataclass(frozen=True)
class PointmapGroup:
    views: tuple[int, ...]  # view indices; views[0] is the reference camera of this group
    points: Tensor  # [V, H, W, 3] each view's pixels in the reference camera frame (OpenCV)
    confidence: Tensor  # [V, H, W] > 0, larger = more reliable
    intrinsics: Tensor | None = None  # [V, 3, 3] pixel intrinsics when the model predicts them


@dataclass(frozen=True)
class AlignSettings:
    iterations: int = 300
    lr: float = 0.01
    pnp_threshold_px: float = 2.0  # RANSAC reprojection threshold at pointmap resolution
    pnp_samples: int = 2000  # most-confident pixels used for PnP per view and group
    trim_factor: float = 4.0  # residuals above this times their median are outliers
    fused_quantile: float = 0.3  # drop this fraction of the least confident pixels per view


@dataclass
class AlignmentResult:
    T_cam_world: Tensor  # [V, 4, 4] world-to-camera, OpenCV axes
    K: Tensor  # [V, 3, 3] at pointmap resolution (use Camera.scaled for the image size)
    depths: list[Tensor]  # V x [H, W] z-depth in the world scale
    world_points: list[Tensor]  # V x [H, W, 3]
    confidence: list[Tensor]  # V x [H, W] best confidence over the groups seeing the view
    points: Tensor  # [M, 3] fused point cloud
    colors: Tensor  # [M, 3] in [0, 1] (grey when no images were given)
    resolution: list[tuple[int, int]]  # V x (H, W) of the pointmaps
    losses: list[float] = field(default_factory=list)


def _pixel_grid(h: int, w: int) -> Tensor:  # [H, W, 2] pixel centres (x, y)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([xs, ys], -1)


def estimate_focal(points_cam: Tensor, confidence: Tensor, iterations: int = 3) -> float:
    """Focal (pixels) of a pointmap [H, W, 3] in its own camera frame with the principal
    point at the image centre: f * xy / z = pixel - centre, fitted robustly."""
    h, w = points_cam.shape[:2]
    uv = _pixel_grid(h, w) - torch.tensor([w / 2, h / 2])  # [H, W, 2]
    z = points_cam[..., 2:3]
    valid = (z[..., 0] > 1e-6) & (confidence > 0)
    if valid.sum() < 10:
        raise ReconError("pointmap alignment: fewer than 10 pixels in front of the camera; cannot estimate focal")
    a = (points_cam[..., :2] / z.clamp_min(1e-6))[valid]  # [N, 2]
    b = uv[valid]  # [N, 2]
    wgt = confidence[valid]
    # Median of per-pixel estimates first: any pixel-space loss (L2 or L1) is dominated by
    # outliers with z near 0 (huge x/z); then least squares on the pixels it explains.
    informative = (a * a).sum(-1) > 1e-8
    f = float(((a * b).sum(-1) / (a * a).sum(-1).clamp_min(1e-12))[informative].median())
    for _ in range(iterations):
        r = (f * a - b).norm(dim=-1)  # [N] reprojection residual in pixels
        inl = r <= max(1.0, 3.0 * float(r.median()))
        f = float((wgt[inl, None] * a[inl] * b[inl]).sum() / (wgt[inl, None] * a[inl] ** 2).sum().clamp_min(1e-12))
    return f


def _intrinsics(f: float, h: int, w: int) -> Tensor:
    return torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


def _pnp(points: Tensor, confidence: Tensor, K: Tensor, settings: AlignSettings) -> Tensor:
    """T_group_cam [4, 4] of a view from its pointmap [H, W, 3] in the group frame."""
    import cv2

    h, w = points.shape[:2]
    flat_conf = confidence.reshape(-1)
    n = min(settings.pnp_samples, flat_conf.numel())
    idx = flat_conf.topk(n).indices
    obj = points.reshape(-1, 3)[idx].double().numpy()
    img = _pixel_grid(h, w).reshape(-1, 2)[idx].double().numpy()
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        obj, img, K.double().numpy(), None, iterationsCount=200,
        reprojectionError=settings.pnp_threshold_px, flags=cv2.SOLVEPNP_SQPNP,
    )
    if not ok or inliers is None or len(inliers) < 6:
        raise ReconError("pointmap alignment: PnP failed for a view (too few consistent pixels)")
    inl = inliers[:, 0]
    rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K.double().numpy(), None, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    T_cam_group = make_pose(torch.from_numpy(R).float(), torch.from_numpy(tvec[:, 0]).float())
    return invert_pose(T_cam_group)


def _trimmed_similarity(src: Tensor, dst: Tensor, weight: Tensor, rounds: int = 3):
    """Umeyama (s, R, t) with dst ~ s R src + t, refitted on the inliers of each round."""
    keep = weight > 0
    for _ in range(rounds):
        sel = keep & (weight >= weight[keep].median())  # the most confident half
        s, R, t = umeyama(src[sel], dst[sel])
        r = (dst - (s * src @ R.T + t)).norm(dim=-1)
        keep = (weight > 0) & (r <= 3.0 * r[weight > 0].median())
    return s, R, t


def _check_groups(groups: list[PointmapGroup], n_views: int) -> list[tuple[int, int]]:
    res: dict[int, tuple[int, int]] = {}
    for gi, g in enumerate(groups):
        V = len(g.views)
        if g.points.ndim != 4 or g.points.shape[0] != V or g.points.shape[-1] != 3:
            raise ReconError(f"pointmap group {gi}: points must have shape [{V}, H, W, 3], got {list(g.points.shape)}")
        if g.confidence.shape != g.points.shape[:3]:
            raise ReconError(f"pointmap group {gi}: confidence must have shape {list(g.points.shape[:3])}, "
                             f"got {list(g.confidence.shape)}")
        for v in g.views:
            if not 0 <= v < n_views:
                raise ReconError(f"pointmap group {gi}: view index {v} outside 0..{n_views - 1}")
            hw = tuple(g.points.shape[1:3])
            if res.setdefault(v, hw) != hw:
                raise ReconError(f"pointmap group {gi}: view {v} has pointmap size {hw}, elsewhere {res[v]}")
    missing = [v for v in range(n_views) if v not in res]
    if missing:
        raise ReconError(f"pointmap alignment: views {missing} appear in no group; predict pairs that include them")
    return [res[v] for v in range(n_views)]


def _initial_focals(groups: list[PointmapGroup], n_views: int) -> list[float]:
    estimates: dict[int, list[float]] = {v: [] for v in range(n_views)}
    for g in groups:
        if g.intrinsics is not None:
            for k, v in enumerate(g.views):
                estimates[v].append(float(g.intrinsics[k, 0, 0] + g.intrinsics[k, 1, 1]) / 2)
    for g in groups:
        ref = g.views[0]
        if g.intrinsics is None and not estimates[ref]:
            estimates[ref].append(estimate_focal(g.points[0].float(), g.confidence[0].float()))
    known = [float(np.median(e)) for e in estimates.values() if e]
    if not known:
        raise ReconError("pointmap alignment: no focal length can be estimated (no group gives intrinsics)")
    return [float(np.median(estimates[v])) if estimates[v] else float(np.median(known)) for v in range(n_views)]


def _init_world(groups, focals, sizes, settings):
    """Spanning-tree initialisation: (T_world_cam per view, world pointmaps, group sims, root)."""
    n_views = len(focals)
    root = max(range(len(groups)), key=lambda i: float(groups[i].confidence.mean()))
    T_world_cam: dict[int, Tensor] = {}
    world_pts: dict[int, Tensor] = {}
    sims: dict[int, tuple[float, Tensor, Tensor]] = {}
    pending = set(range(len(groups)))
    current = root
    while True:
        g = groups[current]
        placed = [k for k, v in enumerate(g.views) if v in world_pts]
        if current == root:
            s, R, t = 1.0, torch.eye(3), torch.zeros(3)
        else:
            src = torch.cat([g.points[k].reshape(-1, 3) for k in placed]).float()
            dst = torch.cat([world_pts[g.views[k]].reshape(-1, 3) for k in placed])
            wgt = torch.cat([g.confidence[k].reshape(-1) for k in placed]).float()
            s, R, t = _trimmed_similarity(src, dst, wgt)
        sims[current] = (s, R, t)
        for k, v in enumerate(g.views):
            if v in world_pts:
                continue
            h, w = sizes[v]
            T_g_cam = torch.eye(4) if k == 0 else _pnp(g.points[k].float(), g.confidence[k].float(),
                                                      _intrinsics(focals[v], h, w), settings)
            T_world_cam[v] = make_pose(R @ T_g_cam[:3, :3], s * R @ T_g_cam[:3, 3] + t)
            world_pts[v] = s * g.points[k].float() @ R.T + t
        pending.discard(current)
        linked = [i for i in pending if any(v in world_pts for v in groups[i].views)]
        if not linked:
            break
        # Attach next the group sharing most placed views, then the most confident one.
        current = max(linked, key=lambda i: (sum(v in world_pts for v in groups[i].views),
                                             float(groups[i].confidence.mean())))
    if len(world_pts) < n_views:
        lost = sorted(set(range(n_views)) - set(world_pts))
        raise ReconError(f"pointmap alignment: views {lost} share no group with the others; add pairs linking them")
    return T_world_cam, world_pts, sims, root


class _Problem(torch.nn.Module):
    """Free parameters of the joint refinement, as deltas on the initialisation."""

    def __init__(self, T_world_cam, world_pts, sims, focals, sizes, n_groups):
        super().__init__()
        V = len(focals)
        self.sizes = sizes
        self.R0 = torch.stack([T_world_cam[v][:3, :3] for v in range(V)])  # [V, 3, 3]
        self.c = torch.nn.Parameter(torch.stack([T_world_cam[v][:3, 3] for v in range(V)]))  # [V, 3]
        self.w = torch.nn.Parameter(torch.zeros(V, 3))  # [V, 3] rotation deltas
        self.log_f = torch.nn.Parameter(torch.tensor(focals).log())  # [V]
        log_d = []
        for v in range(V):
            z = ((world_pts[v] - self.c.data[v]) @ self.R0[v])[..., 2]  # [H, W] camera z
            z = torch.where(z > 1e-6, z, z[z > 1e-6].median() if (z > 1e-6).any() else torch.ones_like(z))
            log_d.append(torch.nn.Parameter(z.log()))
        self.log_d = torch.nn.ParameterList(log_d)
        self.gR0 = torch.stack([sims[i][1] for i in range(n_groups)])  # [G, 3, 3]
        self.g_w = torch.nn.Parameter(torch.zeros(n_groups, 3))
        self.g_t = torch.nn.Parameter(torch.stack([sims[i][2] for i in range(n_groups)]))  # [G, 3]
        self.g_logs = torch.nn.Parameter(torch.tensor([float(np.log(sims[i][0])) for i in range(n_groups)]))

    def R_world_cam(self) -> Tensor:  # [V, 3, 3]
        return so3_exp(self.w) @ self.R0

    def world_points(self, v: int, R_world_cam: Tensor) -> Tensor:  # [H, W, 3]
        h, w = self.sizes[v]
        uv = _pixel_grid(h, w) - torch.tensor([w / 2, h / 2])
        rays = torch.cat([uv / self.log_f[v].exp(), torch.ones(h, w, 1)], -1)  # [H, W, 3]
        return (rays * self.log_d[v].exp()[..., None]) @ R_world_cam[v].T + self.c[v]

    def group_points(self, gi: int, pts: Tensor) -> Tensor:  # [V, H, W, 3] -> world
        R = so3_exp(self.g_w[gi]) @ self.gR0[gi]
        return self.g_logs[gi].exp() * pts @ R.T + self.g_t[gi]


def _refine(problem: _Problem, groups, root: int, settings: AlignSettings) -> list[float]:
    params = list(problem.parameters())
    opt = torch.optim.Adam(params, lr=settings.lr)
    # Adam's steps stay ~lr in size: decay it, or depths jitter by ~lr (in log space) forever.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.iterations, eta_min=settings.lr * 0.01)
    weights = [g.confidence.float().clone() for g in groups]
    losses: list[float] = []
    for it in range(settings.iterations):
        opt.zero_grad()
        R = problem.R_world_cam()
        chi = [problem.world_points(v, R) for v in range(len(problem.sizes))]
        total, norm, resid = 0.0, 0.0, []
        for gi, g in enumerate(groups):
            pred = problem.group_points(gi, g.points.float())  # [V, H, W, 3]
            target = torch.stack([chi[v] for v in g.views])
            r = (pred - target).norm(dim=-1)  # [V, H, W]: L2 norm per pixel, robust like L1
            total = total + (weights[gi] * r).sum()
            norm += float(weights[gi].sum())
            resid.append(r.detach())
        loss = total / max(norm, 1e-12)
        loss.backward()
        with torch.no_grad():  # the root group fixes the gauge (world frame and scale)
            for p in (problem.g_w, problem.g_t, problem.g_logs):
                p.grad[root] = 0
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if it % 50 == 0:  # re-trim outliers against the current residual scale
            # The floor keeps noise-free data from trimming pixels that are merely unconverged.
            floor = 1e-3 * float(torch.stack([d.detach().exp().median() for d in problem.log_d]).median())
            med = torch.cat([r.reshape(-1) for r in resid]).median().clamp_min(floor)
            for gi, g in enumerate(groups):
                weights[gi] = g.confidence.float() * (resid[gi] <= settings.trim_factor * med)
    return losses


def align_pointmaps(groups: list[PointmapGroup], n_views: int, *, images: list[Tensor] | None = None,
                    settings: AlignSettings | None = None) -> AlignmentResult:
    """Global alignment of pointmap groups -> poses, focals, depths and a fused cloud.

    ``images``: optional V x [H', W', 3] colours for the fused cloud (resized to the
    pointmap resolution)."""
    settings = settings or AlignSettings()
    if not groups:
        raise ReconError("pointmap alignment: no pointmap groups given")
    sizes = _check_groups(groups, n_views)
    focals = _initial_focals(groups, n_views)
    T_world_cam, world_pts, sims, root = _init_world(groups, focals, sizes, settings)
    problem = _Problem(T_world_cam, world_pts, sims, focals, sizes, len(groups))
    losses = _refine(problem, groups, root, settings) if settings.iterations > 0 else []
    return _result(problem, groups, sizes, images, settings, losses)


@torch.no_grad()
def _result(problem: _Problem, groups, sizes, images, settings, losses) -> AlignmentResult:
    R = problem.R_world_cam()
    V = len(sizes)
    T = make_pose(R, problem.c.detach())  # [V, 4, 4] camera-to-world
    conf = [torch.zeros(h, w) for h, w in sizes]
    for g in groups:
        for k, v in enumerate(g.views):
            conf[v] = torch.maximum(conf[v], g.confidence[k].float())
    pts, cols, pconf, world, depths = [], [], [], [], []
    for v in range(V):
        h, w = sizes[v]
        chi = problem.world_points(v, R).detach()  # [H, W, 3]
        world.append(chi)
        depths.append(problem.log_d[v].detach().exp())
        keep = conf[v] >= torch.quantile(conf[v].reshape(-1), settings.fused_quantile)
        pts.append(chi[keep])
        pconf.append(conf[v][keep])
        if images is not None:
            im = torch.nn.functional.interpolate(images[v].permute(2, 0, 1)[None].float(), size=(h, w),
                                                 mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
            cols.append(im[keep].clamp(0, 1))
        else:
            cols.append(torch.full((int(keep.sum()), 3), 0.5))
    K = torch.stack([_intrinsics(float(problem.log_f[v].exp()), *sizes[v]) for v in range(V)])
    return AlignmentResult(T_cam_world=invert_pose(T), K=K, depths=depths, world_points=world, confidence=conf,
                           points=torch.cat(pts), colors=torch.cat(cols), resolution=list(sizes), losses=losses)


def locate_view(group: PointmapGroup, world_reference: Tensor, K: Tensor,
                settings: AlignSettings | None = None) -> Tensor:
    """Pose of a new view against a frozen alignment: ``group`` is a pair (reference
    view, new view) predicted by the model, ``world_reference`` [H, W, 3] the aligned
    world pointmap of the reference view, ``K`` [3, 3] the new view's intrinsics at
    pointmap resolution. A trimmed similarity maps the pair's frame onto the world
    through the reference view's pixels, PnP places the new view in the pair's frame.
    Returns T_cam_world [4, 4]; the alignment itself is not changed."""
    settings = settings or AlignSettings()
    if len(group.views) != 2 or tuple(group.points.shape[1:3]) != tuple(world_reference.shape[:2]):
        raise ReconError(f"locating a view needs a pair group at the reference pointmap size "
                         f"{tuple(world_reference.shape[:2])}, got {len(group.views)} views of "
                         f"{tuple(group.points.shape[1:3])}")
    s, R, t = _trimmed_similarity(group.points[0].reshape(-1, 3).float(), world_reference.reshape(-1, 3).float(),
                                  group.confidence[0].reshape(-1).float())
    T_group_cam = _pnp(group.points[1].float(), group.confidence[1].float(), K.float(), settings)
    return invert_pose(make_pose(R @ T_group_cam[:3, :3], s * R @ T_group_cam[:3, 3] + t))
