"""Register new images against a frozen training reconstruction (``sfm.SfMModel``).

Each new image gets COLMAP SIFT (same extractor and settings as the training views), its
descriptors are matched (ratio test and cross-check) to every training view's keypoints
that carry a triangulated point, and the 2D-3D matches give the pose by LO-RANSAC PnP
with the training camera's intrinsics, refined on the inliers. The model is never
changed: a registered image cannot move a training pose or point (test views are
registered this way, so their pixels never shape the fit).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recon.priors.sfm import RATIO_TEST, SfMModel, extract_features
from recon.types import Camera, View

MIN_INLIERS = 20  # 2D-3D inliers for an accepted pose (PnP needs 3; 20 keeps chance poses out)
MIN_INLIER_RATIO = 0.2
PNP_MAX_ERROR_PX = 4.0


@dataclass(frozen=True)
class Registration:
    view: View  # the input view; its camera is the registered one when ``ok``
    ok: bool
    matches: int  # 2D-3D correspondences before RANSAC
    inliers: int
    reason: str = ""  # why it failed, naming the training views it was matched with


def register(model: SfMModel, views: list[View] | tuple[View, ...]) -> tuple[list[View | None], list[dict]]:
    """Poses of new views against the frozen model -> (posed views, None where
    registration failed; one record per view: name, ok, matches, inliers, reason)."""
    regs = register_views(model, views)
    details = [{"name": r.view.name, "ok": r.ok, "matches": r.matches, "inliers": r.inliers,
                **({"reason": r.reason} if r.reason else {})} for r in regs]
    return [r.view if r.ok else None for r in regs], details


def register_views(model: SfMModel, views: list[View] | tuple[View, ...]) -> list[Registration]:
    """Pose of each view in the model's frame (the model is read, never written)."""
    import pycolmap

    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        return [_register(model, v) for v in views]
    finally:
        pycolmap.logging.minloglevel = previous_level


def _features(view: View, model: SfMModel) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints xy [P, 2] in the view's pixels, descriptors [P, 128] uint8)."""
    import pycolmap

    with tempfile.TemporaryDirectory(prefix="recon_register_") as tmp:
        db_path = extract_features([view], ["query.png"], Path(tmp), replace(model.settings, camera_model="SIMPLE_PINHOLE"))
        db = pycolmap.Database.open(db_path)
        try:
            image = db.read_all_images()[0]
            camera = db.read_camera(image.camera_id)
            xy = np.asarray(db.read_keypoints(image.image_id), dtype=np.float64)[:, :2]
            desc = np.asarray(db.read_descriptors(image.image_id).data, dtype=np.uint8)
        finally:
            db.close()
    xy = xy * np.array([view.width / camera.width, view.height / camera.height])
    return xy, desc


def _mutual_ratio_matches(query: np.ndarray, train: np.ndarray) -> np.ndarray:
    """[K, 2] (query index, train index) passing the ratio test both ways and cross-check."""
    import cv2

    if len(query) < 2 or len(train) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    q, t = query.astype(np.float32), train.astype(np.float32)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    fwd = {m.queryIdx: m.trainIdx for m, n in (p for p in matcher.knnMatch(q, t, k=2) if len(p) == 2)
           if m.distance < RATIO_TEST * n.distance}
    back = {m.queryIdx: m.trainIdx for m in matcher.match(t, q)}
    pairs = [(i, j) for i, j in fwd.items() if back.get(j) == i]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _register(model: SfMModel, view: View) -> Registration:
    import pycolmap

    xy, desc = _features(view, model)
    pts2d, pts3d, per_train = [], [], []
    for train, train_desc, kp_points in zip(model.views, model.descriptors, model.keypoint_points):
        m = _mutual_ratio_matches(desc, train_desc)
        m = m[kp_points[m[:, 1]] >= 0] if len(m) else m
        per_train.append(f"{len(m)} with {train.name}")
        pts2d.append(xy[m[:, 0]])
        pts3d.append(model.points[kp_points[m[:, 1]]].double().numpy())
    p2, p3 = np.concatenate(pts2d), np.concatenate(pts3d)
    matched = ", ".join(per_train)
    if len(p2) < MIN_INLIERS:
        return Registration(view, False, len(p2), 0, f"only {len(p2)} 2D-3D matches ({matched}); need {MIN_INLIERS}")
    K = model.views[0].camera.K.double()
    scale = np.array([view.width / model.views[0].width, view.height / model.views[0].height])
    f = 0.5 * float(K[0, 0] * scale[0] + K[1, 1] * scale[1])
    camera = pycolmap.Camera(model="SIMPLE_PINHOLE", width=view.width, height=view.height,
                             params=[f, float(K[0, 2]) * scale[0], float(K[1, 2]) * scale[1]])
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.ransac.max_error = PNP_MAX_ERROR_PX
    estimation.ransac.random_seed = model.settings.seed
    result = pycolmap.estimate_and_refine_absolute_pose(p2, p3, camera, estimation)
    inliers = int(result["num_inliers"]) if result is not None else 0
    if result is None or inliers < max(MIN_INLIERS, MIN_INLIER_RATIO * len(p2)):
        return Registration(view, False, len(p2), inliers,
                            f"PnP found {inliers} consistent of {len(p2)} 2D-3D matches ({matched}); need "
                            f"{MIN_INLIERS} and {MIN_INLIER_RATIO:.0%}")
    T = np.eye(4)
    T[:3] = result["cam_from_world"].matrix()
    Kq = np.array([[f, 0, camera.params[1]], [0, f, camera.params[2]], [0, 0, 1.0]])
    cam = Camera(K=torch.from_numpy(Kq).float(), T_cam_world=torch.from_numpy(T).float(), width=view.width,
                 height=view.height)
    return Registration(replace(view, camera=cam), True, len(p2), inliers)
