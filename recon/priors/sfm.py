"""Sparse structure from SIFT: triangulation with known poses, and pose recovery.

* ``triangulate_sift(views)``: OpenCV SIFT matched between every pair of posed views,
  filtered by the epipolar geometry the known poses imply (no RANSAC needed), then
  triangulated -> a sparse coloured cloud (an init option, and the MVS depth range).
* ``reconstruct(views)``: pose recovery for 2-9 views without poses: pycolmap SIFT,
  exhaustive cross-checked and guided matching, two-view geometry, an incremental mapper
  with thresholds relaxed for few images, bundle adjustment with a shared camera whose
  focal starts from the views' intrinsics (EXIF or the 1.2 x max-side prior) and is then
  checked by a reprojection profile around it (the mapper rerun at fixed focals,
  ``SfMSettings.focal_search``; a clearly better, consistent model replaces it) -> an
  ``SfMModel`` (posed views, the triangulated points, what was needed to register more
  images against it later, and a record of the route that ran). Views whose verified
  matches a camera rotation alone explains (``rotation_only_matches``: a scene too distant
  or flat for the viewpoints) are refused before mapping: their positions are not fixed by
  the photos, and the mapper returns a confident but wrong (e.g. mirrored) solution.
* ``recover_poses(views)``: the posed views of ``reconstruct``.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recon.errors import ReconError
from recon.geometry import camera_similarity, map_camera, rotation_angle_deg
from recon.types import Camera, View

RATIO_TEST = 0.8  # Lowe's ratio between the best and second-best descriptor distances
# SfMSettings overrides of the rerun with denser features (see SfMSettings.dense_sift_below_points)
DENSE_SIFT = {"sift_peak_threshold": 0.002, "sift_affine_shape": True, "sift_domain_size_pooling": True}


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
    views: list[View] | tuple[View, ...],
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


# ---------------------------------------------------------------- pose recovery (pycolmap)


@dataclass(frozen=True)
class SfMSettings:
    """Pose recovery thresholds. COLMAP's defaults target large collections (a model needs
    10 images, an initial pair 100 inliers and 16 degrees); these are relaxed for 2-9 views
    and compensated by the checks every accepted model must pass."""

    camera_model: str = "SIMPLE_PINHOLE"  # one shared pinhole camera: the best-conditioned model for few views
    max_image_size: int = 1600  # feature extraction downscales larger images
    max_features: int = 8192
    # SIFT: COLMAP's defaults (contrast threshold 0.02 / 3 octave levels, no affine shape, no
    # DSP), tuned for megapixel collections. When the accepted model has fewer than
    # ``dense_sift_below_points`` points, SfM is rerun with denser, better localised features
    # (``DENSE_SIFT``) and that model is kept if it passes the checks: three 320x240 views of
    # the generated scene give 174 points, their shared focal -4.4 % off and test views
    # registered up to 0.86 deg off (~2.6 dB of test PSNR on that 40-degree arc, where a focal
    # error is no longer a depth scale the fit absorbs); dense: 430 points, focal +1.2 %,
    # <= 0.2 deg (benchmarks/results/unposed/README.md). Not for every scene: on LLFF fern
    # (511 points by default) dense features registered a test view 2.6 deg off.
    sift_peak_threshold: float = 0.02 / 3
    sift_affine_shape: bool = False
    sift_domain_size_pooling: bool = False
    dense_sift_below_points: int = 300
    # Re-match each verified pair under its epipolar geometry: 2-3x the inliers on repetitive
    # texture (LLFF leaves/orchids), where the ratio test alone keeps ~5% of the matches.
    guided_matching: bool = True
    min_pair_inliers: int = 15  # verified matches for two views to count as neighbours
    init_min_inliers: int = 30
    init_min_tri_angle_deg: float = 2.0
    min_tri_angle_deg: float = 1.0
    abs_pose_min_inliers: int = 15
    min_points_per_view: int = 30  # triangulated points each registered view must observe
    max_mean_reprojection_px: float = 2.0
    refine_focal: bool = True
    # Focal checked by a reprojection profile: once a free-focal model is accepted, the mapper is
    # rerun (features and matches once, ~1 s a run) with the shared focal held at values around
    # the free one (_focal_profile); a clearly lower mean reprojection error with the cameras
    # in agreement replaces the free model. Why: with near-parallel views the cost is flat along
    # focal/depth and the incremental mapper stops where its path leaves it, not at the minimum:
    # LLFF orchids, 7 views: free focal 486 px from any start, 0.667 px, rotations 2.6 deg off;
    # held at 391-420 px (the dataset's 391): 0.633 px, 0.4-1.1 deg. Not a search over all
    # focals: three generated views (a 40-degree arc) have a second minimum at 142 px (0.250 px
    # against 0.287 near the true 307) whose cameras are mirrored. Only with ``refine_focal``.
    focal_search: bool = True
    focal_search_window: float = 1.35  # focals from free / 1.35 to free x 1.35
    focal_search_step: float = 1.2  # at most this ratio between neighbouring focals of the grid
    focal_search_gain: float = 0.03  # the profile's model must be this share lower in mean reprojection error
    focal_search_max_turn_deg: float = 5.0
    focal_range: tuple[float, float] = (0.3, 3.0)  # accepted focal / max(width, height)
    max_init_pairs: int = 4  # initial pairs forced, best first, when the automatic choice fails
    # Depth-reversal guard: when a pure camera rotation (a homography K R K^-1, any focal)
    # explains this share of the verified matches within the verification threshold, the
    # parallax that fixes the camera positions is under that threshold, and bundle adjustment
    # trades it against focal and rotation (LLFF leaves, 3 and 5 views: 87-90% -> mirrored
    # centres, focal 633 px vs 428). Measured on real scenes whose SfM is right: <= 40%.
    max_rotation_only_share: float = 0.7
    verification_max_error_px: float = 4.0  # COLMAP's two-view RANSAC threshold (its default)
    seed: int = 0
    num_threads: int = 1


@dataclass(frozen=True)
class PairStat:
    first: str
    second: str
    matches: int  # cross-checked descriptor matches
    inliers: int  # matches consistent with the pair's two-view geometry (guided matching adds some)
    geometry: str  # COLMAP's two-view configuration (CALIBRATED, UNCALIBRATED, PLANAR, ...)
    rotation_only: int = 0  # inliers a pure camera rotation explains as well (rotation_only_matches)
    rotation_focal_px: float | None = None  # the focal of that rotation-only fit


@dataclass
class SfMModel:
    """A reconstruction of the training views, frozen once made: more images are
    registered against it (recon.priors.registration) without changing it."""

    views: tuple[View, ...]  # the input views, same order, with recovered cameras (COLMAP's frame)
    points: Tensor  # [M, 3] triangulated points
    colors: Tensor  # [M, 3] in [0, 1]
    route: str  # which mapper attempt produced the model
    attempts: list[str]  # every attempt and why it was rejected
    pairs: list[PairStat]
    per_view: list[dict]  # name, observed points, mean reprojection error (px)
    mean_reprojection_px: float
    settings: SfMSettings
    # per training view: SIFT descriptors [P, 128] uint8 and the index into ``points`` of
    # each keypoint's triangulated point (-1 for none), for 2D-3D matching of new images
    descriptors: list[np.ndarray] = field(repr=False, default_factory=list)
    keypoint_points: list[np.ndarray] = field(repr=False, default_factory=list)

    def record(self) -> dict:
        """What metrics.json says about the recovery."""
        return {"method": "pycolmap incremental SfM (training views only)", "route": self.route,
                "attempts": self.attempts, "num_points": int(self.points.shape[0]),
                "mean_reprojection_px": round(self.mean_reprojection_px, 3),
                "focal_px": round(float(self.views[0].camera.K[0, 0]), 2), "per_view": self.per_view,
                "sift": {"peak_threshold": self.settings.sift_peak_threshold, "affine_shape":
                         self.settings.sift_affine_shape, "domain_size_pooling": self.settings.sift_domain_size_pooling},
                "rotation_only_share": rotation_only_share(self.pairs, self.settings),
                "pairs": [vars(p) for p in self.pairs]}


def recover_poses(views: list[View] | tuple[View, ...], *, settings: SfMSettings | None = None,
                  **overrides) -> tuple[View, ...]:
    """Views without (trusted) poses -> the same views with recovered intrinsics and
    world-to-camera poses (COLMAP's arbitrary frame and scale). See :func:`reconstruct`."""
    return reconstruct(views, settings=settings, **overrides).views


def reconstruct(views: list[View] | tuple[View, ...], *, settings: SfMSettings | None = None,
                **overrides) -> SfMModel:
    """Structure from motion of 2-9 views -> ``SfMModel``. The views' intrinsics are the
    focal prior (EXIF or 1.2 x max side): one candidate of the focal profile
    (``focal_search``), else refined in bundle adjustment, kept with
    ``refine_focal=False``. Raises ``ReconError`` naming each view that could not be
    registered and why (its verified matches with each neighbour), never returns a
    model that fails the checks of ``SfMSettings``. ``overrides``: SfMSettings fields."""
    import pycolmap

    from recon.progress import stage

    settings = replace(settings or SfMSettings(), **overrides)
    views = tuple(views)
    if len(views) < 2:
        raise ReconError(f"pose recovery needs at least 2 views, got {len(views)}")
    names = [f"{i:04d}_{_safe(v.name)}.png" for i, v in enumerate(views)]  # order-preserving
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # COLMAP's per-step INFO/WARNING lines drown our progress output
    try:
        with tempfile.TemporaryDirectory(prefix="recon_sfm_") as tmp, stage(f"structure from motion ({len(views)} views)"):
            model = _reconstruct(views, names, Path(tmp), settings)
        if len(model.points) >= settings.dense_sift_below_points or all(
                getattr(settings, k) == v for k, v in DENSE_SIFT.items()):
            return model
        dense = replace(settings, **DENSE_SIFT)
        note = (f"{len(model.points)} points < {settings.dense_sift_below_points}: rerun with denser SIFT "
                f"(peak threshold {dense.sift_peak_threshold}, affine shape, DSP)")
        try:
            with tempfile.TemporaryDirectory(prefix="recon_sfm_") as tmp, stage("structure from motion, denser SIFT"):
                better = _reconstruct(views, names, Path(tmp), dense)
        except ReconError as exc:  # the sparse model passed every check: keep it, say why
            model.attempts.append(f"{note}: failed ({str(exc)[:200]}); kept the first model")
            return model
        better.attempts[:0] = [*model.attempts, note]
        return better
    finally:
        pycolmap.logging.minloglevel = previous_level


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def extract_features(views: list[View] | tuple[View, ...], names: list[str], folder: Path,
                     settings: SfMSettings) -> Path:
    """Write the views as PNGs under ``folder/images`` and extract COLMAP SIFT into
    ``folder/database.db`` (one shared camera when all views have one size, with the
    views' own intrinsics as its initial value). Returns the database path."""
    import imageio.v3 as iio
    import pycolmap

    image_dir, db = folder / "images", folder / "database.db"
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, v in zip(names, views):
        iio.imwrite(image_dir / name, (v.image.detach().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    shared = len({(v.width, v.height) for v in views}) == 1
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = settings.camera_model
    if shared:
        K = views[0].camera.K.double()
        f = 0.5 * float(K[0, 0] + K[1, 1])
        params = {"SIMPLE_PINHOLE": [f, float(K[0, 2]), float(K[1, 2])],
                  "SIMPLE_RADIAL": [f, float(K[0, 2]), float(K[1, 2]), 0.0]}.get(settings.camera_model)
        if params is not None:
            reader.camera_params = ",".join(f"{p:.6f}" for p in params)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = settings.max_image_size
    extraction.num_threads = settings.num_threads
    extraction.sift.max_num_features = settings.max_features
    extraction.sift.peak_threshold = settings.sift_peak_threshold
    extraction.sift.estimate_affine_shape = settings.sift_affine_shape
    extraction.sift.domain_size_pooling = settings.sift_domain_size_pooling
    mode = pycolmap.CameraMode.SINGLE if shared else pycolmap.CameraMode.PER_IMAGE
    pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    return db


def two_view_stats(views: list[View] | tuple[View, ...], *, settings: SfMSettings | None = None,
                   **overrides) -> list[PairStat]:
    """The verified pairs ``reconstruct`` would map (features, matching and two-view
    geometry only, no mapper): for diagnostics, e.g. ``rotation_only_share``."""
    import pycolmap

    settings = replace(settings or SfMSettings(), **overrides)
    views = tuple(views)
    names = [f"{i:04d}_{_safe(v.name)}.png" for i, v in enumerate(views)]
    previous_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        with tempfile.TemporaryDirectory(prefix="recon_sfm_") as tmp:
            return _verified_pairs(views, names, Path(tmp), settings)[1]
    finally:
        pycolmap.logging.minloglevel = previous_level


def _verified_pairs(views: tuple[View, ...], names: list[str], tmp: Path, settings: SfMSettings
                    ) -> tuple[Path, list[PairStat], dict[str, int]]:
    """SIFT, exhaustive matching and two-view verification into ``tmp/database.db`` ->
    (database path, one PairStat per view pair, image ids by file name)."""
    import pycolmap

    db_path = extract_features(views, names, tmp, settings)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = settings.num_threads
    matching.guided_matching = settings.guided_matching
    matching.sift.cross_check = True
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = settings.min_pair_inliers
    verification.ransac.random_seed = settings.seed
    verification.ransac.max_error = settings.verification_max_error_px
    pycolmap.match_exhaustive(db_path, matching_options=matching, verification_options=verification,
                              device=pycolmap.Device.cpu)
    pairs, ids = _pair_stats(db_path, views, names, settings)
    return db_path, pairs, ids


def _reconstruct(views: tuple[View, ...], names: list[str], tmp: Path, settings: SfMSettings) -> SfMModel:
    db_path, pairs, ids = _verified_pairs(views, names, tmp, settings)
    undetermined = _rotation_only_problem(views, pairs, settings)
    if undetermined:
        raise ReconError(undetermined)
    attempts: list[str] = []
    candidates = sorted((p for p in pairs if p.inliers >= settings.init_min_inliers), key=lambda p: -p.inliers)
    by_name = {v.name: n for v, n in zip(views, names)}
    best = None
    for init in [None, *candidates[: settings.max_init_pairs]]:
        label = "incremental mapper" if init is None else f"incremental mapper from pair ({init.first}, {init.second})"
        init_ids = None if init is None else (ids[by_name[init.first]], ids[by_name[init.second]])
        out = tmp / f"sparse{len(attempts)}"
        out.mkdir()
        model = _map(db_path, tmp / "images", out, settings, init_ids)
        problems = _check(model, views, names, pairs, settings)
        attempts.append(label + (": accepted" if not problems else ": rejected (" + "; ".join(problems) + ")"))
        if not problems:
            if settings.refine_focal and settings.focal_search and len(model.cameras) == 1:  # one shared focal
                model, label = _focal_profile(model, label, db_path, tmp, views, names, pairs, settings, init_ids,
                                              attempts)
            return _model(model, views, names, db_path, label, attempts, pairs, settings)
        if best is None or len(problems) < len(best[1]):
            best = (label, problems)
    raise ReconError(
        f"structure-from-motion of the {len(views)} training views failed: " + "; ".join(best[1])
        + ". Add views with more overlap, or use a learned pointmap model (--stereo-model PATH) which needs no "
        "feature tracks")


def _set_shared_focal(db_path: Path, focal: float) -> None:
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        for cam in db.read_all_cameras():
            params = list(cam.params)
            params[0] = focal  # SIMPLE_PINHOLE / SIMPLE_RADIAL: f, cx, cy[, k]
            cam.params = params
            db.update_camera(cam)
    finally:
        db.close()


def _focal_profile(free, label: str, db_path: Path, tmp: Path, views, names, pairs: list[PairStat],
                   settings: SfMSettings, init_ids, attempts: list[str]):
    """The accepted free-focal model -> (the model to keep, its route label). The mapper is
    rerun at fixed shared focals within ``focal_search_window`` of the free focal (a geometric
    grid, then twice the vertex of the parabola in log focal through the best and its
    neighbours, the second time at a quarter of the grid's step); the lowest mean
    reprojection error among the models passing ``_check`` replaces the free model only
    when it is at least ``focal_search_gain`` lower and the cameras agree with the free
    model's (same handedness, rotations within ``focal_search_max_turn_deg`` after the
    similarity between the two): a refinement of that solution, never a jump to another one.
    The profile and the decision go to ``attempts``. See ``SfMSettings.focal_search``."""
    free_focal = float(next(iter(free.cameras.values())).focal_length)
    free_error = float(free.compute_mean_reprojection_error())
    fixed = replace(settings, refine_focal=False)
    tried: dict[float, tuple[float, object]] = {}  # focal -> (mean reprojection px or inf, model)

    def run(focal: float) -> float:
        focal = round(focal, 1)
        if focal not in tried:
            _set_shared_focal(db_path, focal)
            out = tmp / f"profile{len(tried)}"
            out.mkdir()
            model = _map(db_path, tmp / "images", out, fixed, init_ids)
            ok = model is not None and not _check(model, views, names, pairs, fixed)
            tried[focal] = (float(model.compute_mean_reprojection_error()) if ok else math.inf, model)
        return tried[focal][0]

    def refine_around(focal: float, step: float) -> None:
        """Run the vertex of the parabola through focal * exp(-step, 0, step) when it is convex."""
        left, mid, right = run(focal * math.exp(-step)), tried[focal][0], run(focal * math.exp(step))
        curvature = left + right - 2 * mid
        if math.isfinite(curvature) and curvature > 0:
            run(focal * math.exp(step * min(1.0, max(-1.0, 0.5 * (left - right) / curvature))))

    step, reach = math.log(settings.focal_search_step), math.log(settings.focal_search_window)
    n = int(math.ceil(reach / step))
    for k in range(-n, n + 1):
        run(free_focal * math.exp(k * reach / n))
    best = min(tried, key=lambda f: tried[f][0])
    if math.isfinite(tried[best][0]):
        refine_around(best, reach / n)
        best = min(tried, key=lambda f: tried[f][0])
        refine_around(best, reach / n / 4)
        best = min(tried, key=lambda f: tried[f][0])
    error, model = tried[best]
    profile = ", ".join(f"{f:.0f}: {e:.3f}" for f, (e, _) in sorted(tried.items()) if math.isfinite(e))
    note = (f"focal profile around the free focal {free_focal:.1f} px ({free_error:.3f} px mean reprojection; "
            f"{len(tried)} mapper runs at fixed focals, px per focal: {profile})")
    if not error <= (1 - settings.focal_search_gain) * free_error:
        attempts.append(f"{note}: kept the free focal (no fixed focal {100 * settings.focal_search_gain:g} % lower)")
        return free, label
    turn = _turn_between(free, model, names)
    if turn is None or turn > settings.focal_search_max_turn_deg:
        attempts.append(f"{note}: kept the free focal ({best:.1f} px, {error:.3f} px, places the cameras "
                        + ("mirrored" if turn is None else f"{turn:.1f} deg turned") + " against the free model)")
        return free, label
    attempts.append(f"{note}: focal {best:.1f} px, {error:.3f} px")
    return model, f"{label}, focal {best:.1f} px from the reprojection profile"


def _cam_from_world(image) -> np.ndarray:
    """A pycolmap image's world-to-camera pose as [4, 4] (a method in pycolmap 4, an attribute before)."""
    pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
    T = np.eye(4)
    T[:3] = pose.matrix()
    return T


def _turn_between(a, b, names) -> float | None:
    """Largest rotation difference (deg) between the cameras of two models of the same views
    after the similarity that aligns them; None when b is mirrored against a."""
    def cameras(model) -> list[Camera]:
        by_name = {im.name: im for im in model.images.values()}
        out = []
        for n in names:
            out.append(Camera(K=torch.eye(3), T_cam_world=torch.from_numpy(_cam_from_world(by_name[n])).float(),
                              width=1, height=1))
        return out

    ca, cb = cameras(a), cameras(b)
    try:
        s, R, t = camera_similarity(ca, cb)
    except ReconError:
        return None
    return max(rotation_angle_deg(map_camera(x, s, R, t).T_cam_world[:3, :3] @ y.T_cam_world[:3, :3].T)
               for x, y in zip(ca, cb))


def _pair_stats(db_path: Path, views, names, settings: SfMSettings) -> tuple[list[PairStat], dict[str, int]]:
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        keypoints = {n: np.asarray(db.read_keypoints(ids[n]))[:, :2].astype(np.float64) for n in names}
        stats = []
        for (a, va), (b, vb) in itertools.combinations(list(zip(names, views)), 2):
            i, j = ids[a], ids[b]
            matches = int(db.read_matches(i, j).shape[0]) if db.exists_matches(i, j) else 0
            inliers, geometry, rotation, focal = 0, "none", 0, None
            if db.exists_two_view_geometry(i, j):
                g = db.read_two_view_geometry(i, j)
                pairs = np.asarray(g.inlier_matches).reshape(-1, 2)
                inliers, geometry = len(pairs), pycolmap.TwoViewGeometryConfiguration(int(g.config)).name
                if inliers >= settings.min_pair_inliers:
                    focal, rotation = rotation_only_matches(
                        keypoints[a][pairs[:, 0]], keypoints[b][pairs[:, 1]], (va.width, va.height),
                        (vb.width, vb.height), settings.verification_max_error_px)
            stats.append(PairStat(va.name, vb.name, matches, inliers, geometry, rotation,
                                  None if focal is None else round(focal, 1)))
    finally:
        db.close()
    return stats, ids


def rotation_only_matches(x1: np.ndarray, x2: np.ndarray, size1: tuple[int, int], size2: tuple[int, int],
                          max_error_px: float) -> tuple[float, int]:
    """How well a pure camera rotation explains matched pixels x1 [P, 2] -> x2 [P, 2]
    (pixel centres at +0.5): the best x2 ~ K2 R K1^-1 x1 over the rotation R and one
    focal f shared by K1 and K2 (principal points at the image centres). Returns (f,
    number of matches within ``max_error_px``). The focal is searched on a grid (the
    rotation of each by Kabsch on the rays) and refined with R by robust least squares."""
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    c1, c2 = np.array(size1, dtype=np.float64) / 2, np.array(size2, dtype=np.float64) / 2

    def residuals(p: np.ndarray) -> np.ndarray:
        f = np.exp(p[0])
        rays = np.c_[(x1 - c1) / f, np.ones(len(x1))] @ Rotation.from_rotvec(p[1:]).as_matrix().T  # [P, 3]
        with np.errstate(all="ignore"):
            r = np.linalg.norm(f * rays[:, :2] / rays[:, 2:3] + c2 - x2, axis=1)
        return np.nan_to_num(np.where(rays[:, 2] > 0, r, 1e3), nan=1e3, posinf=1e3)

    best = None
    for f in np.geomspace(0.3, 3.0, 25) * max(*size1, *size2):
        r1 = np.c_[(x1 - c1) / f, np.ones(len(x1))]
        r2 = np.c_[(x2 - c2) / f, np.ones(len(x2))]
        r1 /= np.linalg.norm(r1, axis=1, keepdims=True)
        r2 /= np.linalg.norm(r2, axis=1, keepdims=True)
        U, _, Vt = np.linalg.svd(r2.T @ r1)
        R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt  # R r1 ~ r2
        p = np.r_[np.log(f), Rotation.from_matrix(R).as_rotvec()]
        cost = float(np.minimum(residuals(p) ** 2, max_error_px ** 2).sum())
        if best is None or cost < best[0]:
            best = (cost, p)
    sol = least_squares(residuals, best[1], loss="soft_l1", f_scale=max_error_px / 4)
    return float(np.exp(sol.x[0])), int((residuals(sol.x) < max_error_px).sum())


def rotation_only_share(pairs: list[PairStat], settings: SfMSettings) -> float | None:
    """Share of the verified matches (pairs that count as neighbours) a pure rotation explains."""
    used = [p for p in pairs if p.inliers >= settings.min_pair_inliers]
    total = sum(p.inliers for p in used)
    return round(sum(p.rotation_only for p in used) / total, 3) if total else None


def _rotation_only_problem(views, pairs: list[PairStat], settings: SfMSettings) -> str | None:
    """Why the camera positions cannot be trusted (None = they can): a pure camera rotation
    explains more than ``max_rotation_only_share`` of all verified matches, so the parallax
    that fixes where the cameras stand is below the matching accuracy. Names each view
    whose own pairs exceed the share, with its verified matches per neighbour."""
    used = [p for p in pairs if p.inliers >= settings.min_pair_inliers]
    total = sum(p.inliers for p in used)
    if total == 0 or sum(p.rotation_only for p in used) <= settings.max_rotation_only_share * total:
        return None
    share = sum(p.rotation_only for p in used) / total
    focal = np.median([p.rotation_focal_px for p in used if p.rotation_focal_px is not None])
    parts = []
    for v in views:
        mine = [p for p in used if v.name in (p.first, p.second)]
        n = sum(p.inliers for p in mine)
        if n and sum(p.rotation_only for p in mine) > settings.max_rotation_only_share * n:
            parts.append(f"view {v.name} (" + ", ".join(
                f"{p.rotation_only} of {p.inliers} verified matches with {p.second if p.first == v.name else p.first}"
                for p in mine) + ")")
    return (f"structure-from-motion of the {len(views)} training views cannot fix where the cameras stand: a camera "
            f"rotation alone (no change of position, focal ~{focal:.0f} px) explains {100 * share:.0f}% of the verified "
            f"matches within {settings.verification_max_error_px:g} px, so the scene is too distant or flat for these "
            "viewpoints and a reconstruction would place the cameras wrongly (typically mirrored, depth-reversed). "
            "Matches a rotation explains: " + "; ".join(parts) + ". Add views taken from positions further apart "
            "(step sideways between shots), or use a learned pointmap model (--stereo-model PATH)")


def _map(db_path: Path, image_dir: Path, out: Path, settings: SfMSettings, init_ids):
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = 2
    options.multiple_models = False
    options.random_seed = settings.seed
    options.num_threads = settings.num_threads
    options.ba_refine_focal_length = settings.refine_focal
    options.mapper.abs_pose_refine_focal_length = settings.refine_focal
    options.mapper.init_min_num_inliers = settings.init_min_inliers
    options.mapper.init_min_tri_angle = settings.init_min_tri_angle_deg
    options.mapper.abs_pose_min_num_inliers = settings.abs_pose_min_inliers
    options.mapper.filter_min_tri_angle = settings.min_tri_angle_deg
    options.triangulation.min_angle = settings.min_tri_angle_deg
    options.triangulation.ignore_two_view_tracks = False  # with 3 views most tracks have length 2
    if init_ids is not None:
        options.init_image_id1, options.init_image_id2 = init_ids
    reconstructions = pycolmap.incremental_mapping(db_path, image_dir, out, options)
    return max(reconstructions.values(), key=lambda r: r.num_reg_images(), default=None)


def _neighbours(name: str, pairs: list[PairStat]) -> str:
    parts = []
    for p in pairs:
        if name in (p.first, p.second):
            other = p.second if p.first == name else p.first
            parts.append(f"{p.inliers} verified matches with {other}")
    return ", ".join(parts)


def _check(model, views, names, pairs: list[PairStat], settings: SfMSettings) -> list[str]:
    """Problems that make a model unusable ([] = accepted), one per offending view."""
    registered = {} if model is None else {im.name: im for im in model.images.values() if im.has_pose}
    problems = []
    for v, n in zip(views, names):
        image = registered.get(n)
        if image is None:
            problems.append(f"view {v.name} could not be registered ({_neighbours(v.name, pairs)}; "
                            f"a pair needs {settings.min_pair_inliers})")
            continue
        observed = int(image.num_points3D)
        if observed < settings.min_points_per_view:
            problems.append(f"view {v.name} observes only {observed} triangulated points (need "
                            f"{settings.min_points_per_view}; {_neighbours(v.name, pairs)})")
    if problems or model is None:
        return problems
    error = float(model.compute_mean_reprojection_error())
    if not error <= settings.max_mean_reprojection_px:
        problems.append(f"mean reprojection error {error:.2f} px > {settings.max_mean_reprojection_px} px")
    for cam in model.cameras.values():
        ratio = float(cam.focal_length) / max(cam.width, cam.height)
        if not settings.focal_range[0] <= ratio <= settings.focal_range[1]:
            problems.append(f"focal length drifted to {ratio:.2f} x the image size (accepted "
                            f"{settings.focal_range[0]}-{settings.focal_range[1]})")
    return problems


def _model(model, views, names, db_path: Path, route: str, attempts: list[str], pairs: list[PairStat],
           settings: SfMSettings) -> SfMModel:
    import pycolmap

    point_ids = sorted(model.points3D.keys())
    index = {pid: k for k, pid in enumerate(point_ids)}
    xyz = np.array([model.points3D[p].xyz for p in point_ids], dtype=np.float64).reshape(-1, 3)  # [M, 3]
    rgb = np.array([model.points3D[p].color for p in point_ids], dtype=np.float64).reshape(-1, 3) / 255.0
    by_name = {im.name: im for im in model.images.values()}
    db = pycolmap.Database.open(db_path)
    out, per_view, descriptors, keypoint_points = [], [], [], []
    try:
        for v, n in zip(views, names):
            image = by_name[n]
            cam = image.camera
            T = _cam_from_world(image)
            K = np.asarray(cam.calibration_matrix(), dtype=np.float64)
            K[0] *= v.width / cam.width  # extraction may downscale
            K[1] *= v.height / cam.height
            camera = Camera(K=torch.from_numpy(K).float(), T_cam_world=torch.from_numpy(T).float(),
                            width=v.width, height=v.height)
            out.append(replace(v, camera=camera))
            descriptors.append(np.asarray(db.read_descriptors(image.image_id).data, dtype=np.uint8))
            kp_pts = np.full(len(image.points2D), -1, dtype=np.int64)
            errs = []
            for k, p2 in enumerate(image.points2D):
                if p2.has_point3D():
                    kp_pts[k] = index[p2.point3D_id]
                    proj = image.project_point(model.points3D[p2.point3D_id].xyz)
                    if proj is not None:
                        errs.append(float(np.linalg.norm(np.asarray(proj) - np.asarray(p2.xy))))
            keypoint_points.append(kp_pts)
            per_view.append({"name": v.name, "points": int((kp_pts >= 0).sum()),
                             "reprojection_px": round(float(np.mean(errs)), 3) if errs else None})
    finally:
        db.close()
    return SfMModel(views=tuple(out), points=torch.from_numpy(xyz).float(), colors=torch.from_numpy(rgb).float(),
                    route=route, attempts=attempts, pairs=pairs, per_view=per_view,
                    mean_reprojection_px=float(model.compute_mean_reprojection_error()), settings=settings,
                    descriptors=descriptors, keypoint_points=keypoint_points)
