"""Write a Scene in a supported layout, in the scene's current frame, so every loader can be
tested on the synthetic scene and users can convert between formats.

Formats: ``llff``, ``blender``, ``nerfstudio``, ``colmap`` (text), ``colmap_bin``,
``dtu`` (IDR/NeuS ``cameras_sphere.npz``), ``spare`` (``pos_XXX.txt`` + ``rect_XXX_3_r5000.png``).
Images are written as 8-bit PNG. Formats that cannot express a camera (LLFF and Blender
need one shared focal and a centred principal point) raise SceneError.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from recon.errors import SceneError
from recon.types import Scene, View

from .common import w2c_opencv_to_c2w_opengl
from .llff import opencv_to_llff

WRITERS = ("llff", "blender", "nerfstudio", "colmap", "colmap_bin", "dtu", "spare")


def _png(path: Path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(image)
    Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)).save(path)


def _numpy(view: View):
    return view.camera.K.double().numpy(), view.camera.T_cam_world.double().numpy()


def _require_simple(scene: Scene, fmt: str) -> None:
    """LLFF/Blender store one focal per view and assume a centred principal point."""
    for v in scene.views:
        K, _ = _numpy(v)
        if abs(K[0, 0] - K[1, 1]) > 1e-3 * K[0, 0] or abs(K[0, 2] - v.width / 2) > 0.5 or abs(K[1, 2] - v.height / 2) > 0.5:
            raise SceneError(f"view {v.name}: {fmt} needs fx == fy and a centred principal point; write nerfstudio or colmap instead")
        if v.camera.distortion is not None:
            raise SceneError(f"view {v.name}: {fmt} cannot store lens distortion; write nerfstudio or colmap instead")


def _bounds(scene: Scene) -> tuple[float, float]:
    depths = [v.depth[v.depth > 0] for v in scene.views if v.depth is not None]
    if depths:
        d = np.concatenate([x.numpy() for x in depths])
        return float(d.min()) * 0.9, float(d.max()) * 1.1
    if "bounds" in scene.meta:
        return tuple(scene.meta["bounds"])  # type: ignore[return-value]
    return 0.1, 100.0


def write_llff(scene: Scene, folder: Path) -> None:
    _require_simple(scene, "llff")
    near, far = _bounds(scene)
    rows = []
    for v in scene.views:
        K, T = _numpy(v)
        pose = opencv_to_llff(T, (v.height, v.width, K[0, 0]))
        rows.append(np.concatenate([pose.ravel(), [near, far]]))
        _png(folder / "images" / f"{v.name}.png", v.image)
    np.save(folder / "poses_bounds.npy", np.stack(rows))


def write_blender(scene: Scene, folder: Path) -> None:
    """Sets from ``scene.split`` (else everything is train, and test repeats it); RGBA
    with the mask as alpha when views have masks."""
    _require_simple(scene, "blender")
    split = scene.split
    sets = {"train": split.train, "test": split.test} if split else {"train": range(len(scene)), "test": range(len(scene))}
    for name, indices in sets.items():
        frames = []
        for i in indices:
            v = scene.views[i]
            K, T = _numpy(v)
            image = v.image.numpy()
            if v.mask is not None:
                image = np.concatenate([image, v.mask.numpy()[..., None].astype(np.float32)], axis=-1)
            _png(folder / name / f"{v.name}.png", image)
            frames.append({"file_path": f"./{name}/{v.name}", "transform_matrix": w2c_opencv_to_c2w_opengl(T).tolist()})
        K0, _ = _numpy(scene.views[0])
        angle_x = 2 * math.atan(scene.views[0].width / (2 * K0[0, 0]))
        (folder / f"transforms_{name}.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}, indent=2))


def write_nerfstudio(scene: Scene, folder: Path) -> None:
    """Per-frame intrinsics; masks as PNG; depth as 16-bit PNG with a scale factor."""
    depths = [float(v.depth.max()) for v in scene.views if v.depth is not None]
    unit = max(depths) / 60000.0 if depths else 1e-3
    frames = []
    for v in scene.views:
        K, T = _numpy(v)
        frame = {
            "file_path": f"images/{v.name}.png", "transform_matrix": w2c_opencv_to_c2w_opengl(T).tolist(),
            "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": v.width, "h": v.height,
        }
        if v.camera.distortion is not None:
            frame.update(zip(("k1", "k2", "p1", "p2"), (float(x) for x in v.camera.distortion)))
        _png(folder / frame["file_path"], v.image)
        if v.mask is not None:
            frame["mask_path"] = f"masks/{v.name}.png"
            _png(folder / frame["mask_path"], v.mask.numpy().astype(np.float32))
        if v.depth is not None:
            frame["depth_file_path"] = f"depths/{v.name}.png"
            (folder / "depths").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(v.depth.numpy() / unit).astype(np.uint16)).save(folder / frame["depth_file_path"])
        frames.append(frame)
    doc = {"camera_model": "OPENCV", "depth_unit_scale_factor": unit, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(doc, indent=2))


def write_colmap(scene: Scene, folder: Path, binary: bool = False) -> None:
    """sparse/0 (one camera per view, plus ``meta["points"]`` when present) + images/."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    for k, v in enumerate(scene.views, start=1):
        K, T = _numpy(v)
        d = v.camera.distortion.double().numpy() if v.camera.distortion is not None else np.zeros(4)
        params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *d]
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV", width=v.width, height=v.height, params=params, camera_id=k))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{v.name}.png", camera_id=k, image_id=k), pycolmap.Rigid3d(T[:3]))
        _png(folder / "images" / f"{v.name}.png", v.image)
    if "points" in scene.meta:  # sparse points [M, 3] (+ colours in [0, 1]) without tracks
        points = scene.meta["points"].double().numpy()
        colors = scene.meta.get("point_colors")
        colors = np.zeros_like(points) if colors is None else colors.double().numpy()
        for xyz, rgb in zip(points, colors):
            rec.add_point3D(xyz, pycolmap.Track(), np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8))
    model = folder / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if binary else rec.write_text)(str(model))


def write_dtu(scene: Scene, folder: Path) -> None:
    """IDR/NeuS: image/%06d.png, mask/%03d.png, cameras_sphere.npz with world_mat_i = K [R | t]
    and scale_mat_i from the scene normalisation (world = scale_mat @ normalised)."""
    norm = scene.normalisation
    S = np.eye(4)
    S[:3, :3] /= norm.scale
    S[:3, 3] = norm.centre
    cams = {}
    for i, v in enumerate(scene.views):
        K, T = _numpy(v)
        P = np.eye(4)
        P[:3] = K @ T[:3]
        cams[f"world_mat_{i}"], cams[f"scale_mat_{i}"] = P, S
        _png(folder / "image" / f"{i:06d}.png", v.image)
        if v.mask is not None:
            _png(folder / "mask" / f"{i:03d}.png", v.mask.numpy().astype(np.float32))
    np.savez(folder / "cameras_sphere.npz", **cams)


def write_spare(scene: Scene, folder: Path, light: int = 3) -> None:
    """pos_XXX.txt (3x4 P) and rect_XXX_{light}_r5000.png, view i as camera i + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(scene.views):
        K, T = _numpy(v)
        np.savetxt(folder / f"pos_{i + 1:03d}.txt", K @ T[:3], fmt="%.10g")
        _png(folder / f"rect_{i + 1:03d}_{light}_r5000.png", v.image)


def write_scene(scene: Scene, folder: str | Path, format: str) -> Path:
    """Write ``scene`` into ``folder`` (created) as ``format``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if format == "llff":
        write_llff(scene, folder)
    elif format == "blender":
        write_blender(scene, folder)
    elif format == "nerfstudio":
        write_nerfstudio(scene, folder)
    elif format in ("colmap", "colmap_bin"):
        write_colmap(scene, folder, binary=format == "colmap_bin")
    elif format == "dtu":
        write_dtu(scene, folder)
    elif format == "spare":
        write_spare(scene, folder)
    else:
        raise SceneError(f"cannot write format {format!r}; use one of {', '.join(WRITERS)}")
    return folder
