"""Lens undistortion on load (OpenCV), for formats that carry distortion coefficients
(nerfstudio / instant-ngp ``k1 k2 p1 p2 [k3]``, COLMAP ``SIMPLE_RADIAL``/``RADIAL``/``OPENCV``).

The rasteriser draws pinhole cameras, so a distorted photograph would be fitted and scored
against renders of a different projection. Each image is resampled once onto the pinhole
camera with the same size whose field of view holds only valid pixels (no black borders:
``getOptimalNewCameraMatrix`` with alpha 0); masks and depth follow with nearest sampling
and the view's camera becomes that pinhole camera (``distortion=None``).

OpenCV puts pixel centres at integer coordinates, recon (and COLMAP) at +0.5: K is shifted
by half a pixel into OpenCV's convention and back.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from recon.types import View


def undistort_view(view: View, coefficients, maps: dict | None = None) -> View:
    """``view`` resampled to the pinhole camera of the same size. ``coefficients``: OpenCV
    order (k1, k2, p1, p2[, k3]); all zero returns the view unchanged (as a pinhole view).
    ``maps`` caches the remap tables between views that share a camera."""
    import cv2

    dist = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if not np.any(dist != 0):
        return replace(view, camera=replace(view.camera, distortion=None))
    w, h = view.width, view.height
    K = view.camera.K.double().numpy()
    key = (w, h, tuple(np.round(K.ravel(), 6)), tuple(dist))
    if maps is not None and key in maps:
        new_K, map_x, map_y = maps[key]
    else:
        K_cv = K.copy()
        K_cv[:2, 2] -= 0.5  # recon (pixel centre +0.5) -> OpenCV (integer centres)
        new_K_cv, _ = cv2.getOptimalNewCameraMatrix(K_cv, dist, (w, h), 0.0, (w, h))
        map_x, map_y = cv2.initUndistortRectifyMap(K_cv, dist, None, new_K_cv, (w, h), cv2.CV_32FC1)
        new_K = new_K_cv.copy()
        new_K[:2, 2] += 0.5
        if maps is not None:
            maps[key] = (new_K, map_x, map_y)
    image = cv2.remap(view.image.numpy(), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = depth = None
    if view.mask is not None:
        m = cv2.remap(view.mask.numpy().astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST)
        mask = torch.from_numpy(m > 0)
    if view.depth is not None:
        depth = torch.from_numpy(cv2.remap(view.depth.numpy(), map_x, map_y, cv2.INTER_NEAREST))
    camera = replace(view.camera, K=torch.as_tensor(new_K, dtype=torch.float32), distortion=None)
    return replace(view, image=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)), camera=camera,
                   mask=mask, depth=depth)


def distort_view(view: View, coefficients) -> View:
    """The inverse, for tests and for writing synthetic captures: a pinhole ``view``
    resampled as the camera with these coefficients (same K) would have photographed it.
    The returned camera carries the first four coefficients as ``distortion``."""
    import cv2

    dist = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    w, h = view.width, view.height
    K_cv = view.camera.K.double().numpy().copy()
    K_cv[:2, 2] -= 0.5
    # Where each distorted pixel's ray lands in the pinhole image: undistort its coordinates.
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = np.stack([jj.ravel(), ii.ravel()], -1)[:, None, :]  # [HW, 1, 2]
    und = cv2.undistortPoints(pts, K_cv, dist, P=K_cv).reshape(h, w, 2).astype(np.float32)
    image = cv2.remap(view.image.numpy(), und[..., 0], und[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = depth = None
    if view.mask is not None:
        m = cv2.remap(view.mask.numpy().astype(np.uint8), und[..., 0], und[..., 1], cv2.INTER_NEAREST)
        mask = torch.from_numpy(m > 0)
    if view.depth is not None:
        depth = torch.from_numpy(cv2.remap(view.depth.numpy(), und[..., 0], und[..., 1], cv2.INTER_NEAREST))
    camera = replace(view.camera, distortion=torch.as_tensor(dist[:4], dtype=torch.float32))
    return replace(view, image=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)), camera=camera,
                   mask=mask, depth=depth)
