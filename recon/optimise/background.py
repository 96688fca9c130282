"""The colour a fit renders behind its Gaussians (``render.background``).

A photograph of a real scene has no background: every pixel is some surface. With a few
training views, a novel view also sees directions no training view saw (beyond the edges of
their frames: about 70% of the holes in LLFF flower's validation views at half resolution),
where no Gaussian can be placed from the data. There the render shows the background.
Black, the usual choice, is the colour furthest from most photographs; the mean colour of
the training images is the constant that minimises the expected squared error of an
unknown pixel of the scene, so ``"mean"`` turns the dark holes into neutral ones.

Modes:
* ``"scene"``: the loader's background (Blender: the colour its RGBA images were composited
  on), black when the scene has none. The default.
* ``"mean"``: the mean colour of the training images. Only for scenes without a background
  of their own: composited images (Blender) need exactly that colour, so asking for
  ``"mean"`` there is a ConfigError rather than a silent change of meaning.

The colour is fixed before the fit and goes into ``RenderSettings.background``, so the
training renders, the evaluation, ``recon eval`` and the viewer all composite on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recon.errors import ConfigError

MODES = ("scene", "mean")
_BLACK = (0.0, 0.0, 0.0)


def fit_background(mode: str, scene_background: Sequence[float] | None, images: Sequence[Tensor]) -> tuple[float, ...]:
    """The fit's background colour (r, g, b in [0, 1]) for ``render.background = mode``,
    from the scene's own background (None: it has none) and the training images [H, W, 3]."""
    if mode not in MODES:
        raise ConfigError(f"render.background must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "scene":
        return tuple(float(c) for c in scene_background) if scene_background is not None else _BLACK
    if scene_background is not None:
        raise ConfigError(
            f"render.background=mean is for photographs without a background; this scene's images were composited "
            f"on {tuple(round(float(c), 3) for c in scene_background)}, which the fit must render behind its "
            f"Gaussians: set render.background=scene")
    if not images:
        raise ConfigError("render.background=mean needs at least one training image")
    total = torch.zeros(3, dtype=torch.float64)
    count = 0
    for image in images:
        total += image.reshape(-1, 3).double().sum(0)
        count += image.shape[0] * image.shape[1]
    return tuple(float(c) for c in (total / count).clamp(0, 1))
