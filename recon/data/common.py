"""Helpers every loader shares: listing and reading images with actionable errors, pose
checks, resizing (with the matching intrinsics) and the scene normalisation.

Loaders build views in the format's own world frame, then call :func:`finish_scene`, which
resizes (``downscale=`` factor or ``width=`` target width) and normalises (recorded in
``Scene.normalisation``; ``normalise=False`` keeps the original frame).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from recon.errors import SceneError
from recon.geometry import axes_meeting_point, is_rotation
from recon.types import Camera, Normalisation, Scene, Split, View

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Above this many images a progress bar is shown (recon.progress: drawn only on a terminal).
PROGRESS_MIN_IMAGES = 16


def require_dir(path: Path, what: str = "scene folder") -> Path:
    path = Path(path)
    if not path.exists():
        raise SceneError(f"{what} {path} does not exist; check the path")
    if not path.is_dir():
        raise SceneError(f"{what} {path} is not a folder; pass the folder that holds the scene")
    return path


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` sorted by name; SceneError when there are none."""
    folder = require_dir(folder, "image folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise SceneError(
            f"no images ({', '.join(IMAGE_EXTS)}) in {folder}; put the photographs there or pass another folder"
        )
    return paths


def read_image(path: Path, keep_alpha: bool = False, exif_orientation: bool = False) -> np.ndarray:
    """[H, W, 3] (or [H, W, 4] with ``keep_alpha``) float32 in [0, 1]. ``exif_orientation``:
    turn the pixels upright as the EXIF Orientation tag says (what a photo viewer shows). Only
    for photos without poses: a pose file was computed on the pixels as stored."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now so a truncated file fails here, with its name
            if exif_orientation:
                im = ImageOps.exif_transpose(im)
            mode = "RGBA" if keep_alpha else "RGB"  # PIL adds an opaque alpha when none
            if im.mode in ("I;16", "I;16B", "I"):  # 16-bit greyscale: keep the precision
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise SceneError(f"image {path} does not exist; check the file name in the pose file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SceneError(f"cannot read image {path} ({exc}); the file is corrupt or truncated: replace or remove it") from None
    if keep_alpha and arr.shape[-1] == 3:  # 16-bit greyscale has no alpha
        arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=-1)
    return arr


def read_gray(path: Path) -> np.ndarray:
    """[H, W] float32 in [0, 1] (first channel of colour files) for masks."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise SceneError(f"mask {path} does not exist; every image needs its mask or none may have one") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SceneError(f"cannot read mask {path} ({exc}); replace or remove it") from None
    return arr


def read_many(paths: list[Path], reader=read_image, desc: str = "reading images") -> list[np.ndarray]:
    """Read files in parallel threads (decoders release the GIL) with a progress bar
    for long lists on a terminal."""
    from recon.progress import track

    workers = min(8, os.cpu_count() or 1, max(1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(reader, paths)
        return list(track(it, desc, total=len(paths), enabled=len(paths) >= PROGRESS_MIN_IMAGES))


def check_same_size(arrays: list[np.ndarray], paths: list[Path]) -> tuple[int, int]:
    """All images of one scene must share a resolution; returns (width, height)."""
    h0, w0 = arrays[0].shape[:2]
    for arr, path in zip(arrays, paths):
        if arr.shape[:2] != (h0, w0):
            raise SceneError(
                f"mixed resolutions: {path.name} is {arr.shape[1]}x{arr.shape[0]} but {paths[0].name} is "
                f"{w0}x{h0}; resize all images of the scene to one size"
            )
    return w0, h0


def check_pose(T_cam_world: np.ndarray, where: str) -> None:
    """SceneError unless T is a finite rigid transform with a proper rotation."""
    T = np.asarray(T_cam_world, dtype=np.float64)
    if not np.isfinite(T).all():
        raise SceneError(f"{where}: pose contains NaN or inf; fix or remove this camera")
    if not is_rotation(torch.from_numpy(T[:3, :3]), atol=1e-3):
        raise SceneError(
            f"{where}: pose rotation is not a rotation matrix (det={np.linalg.det(T[:3, :3]):.4f}); "
            "fix the pose (orthonormal, det +1) or remove this camera"
        )


def make_camera(K: np.ndarray, T_cam_world: np.ndarray, width: int, height: int, distortion=None) -> Camera:
    dist = None
    if distortion is not None and np.any(np.asarray(distortion) != 0):
        dist = torch.as_tensor(np.asarray(distortion, dtype=np.float32))
    return Camera(
        K=torch.as_tensor(np.asarray(K, dtype=np.float32)),
        T_cam_world=torch.as_tensor(np.asarray(T_cam_world, dtype=np.float32)),
        width=int(width),
        height=int(height),
        distortion=dist,
    )


def c2w_opengl_to_w2c_opencv(c2w: np.ndarray) -> np.ndarray:
    """[4, 4] (or [3, 4]) camera-to-world with OpenGL axes -> [4, 4] world-to-camera, OpenCV axes."""
    T = np.eye(4)
    T[:3, :4] = np.asarray(c2w, dtype=np.float64)[:3, :4]
    T[:3, 1:3] *= -1.0  # flip camera y and z
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def w2c_opencv_to_c2w_opengl(T_cam_world: np.ndarray) -> np.ndarray:
    """Inverse of :func:`c2w_opengl_to_w2c_opencv`: [4, 4] -> [4, 4]."""
    T = np.asarray(T_cam_world, dtype=np.float64)
    c2w = np.eye(4)
    c2w[:3, :3] = T[:3, :3].T
    c2w[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    c2w[:3, 1:3] *= -1.0
    return c2w


# ---------------------------------------------------------------- resizing


def target_size(width: int, height: int, downscale: float = 1.0, target_width: int | None = None) -> tuple[int, int]:
    """New (width, height) from a factor or a target width, keeping the aspect ratio."""
    if target_width is not None:
        if target_width <= 0:
            raise SceneError(f"width={target_width} must be positive")
        return int(target_width), max(1, int(round(height * target_width / width)))
    if downscale <= 0:
        raise SceneError(f"downscale={downscale} must be positive")
    return max(1, int(round(width / downscale))), max(1, int(round(height / downscale)))


def resize_view(view: View, width: int, height: int) -> View:
    """The view at (width, height): area resampling for colour, nearest for depth,
    majority for masks; K is rescaled by Camera.scaled."""
    import cv2

    if (width, height) == (view.width, view.height):
        return view
    shrink = width < view.width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    image = cv2.resize(view.image.numpy(), (width, height), interpolation=interp)
    mask = depth = None
    if view.mask is not None:
        m = cv2.resize(view.mask.numpy().astype(np.float32), (width, height), interpolation=interp)
        mask = torch.from_numpy(m > 0.5)
    if view.depth is not None:
        d = cv2.resize(view.depth.numpy(), (width, height), interpolation=cv2.INTER_NEAREST)
        depth = torch.from_numpy(d)
    return replace(
        view,
        image=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)),
        camera=view.camera.scaled(width, height),
        mask=mask,
        depth=depth,
    )


# ---------------------------------------------------------------- normalisation


def camera_normalisation(views: tuple[View, ...] | list[View]) -> Normalisation:
    """Centre at the point the cameras look at (inward-facing captures) or else the mean
    camera centre (forward-facing); scale so the camera centres fit in a unit sphere
    around it (10% margin). Computed from every view (not the split) so it never depends
    on which views are held out. One camera (or coincident ones) keeps scale 1."""
    centres = torch.stack([v.camera.centre.double() for v in views])  # [N, 3]
    axes = torch.stack([v.camera.T_cam_world[2, :3].double() for v in views])  # [N, 3] forward
    # where inward-facing cameras look; None for forward-facing ones
    focus = axes_meeting_point(centres, axes) if len(views) >= 3 else None
    centre = focus if focus is not None else centres.mean(0)
    radius = float((centres - centre).norm(dim=-1).max()) * 1.1
    scale = 1.0 / radius if radius > 1e-9 else 1.0
    return Normalisation(centre=tuple(float(c) for c in centre), scale=scale)


def apply_normalisation(view: View, norm: Normalisation) -> View:
    """x_n = (x_world - c) * s. A camera with T = [R | t] becomes [R | s (R c + t)];
    z-depth scales by s."""
    T = view.camera.T_cam_world.double().clone()  # [4, 4]
    R, t = T[:3, :3], T[:3, 3]
    c = torch.tensor(norm.centre, dtype=torch.float64)
    T[:3, 3] = norm.scale * (R @ c + t)
    depth = None if view.depth is None else view.depth * float(norm.scale)
    return replace(view, camera=replace(view.camera, T_cam_world=T.float()), depth=depth)


def finish_scene(
    views: list[View],
    *,
    format: str,
    root: Path | None,
    normalise: bool | Normalisation = True,
    downscale: float = 1.0,
    width: int | None = None,
    split: Split | None = None,
    posed: bool = True,
    background: tuple[float, float, float] | None = None,
    meta: dict | None = None,
) -> Scene:
    """Resize, normalise and pack the views. ``normalise`` may be True (camera-based,
    or the format's own normalisation when it passes one), False, or a Normalisation."""
    if not views:
        raise SceneError(f"{root}: the scene has no views")
    meta = dict(meta or {})
    if downscale != 1.0 or width is not None:
        w, h = target_size(views[0].width, views[0].height, downscale, width)
        views = [resize_view(v, w, h) for v in views]
    norm = Normalisation()
    if isinstance(normalise, Normalisation):
        norm = normalise
    elif normalise and posed:
        norm = camera_normalisation(views)
    if norm != Normalisation():
        views = [apply_normalisation(v, norm) for v in views]
        if "bounds" in meta:  # near/far depth bounds scale like depth
            meta["bounds"] = [float(b) * norm.scale for b in meta["bounds"]]
        if "points" in meta:  # sparse points [M, 3] (COLMAP) move with the cameras
            meta["points"] = norm.to_normalised(meta["points"].double()).float()
        if "aabb" in meta:  # [[min xyz], [max xyz]] in world -> normalised frame
            c = norm.centre
            meta["aabb"] = [[(x - c[k]) * norm.scale for k, x in enumerate(corner)] for corner in meta["aabb"]]
    return Scene(
        views=tuple(views),
        format=format,
        root=root,
        normalisation=norm,
        split=split,
        posed=posed,
        background=background,
        meta=meta,
    )
