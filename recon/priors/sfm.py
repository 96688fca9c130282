"""Sparse structure from SIFT: triangulation with known poses, and pose recovery.

* ``triangulate_sift(views)``: OpenCV SIFT matched between every pair of posed views,
  filtered by the epipolar geometry the known poses imply (no RANSAC needed), then
  triangulated -> a sparse coloured cloud (an init option, and the MVS depth range).
* ``recover_poses(views)``: pycolmap incremental SfM with exhaustive matching for views
  without poses -> the same views with recovered intrinsics and world-to-camera poses.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.errors import ReconError
from recon.types import Camera, View

RATIO_TEST = 0.8  # Lowe's ratio between the best and second-best descriptor distances


def _gray_u8(view: View) -> np.ndarray:
    rgb = (view.image.detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)  # [H, W, 3]
    return (rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def _sift(view: View, max_features: int) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    keypoints, desc = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(_gray_u8(view), None)
    # OpenCV puts pixel centres at integers; our K puts them at +0.5
    xy = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2) + 0.5  # [P, 2]
    return xy, desc


def _match(d1: np.ndarray | None, d2: np.ndarray | None) -> np.ndarray:
    import cv2

    if d1 is None or d2 is None or len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [(m.queryIdx, m.trainIdx) for m, n in (p for p in pairs if len(p) == 2) if m.distance < RATIO_TEST * n.distance]
    return np.array(good, dtype=np.int64).reshape(-1, 2)


def _projection(cam: Camera) -> np.ndarray:
    return cam.K.double().numpy() @ cam.T_cam_world.double().numpy()[:3]  # [3, 4]


def _fundamental(c1: Camera, c2: Camera) -> np.ndarray:
    """F with x2^T F x1 = 0 for pixels x1 in c1 and x2 in c2."""
    T21 = c2.T_cam_world.double().numpy() @ np.linalg.inv(c1.T_cam_world.double().numpy())
    R, t = T21[:3, :3], T21[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(c2.K.double().numpy()).T @ tx @ R @ np.linalg.inv(c1.K.double().numpy())


def _sampson(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    h1 = np.c_[x1, np.ones(len(x1))]  # [P, 3]
    h2 = np.c_[x2, np.ones(len(x2))]
    Fx1, Ftx2 = h1 @ F.T, h2 @ F
    num = np.einsum("ij,ij->i", h2, Fx1) ** 2
    return np.sqrt(num / (Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2 + 1e-12))


def _reprojection_error(P: np.ndarray, X: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proj = np.c_[X, np.ones(len(X))] @ P.T  # [P, 3]
    return np.linalg.norm(proj[:, :2] / proj[:, 2:3] - x, axis=1), proj[:, 2]


def triangulate_sift(
    views: "list[View] | tuple[View, ...]",
    *,
    max_features: int = 4000,
    max_epipolar_px: float = 1.5,
    max_reproj_px: float = 2.0,
    min_angle_deg: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Posed views -> (points [M, 3] world, colors [M, 3] in [0, 1]) from SIFT matches of
    every view pair that agree with the known epipolar geometry, triangulate in front of
    both cameras, reproject within ``max_reproj_px`` and subtend at least ``min_angle_deg``."""
    import cv2

    views = tuple(views)
    feats = [_sift(v, max_features) for v in views]
    pts, cols = [], []
    for i, j in itertools.combinations(range(len(views)), 2):
        m = _match(feats[i][1], feats[j][1])
        if len(m) == 0:
            continue
        x1, x2 = feats[i][0][m[:, 0]], feats[j][0][m[:, 1]]  # [P, 2]
        ok = _sampson(_fundamental(views[i].camera, views[j].camera), x1, x2) < max_epipolar_px
        x1, x2 = x1[ok], x2[ok]
        if len(x1) == 0:
            continue
        P1, P2 = _projection(views[i].camera), _projection(views[j].camera)
        Xh = cv2.triangulatePoints(P1, P2, x1.T, x2.T)  # [4, P]
        X = (Xh[:3] / Xh[3:]).T  # [P, 3]
        e1, z1 = _reprojection_error(P1, X, x1)
        e2, z2 = _reprojection_error(P2, X, x2)
        c1, c2 = views[i].camera.centre.double().numpy(), views[j].camera.centre.double().numpy()
        r1, r2 = X - c1, X - c2
        cos = np.einsum("ij,ij->i", r1, r2) / (np.linalg.norm(r1, axis=1) * np.linalg.norm(r2, axis=1) + 1e-12)
        good = (z1 > 0) & (z2 > 0) & (e1 < max_reproj_px) & (e2 < max_reproj_px) & (cos < np.cos(np.deg2rad(min_angle_deg)))
        good &= np.isfinite(X).all(1)
        X, x1, x2 = X[good], x1[good], x2[good]
        pts.append(X)
        cols.append(0.5 * (_sample_colour(views[i], x1) + _sample_colour(views[j], x2)))
    if not pts:
        return torch.zeros(0, 3), torch.zeros(0, 3)
    return torch.from_numpy(np.concatenate(pts)).float(), torch.from_numpy(np.concatenate(cols)).float().clamp(0, 1)


def _sample_colour(view: View, xy: np.ndarray) -> np.ndarray:
    img = view.image.detach().cpu().numpy()  # [H, W, 3]
    col = np.clip(np.floor(xy[:, 0]).astype(int), 0, view.width - 1)
    row = np.clip(np.floor(xy[:, 1]).astype(int), 0, view.height - 1)
    return img[row, col]


def recover_poses(
    views: "list[View] | tuple[View, ...]",
    *,
    camera_model: str = "SIMPLE_PINHOLE",
    shared_camera: bool | None = None,
    max_image_size: int = 1600,
    seed: int = 0,
    num_threads: int = -1,
) -> tuple[View, ...]:
    """Views without (trusted) poses -> the same views, in the same order, with intrinsics
    and world-to-camera poses from pycolmap incremental SfM with exhaustive matching.

    The world frame and scale are COLMAP's (arbitrary); callers normalise afterwards.
    ``shared_camera`` (default: all images the same size) makes every view share one set of
    intrinsics, which is much better conditioned with few views. Raises ``ReconError``
    naming the views that could not be registered."""
    import pycolmap

    from recon.progress import stage

    views = tuple(views)
    if len(views) < 2:
        raise ReconError(f"pose recovery needs at least 2 views, got {len(views)}")
    names = [f"{i:04d}_{_safe(v.name)}.png" for i, v in enumerate(views)]  # order-preserving
    if shared_camera is None:
        shared_camera = len({(v.width, v.height) for v in views}) == 1
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # COLMAP's per-step INFO/WARNING lines drown our progress output
    try:
        with tempfile.TemporaryDirectory(prefix="recon_sfm_") as tmp, stage(f"structure from motion ({len(views)} views)"):
            return _run_colmap(views, names, Path(tmp), camera_model, shared_camera, max_image_size, seed, num_threads)
    finally:
        pycolmap.logging.minloglevel = previous_level


def _run_colmap(views: tuple[View, ...], names: list[str], tmp: Path, camera_model: str, shared_camera: bool,
                max_image_size: int, seed: int, num_threads: int) -> tuple[View, ...]:
    import imageio.v3 as iio
    import pycolmap

    image_dir, db, out = tmp / "images", tmp / "database.db", tmp / "sparse"
    image_dir.mkdir()
    out.mkdir()
    for name, v in zip(names, views):
        iio.imwrite(image_dir / name, (v.image.detach().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.num_threads = num_threads
    mode = pycolmap.CameraMode.SINGLE if shared_camera else pycolmap.CameraMode.PER_IMAGE
    pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions()
    # COLMAP's defaults target large collections (a model needs 10 images): relax for 2-9 views
    options.min_model_size = 2
    options.mapper.init_min_num_inliers = 50
    options.mapper.abs_pose_min_num_inliers = 15
    options.mapper.init_min_tri_angle = 4.0
    options.multiple_models = False
    options.random_seed = seed
    options.num_threads = num_threads
    reconstructions = pycolmap.incremental_mapping(db, image_dir, out, options)
    return _views_from_reconstruction(views, names, reconstructions)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _views_from_reconstruction(views: tuple[View, ...], names: list[str], reconstructions: dict) -> tuple[View, ...]:
    from dataclasses import replace

    best = max(reconstructions.values(), key=lambda r: r.num_reg_images(), default=None)
    registered = {}
    if best is not None:
        for image in best.images.values():
            if image.has_pose:
                registered[image.name] = image
    missing = [v.name for v, n in zip(views, names) if n not in registered]
    if missing:
        raise ReconError(
            f"structure-from-motion could not register {len(missing)} of {len(views)} views "
            f"({', '.join(missing)}): too little overlap or texture between them; add views with more "
            "overlap, or use the learned stereo prior (--stereo-model PATH) which needs no poses")
    out = []
    for v, n in zip(views, names):
        image = registered[n]
        cam = image.camera
        pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        T = np.eye(4)
        T[:3] = pose.matrix()
        K = np.asarray(cam.calibration_matrix(), dtype=np.float64)
        sx, sy = v.width / cam.width, v.height / cam.height  # extraction may downscale
        K[0] *= sx
        K[1] *= sy
        camera = Camera(K=torch.from_numpy(K).float(), T_cam_world=torch.from_numpy(T).float(), width=v.width, height=v.height)
        out.append(replace(v, camera=camera))
    return tuple(out)
