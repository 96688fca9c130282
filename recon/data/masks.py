"""Object masks stored beside a scene's images, for loaders that do not read them (the
SpaRe layout keeps them in ``mask/``): read by `recon eval` and the SpaRe runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def read_mask(scene_dir: Path, view_name: str, index: int | None = None) -> torch.Tensor | None:
    """Object mask of a view when the scene folder has one: ``mask/<image stem>.png`` or
    ``mask/<index:03d>.png`` (the IDR/NeuS DTU convention), thresholded at 128."""
    import imageio.v3 as iio

    candidates = [scene_dir / d / f"{view_name}.png" for d in ("mask", "masks")]
    if index is not None:
        candidates += [scene_dir / d / f"{index:03d}.png" for d in ("mask", "masks")]
    for path in candidates:
        if path.is_file():
            arr = np.asarray(iio.imread(path))
            arr = arr[..., 0] if arr.ndim == 3 else arr
            return torch.from_numpy(arr >= 128)
    return None
