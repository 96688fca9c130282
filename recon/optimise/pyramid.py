"""The training images (and depth priors) at the coarser resolutions of the
coarse-to-fine schedule (``optim.resolution_schedule``), built once per level."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

DepthPrior = tuple[Tensor, str]  # (values [H, W], 0 = unknown; kind: "depth" or "disparity")


class ImagePyramid:
    def __init__(self, images: list[Tensor], depth_priors: list[DepthPrior | None], width: int, height: int,
                 masks: list[Tensor | None] | None = None):
        self.images = images  # each [H, W, 3]
        self.depth_priors = depth_priors
        self.masks = masks or [None] * len(images)  # each [H, W] bool (True = object) or None
        self.width, self.height = width, height
        self._levels: dict[float, tuple] = {}  # factor -> (size, images, depth priors)
        self._masks: dict[float, list[Tensor | None]] = {}

    def level(self, factor: float) -> tuple[tuple[int, int], list[Tensor], list[DepthPrior | None]]:
        """((width, height), images [H', W', 3], depth priors [H', W']) at 1/factor resolution."""
        if factor not in self._levels:
            size = (max(8, round(self.width / factor)), max(8, round(self.height / factor)))
            if factor == 1.0:
                self._levels[factor] = (size, self.images, self.depth_priors)
            else:
                images = [F.interpolate(im.permute(2, 0, 1)[None], size=size[::-1], mode="area")[0].permute(1, 2, 0)
                          for im in self.images]
                # nearest keeps 0 = unknown intact (no blending of depth with holes)
                priors = [None if p is None else
                          (F.interpolate(p[0][None, None], size=size[::-1], mode="nearest")[0, 0], p[1])
                          for p in self.depth_priors]
                self._levels[factor] = (size, images, priors)
        return self._levels[factor]

    def level_masks(self, factor: float) -> list[Tensor | None]:
        """Masks [H', W'] bool at 1/factor resolution (nearest: a pixel stays object or not)."""
        if factor not in self._masks:
            (w, h), _, _ = self.level(factor)
            self._masks[factor] = [m if m is None or tuple(m.shape) == (h, w) else
                                   F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
                                   for m in self.masks]
        return self._masks[factor]
