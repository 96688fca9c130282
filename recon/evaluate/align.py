"""Unposed evaluation: put recovered poses into the ground-truth frame before scoring.

When a fit recovers its own training poses (SfM / pointmaps), its world frame differs from
the ground truth's by a similarity (scale, rotation, translation). We estimate it from the
training cameras (``recon.priors.poses.camera_similarity``: rotation from the cameras'
orientations, scale and translation from their centres; a centres-only Umeyama fit is
ill-posed for three nearly collinear forward-facing views), then map each ground-truth
test pose into the reconstruction's frame to render it.

Optionally each mapped test pose is refined photometrically against its test image with
the Gaussians frozen (gradients through ``recon.render.render``). That uses the test image
to fix the pose, so it is optimistic: results carry ``test_pose_refined: true`` and
reports print it beside every number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from recon.errors import ReconError
from recon.geometry import camera_similarity, make_pose, rotation_angle_deg, se3_exp, umeyama
from recon.types import Camera, Gaussians, RenderSettings


@dataclass(frozen=True)
class Similarity:
    """x_gt = scale * R @ x_est + t (maps the reconstruction frame to ground truth)."""

    scale: float
    R: Tensor  # [3, 3]
    t: Tensor  # [3]

    def apply(self, points: Tensor) -> Tensor:  # [N, 3] reconstruction -> ground truth
        return self.scale * points @ self.R.T + self.t

    def to_dict(self) -> dict:
        return {"scale": self.scale, "R": self.R.tolist(), "t": self.t.tolist()}

    @classmethod
    def from_cameras(cls, est: list[Camera], gt: list[Camera]) -> Similarity:
        """The similarity mapping the recovered cameras ``est`` onto ground truth ``gt``."""
        s, R, t = camera_similarity(est, gt)
        return cls(float(s), R.float(), t.float())


def align_centres(est_centres: Tensor, gt_centres: Tensor, with_scale: bool = True) -> Similarity:
    """Umeyama similarity mapping recovered camera centres [N, 3] onto ground truth [N, 3]."""
    if est_centres.shape != gt_centres.shape or est_centres.ndim != 2 or est_centres.shape[-1] != 3:
        raise ReconError(
            f"camera centres must be two [N, 3] arrays of equal N, got {list(est_centres.shape)} "
            f"and {list(gt_centres.shape)}"
        )
    if est_centres.shape[0] < 3:
        raise ReconError(
            f"aligning poses needs at least 3 training cameras, got {est_centres.shape[0]}; "
            "evaluate with ground-truth poses instead"
        )
    s, R, t = umeyama(est_centres.double(), gt_centres.double(), with_scale=with_scale)
    if not s > 0:
        raise ReconError("pose alignment failed: the recovered training cameras are degenerate (all at one point)")
    return Similarity(float(s), R.float(), t.float())


def map_pose_to_reconstruction(T_cam_world_gt: Tensor, sim: Similarity) -> Tensor:
    """A ground-truth world-to-camera pose [4, 4] -> the same camera in the reconstruction
    frame. With x_gt = s R x_est + t, camera coordinates are R_c (s R x_est + t) + t_c;
    dividing by s (which does not change the image) gives a rigid pose."""
    R_c = T_cam_world_gt[:3, :3].float()
    t_c = T_cam_world_gt[:3, 3].float()
    return make_pose(R_c @ sim.R, (R_c @ sim.t + t_c) / sim.scale)


def map_camera_to_reconstruction(camera: Camera, sim: Similarity) -> Camera:
    return replace(camera, T_cam_world=map_pose_to_reconstruction(camera.T_cam_world, sim))


def pose_errors(est: list[Camera], gt: list[Camera], sim: Similarity) -> dict:
    """Errors of recovered cameras after alignment: absolute trajectory error (centre
    RMSE, ground-truth units), rotation error per view (degrees) and centre error per view
    as a percentage of the ground-truth cameras' extent (their largest pairwise distance)."""
    est_c = torch.stack([c.centre for c in est]).double()  # [N, 3]
    gt_c = torch.stack([c.centre for c in gt]).double()
    centre_err = (sim.scale * est_c @ sim.R.double().T + sim.t.double() - gt_c).norm(dim=-1)  # [N]
    ate = float((centre_err**2).mean().sqrt())
    extent = float(torch.cdist(gt_c, gt_c).max())
    rot_errors = []
    for e, g in zip(est, gt):
        # R_cam_gt = R_cam_est @ R^T after alignment; compare with the ground truth
        R_e = e.T_cam_world[:3, :3].double() @ sim.R.double().T
        rot_errors.append(rotation_angle_deg(R_e @ g.T_cam_world[:3, :3].double().T))
    pct = [100 * float(c) / extent for c in centre_err] if extent > 0 else [float("nan")] * len(est)
    return {"ate": ate, "rotation_error_deg": sum(rot_errors) / len(rot_errors), "scale": sim.scale,
            "rotation_errors_deg": rot_errors, "rotation_error_max_deg": max(rot_errors),
            "centre_errors_pct": pct, "centre_error_max_pct": max(pct), "centre_error_reference":
            "% of the largest distance between two ground-truth training camera centres"}


def refine_test_pose(
    gaussians: Gaussians,
    camera: Camera,
    image: Tensor,
    *,
    steps: int = 100,
    lr: float = 3e-3,
    settings: RenderSettings = RenderSettings(),
) -> tuple[Camera, dict]:
    """Photometric refinement of one test camera with the Gaussians frozen.
    image [H, W, 3] at the camera's resolution. Returns the refined camera and a record
    (initial and final L1) for the report. Optimistic: flag results that use it."""
    from recon.render import render

    if tuple(image.shape[:2]) != (camera.height, camera.width):
        raise ReconError(
            f"test image {list(image.shape[:2])} does not match its camera {camera.height}x{camera.width}"
        )
    frozen = gaussians.detach()
    target = image.to(frozen.means.device).float()  # [H, W, 3]
    T0 = camera.T_cam_world.to(frozen.means.device).float()  # [4, 4]
    xi = torch.zeros(6, device=T0.device, requires_grad=True)  # left-multiplied correction
    optimiser = torch.optim.Adam([xi], lr=lr)
    losses = []
    for _ in range(max(0, steps)):
        cam = replace(camera, T_cam_world=se3_exp(xi) @ T0)
        rgb = render(frozen, [cam], settings).rgb[0]  # [H, W, 3]
        loss = (rgb - target).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        T = se3_exp(xi) @ T0
        final = float((render(frozen, [replace(camera, T_cam_world=T)], settings).rgb[0] - target).abs().mean())
    record = {"steps": steps, "l1_before": losses[0] if losses else final, "l1_after": final}
    return replace(camera, T_cam_world=T.detach().cpu()), record


def evaluate_unposed(
    run_dir,
    gt_scene: str,
    *,
    gt_format: str | None = None,
    refine_steps: int = 0,
    lpips_weights: str | None = None,
) -> dict:
    """Score a run whose poses were recovered (not given) against a posed copy of the
    scene: align the run's training cameras to the ground-truth ones (Umeyama on centres,
    matched by view name), map the ground-truth test cameras into the reconstruction's
    frame, optionally refine them photometrically (flagged), render point_cloud.ply there
    and score. Written into metrics.json as ``test_aligned``."""
    import json
    from pathlib import Path

    from recon.data import load_scene
    from recon.data.common import resize_view
    from recon.evaluate.rescore import run_cameras
    from recon.evaluate.scoring import score_views
    from recon.export.cameras_json import read_run_json as read_json
    from recon.export.ply import read_ply
    from recon.render import render

    run = Path(run_dir)
    record = read_json(run / "scene.json", "the run's scene record")
    train = dict(run_cameras(run, "train"))
    gt = load_scene(gt_scene, format=gt_format)
    gt_views = {v.name: v for v in gt.views}
    missing = [n for n in [*train, *record.get("test_names", [])] if n not in gt_views]
    if missing:
        raise ReconError(f"{gt_scene}: views {missing[:4]} of the run are not in the ground-truth scene; "
                         "pass the same scene with its poses")
    names = list(train)
    sim = Similarity.from_cameras([train[n] for n in names], [gt_views[n].camera for n in names])
    errors = pose_errors([train[n] for n in names], [gt_views[n].camera for n in names], sim)
    gaussians = read_ply(run / "point_cloud.ply")
    # the render settings the fit scored with (llff3: the training images' mean colour behind the Gaussians),
    # read as `recon eval` reads them; the ground-truth scene's background only for a run without them
    from recon.evaluate.rescore import run_render_settings

    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    settings, settings_notes = run_render_settings(run, metrics, gt.background or (0.0, 0.0, 0.0))
    width, height = record.get("image_size") or (None, None)
    preds, gts, refinements = {}, {}, []
    for name in record.get("test_names", []):
        view = gt_views[name]
        if width and (view.width, view.height) != (width, height):
            view = resize_view(view, int(width), int(height))
        # the ground-truth pose in the reconstruction's frame, with the reconstruction's own
        # (recovered, shared) intrinsics: the Gaussians were fitted through those
        cam = map_camera_to_reconstruction(view.camera, sim)
        ref = train[names[0]]
        cam = replace(cam, K=ref.scaled(cam.width, cam.height).K.clone())
        if refine_steps > 0:
            cam, rec = refine_test_pose(gaussians, cam, view.image, steps=refine_steps, settings=settings)
            refinements.append({"name": name, **rec})
        with torch.no_grad():
            preds[name] = render(gaussians, [cam], settings).rgb[0].clamp(0, 1).cpu()
        gts[name] = view
    scores = score_views(list(preds.values()), list(gts.values()), record.get("protocol"), lpips_weights=lpips_weights)
    result = {"metrics": scores.summary, "views": scores.per_view, "fallbacks": scores.fallbacks, "alignment": sim.to_dict(),
              "train_pose_errors": errors, "aligned_on": "training cameras (orientation mean + centre fit)",
              "test_poses": "GT aligned via training cameras" + (" +photometric refinement" if refine_steps > 0 else ""),
              "test_pose_refined": refine_steps > 0, "refinement": refinements, "gt_scene": str(gt_scene),
              **({"render_settings_notes": settings_notes} if settings_notes else {})}
    metrics["test_aligned"] = result
    metrics_path.write_text(json.dumps(metrics, indent=2))
    return result
