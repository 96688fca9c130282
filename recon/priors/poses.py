"""Poses for a fit whose scene has none, without letting test pixels shape the model.

``recover_split_poses(scene, split)``:
1. training poses from the training views alone: structure from motion
   (``recon.priors.sfm.reconstruct``) or, with a pointmap model, global alignment of its
   pointmaps (``recon.priors.pointmap``);
2. the scene is normalised from the recovered *training* cameras only;
3. test poses without leakage: registered against the frozen training reconstruction
   (SIFT 2D-3D matches + PnP for SfM; a pointmap pair with a training view + PnP for
   pointmaps), or, when a posed reference of the same views is given, its ground-truth
   test poses mapped into the reconstruction through the similarity that aligns its
   training cameras to the recovered ones. Test views that cannot be registered leave
   the test set, by name, in the record.

Training outputs (poses, normalisation, points) are computed before any test image is
read, so changing a test image cannot change them (tests/test_unposed.py checks this).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from recon.errors import ReconError
from recon.geometry import camera_similarity, map_camera, rotation_angle_deg
from recon.types import Camera, Normalisation, Scene, Split, View

TEST_POSES_DATASET = "dataset (posed)"
TEST_POSES_REGISTERED = "registered to training SfM (PnP)"
TEST_POSES_POINTMAP = "registered to training pointmaps (pointmap pair + PnP)"
TEST_POSES_GT_ALIGNED = "GT aligned via training cameras"


@dataclass
class RecoveredPoses:
    scene: Scene  # every view of the split posed and normalised (train: recovered, test: see record)
    split: Split  # the input split minus test views that could not be registered
    normalisation: Normalisation  # from the recovered training cameras only
    points: Tensor  # [M, 3] training reconstruction points, normalised frame
    colors: Tensor  # [M, 3] in [0, 1]
    record: dict  # for metrics.json["protocol"]["poses"]

    @property
    def test_poses(self) -> str:
        return self.record["test_poses"]


def recover_split_poses(
    scene: Scene,
    split: Split,
    *,
    seed: int = 0,
    num_threads: int = 1,
    pointmap_model=None,
    reference: Scene | None = None,
    max_points: int | None = None,
) -> RecoveredPoses:
    """Poses for ``split`` of an unposed ``scene`` (see the module docstring).
    ``pointmap_model``: a ``recon.priors.pointmap.PointmapModel`` (else SfM).
    ``reference``: a posed scene with the same view names; its test poses are used,
    aligned through the training cameras, instead of registration. ``max_points``: keep
    a seeded random subset of the reconstruction's points (a pointmap cloud has one per
    pixel)."""
    from recon.data.common import apply_normalisation, camera_normalisation

    train = list(scene.subset(split.train))
    if pointmap_model is not None:
        from recon.priors.pointmap import PointmapReconstruction

        reconstruction = PointmapReconstruction.from_views(pointmap_model, train)
    else:
        from recon.priors.sfm import reconstruct

        reconstruction = reconstruct(train, seed=seed, num_threads=num_threads)
    train_posed = list(reconstruction.views)
    norm = camera_normalisation(train_posed)  # training cameras only: test views must not shape the frame
    # ---- nothing above this line has read a test image ----
    test = list(scene.subset(split.test))
    details: list[dict] = []
    if reference is not None:
        test_posed, failed, how = _reference_test_poses(reference, train_posed, test), [], TEST_POSES_GT_ALIGNED
    else:
        if pointmap_model is not None:
            test_posed, details = reconstruction.register(test)
        else:
            from recon.priors.registration import register

            test_posed, details = register(reconstruction, test)
        failed = [d for d in details if not d["ok"]]
        how = TEST_POSES_POINTMAP if pointmap_model is not None else TEST_POSES_REGISTERED
    views = list(scene.views)
    for i, v in zip(split.train, train_posed):
        views[i] = apply_normalisation(v, norm)
    kept = []
    for i, v in zip(split.test, test_posed):
        if v is not None:
            views[i] = apply_normalisation(v, norm)
            kept.append(i)
    new_split = split
    if failed:
        names = ", ".join(f["name"] for f in failed)
        new_split = replace(split, test=tuple(kept),
                            description=f"{split.description}; test views not registered, left out: {names}")
    record = {"train_poses": reconstruction.record(), "test_poses": how, "normalisation": "from the recovered training cameras",
              "test_registration": details, "test_unregistered": [f["name"] for f in failed]}
    pts, cols = norm.to_normalised(reconstruction.points.double()).float(), reconstruction.colors
    if max_points is not None and len(pts) > max_points:
        keep = torch.randperm(len(pts), generator=torch.Generator().manual_seed(seed))[:max_points]
        pts, cols = pts[keep], cols[keep]
    return RecoveredPoses(replace(scene, views=tuple(views), normalisation=norm), new_split, norm, pts, cols, record)


def _reference_test_poses(reference: Scene, train_posed: list[View], test: list[View]) -> list[View]:
    by_name = {v.name: v for v in reference.views}
    missing = [v.name for v in [*train_posed, *test] if v.name not in by_name]
    if missing:
        raise ReconError(f"pose reference: views {missing[:4]} are not in the reference scene; pass the same scene "
                         "with its poses")
    gt_train = [by_name[v.name].camera for v in train_posed]
    s, R, t = camera_similarity(gt_train, [v.camera for v in train_posed])  # reference frame -> recovered
    out = []
    for v in test:
        ref = by_name[v.name].camera.scaled(v.width, v.height)
        K = train_posed[0].camera.scaled(v.width, v.height).K  # the recovered (shared) intrinsics
        out.append(replace(v, camera=replace(map_camera(ref, s, R, t), K=K.clone())))
    return out


def follow_refined_training(test: list[Camera], initial_train: list[Camera], refined_train: list[Camera]
                            ) -> tuple[list[Camera], dict]:
    """Test cameras registered against the initial training model -> the same cameras in
    the frame of the jointly refined training cameras (the similarity that best maps the
    initial training cameras onto the refined ones; no test image is used). Returns the
    cameras and a record of the similarity (scale, rotation in degrees, translation)."""
    s, R, t = camera_similarity(initial_train, refined_train)
    record = {"scale": s, "rotation_deg": rotation_angle_deg(R), "translation": [float(x) for x in t]}
    return [map_camera(c, s, R, t) for c in test], record
