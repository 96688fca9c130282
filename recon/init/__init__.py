"""Initial Gaussians: from stereo priors (multi-view stereo, the default), from SIFT points
triangulated with the known poses, or random (the baseline).

``initialise(views, method)`` is the one entry the pipeline needs: it returns the Gaussians
and, when multi-view stereo ran, its per-view depth maps for the depth loss.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.errors import ConfigError
from recon.geometry import viewed_ball
from recon.init.points import gaussians_from_points
from recon.init.random import random_gaussians
from recon.timing import stage
from recon.types import Gaussians, View

METHODS = ("mvs", "sift", "random")
_ALIASES = {"stereo": "mvs"}

__all__ = ["METHODS", "InitResult", "gaussians_from_points", "initialise", "random_gaussians", "scene_ball"]


@dataclass
class InitResult:
    gaussians: Gaussians
    method: str  # the method that produced the Gaussians ("random" after a fallback)
    points: Tensor | None  # [M, 3] prior points the Gaussians came from (None for random)
    depths: list[Tensor] | None  # per view [H, W] MVS z-depth, 0 = invalid (None: MVS not run)
    confidences: list[Tensor] | None  # per view [H, W] in [0, 1]
    requested: str = ""  # the method asked for (alias resolved)
    fallback_reason: str | None = None  # why ``method`` differs from ``requested``
    filled_points: int | None = None  # Gaussians seeded where stereo found no depth (init.fill_stride; else None)

    def record(self) -> dict:
        """What metrics.json says about the initialisation that actually ran."""
        return {"requested": self.requested, "used": self.method, "fallback_reason": self.fallback_reason,
                "num_points": None if self.points is None else int(self.points.shape[0]),
                "filled_points": self.filled_points}


def scene_ball(views: list[View] | tuple[View, ...]) -> tuple[Tensor, float]:
    """(centre [3], radius) of the region the cameras look at (see geometry.viewed_ball)."""
    return viewed_ball([v.camera for v in views])


def initialise(
    views: list[View] | tuple[View, ...],
    method: str = "mvs",
    *,
    sh_degree: int = 3,
    opacity: float = 0.1,
    random_points: int = 20_000,
    with_depths: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
    fill_stride: int = 0,
    fill_max_gap: int = 0,
    scale_factor: float = 1.0,
    **stereo_options,
) -> InitResult:
    """Posed training views -> InitResult. ``method``: "mvs" (alias "stereo"), "sift" or
    "random". ``with_depths`` runs MVS for its depth maps even when another method seeds
    the Gaussians (depth loss with a random-init ablation). ``stereo_options`` are
    ``recon.priors.stereo.StereoSettings`` fields (e.g. ``max_points``, ``seed``). ``fill_stride``
    > 0 (MVS only) also seeds Gaussians where stereo found no depth (``recon.init.fill``; only
    within ``fill_max_gap`` pixels of a stereo pixel when > 0); the
    result's ``points`` stay the stereo's. ``scale_factor`` multiplies the initial 3-NN
    scale of Gaussians seeded from points (mvs, sift; not random): stereo points a pixel
    apart start as ~1-px splats that leave the views full of holes (``init.scale_factor``)."""
    method = _ALIASES.get(method, method)
    if method not in METHODS:
        raise ConfigError(f"init.method must be one of {', '.join(METHODS)} (or 'stereo'), got {method!r}")
    views = tuple(views)
    centre, radius = scene_ball(views)
    if not (scale_factor > 0 and math.isfinite(scale_factor)):
        raise ConfigError(f"init.scale_factor must be positive and finite, got {scale_factor}")
    fallback = dict(fallback_n=random_points, fallback_centre=centre, fallback_radius=radius, generator=generator)
    depths = confs = None
    if (method == "mvs" or with_depths) and len(views) >= 2:
        from recon.priors.stereo import multiview_stereo

        with stage("stereo"):
            res = multiview_stereo(views, progress=progress, **stereo_options)
        depths, confs = res.depths, res.confidences
        if method == "mvs":
            if fill_stride <= 0:
                return _from_points(res.points, res.colors, sh_degree, opacity, scale_factor, fallback, "mvs", depths,
                                    confs)
            from recon.init.fill import hole_points

            fill_pts, fill_cols = hole_points(views, depths, fill_stride, fill_max_gap)
            out = _from_points(torch.cat([res.points, fill_pts]), torch.cat([res.colors, fill_cols]), sh_degree,
                               opacity, scale_factor, fallback, "mvs", depths, confs)
            if out.fallback_reason is None:
                out.points, out.filled_points = res.points, int(fill_pts.shape[0])
            return out
    if method == "mvs":  # a single view: nothing to match
        reason = "multi-view stereo needs at least two views"
        warnings.warn(f"{reason}; using random init", RuntimeWarning, stacklevel=2)
        g = random_gaussians(random_points, centre, radius, sh_degree, generator, opacity=opacity)
        return InitResult(g, "random", None, depths, confs, requested="mvs", fallback_reason=reason)
    if method == "sift":
        from recon.priors.sfm import triangulate_sift

        with stage("stereo"):
            pts, cols = triangulate_sift(views)  # [M, 3], [M, 3]
        return _from_points(pts, cols, sh_degree, opacity, scale_factor, fallback, "sift", depths, confs)
    g = random_gaussians(random_points, centre, radius, sh_degree, generator, opacity=opacity)
    return InitResult(g, "random", None, depths, confs, requested="random")


def _from_points(pts, cols, sh_degree, opacity, scale_factor, fallback, method, depths, confs) -> InitResult:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = gaussians_from_points(pts, cols, sh_degree, opacity=opacity, scale_factor=scale_factor, **fallback)
    reasons = [str(w.message) for w in caught
               if issubclass(w.category, RuntimeWarning) and "falling back" in str(w.message)]
    for w in caught:  # re-emit so callers still see them
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if reasons:
        return InitResult(g, "random", None, depths, confs, requested=method, fallback_reason=reasons[0])
    return InitResult(g, method, pts, depths, confs, requested=method)
