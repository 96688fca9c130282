"""CoR-GS co-regularisation (Zhang et al., "CoR-GS: Sparse-View 3D Gaussian Splatting via
Co-Regularization", ECCV 2024): two Gaussian fields trained side by side from the same initial
Gaussians with different randomness (the partner's seed is the fit's + 1: view order, dropout,
binocular side, its densification's split samples). Where few views constrain the scene the two
fields fit the training images equally well but disagree, and their disagreement marks the
inaccurate parts. Two terms act on it:

* pseudo-view co-regularisation: at a camera between the training cameras both fields render, and
  ``coreg.weight * ((1 - λ) L1 + λ D-SSIM)`` of one render against the other (λ = ``coreg.ssim_weight``)
  joins both fields' objectives: one loss whose gradient flows into both renders (no detach);
* co-pruning: at refinement steps, Gaussians of each field whose nearest centre in the other field
  is farther than a threshold are removed (gsplat's ``ops.remove``, so Adam's moments and the
  densification statistics follow).

Shape: the fit's ``Trainer`` (field A, whose Gaussians are the fit's output, whose listeners see the
fit) holds a ``CoRegularisation`` as its ``coupling``; the partner is a second, silent ``Trainer``
(field B) that the coupling steps right after each step of A, in lockstep. A's step adds the
co-regularisation term, whose backward leaves B's share of the gradient on B's parameters; B's own
step then adds its photometric (etc.) gradient to it before B's optimisers step. So the joint
objective is L_A + L_B + L_coreg, minimised by both fields' optimisers.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from gsplat.strategy.ops import remove
from scipy.spatial import cKDTree
from torch import Tensor

from recon.optimise import losses
from recon.optimise.config import CoregConfig, FitConfig
from recon.optimise.pseudo_views import interpolated_camera
from recon.timing import stage

# Stream of the co-regularisation's pseudo cameras, apart from both fields' own generators.
_CAMERA_STREAM = 7919


def partner_config(cfg: FitConfig) -> FitConfig:
    """The partner field's configuration: the fit's with seed + 1 (other randomness, same settings)."""
    return replace(cfg, seed=cfg.seed + 1)


def co_prune_masks(means_a: Tensor, means_b: Tensor, camera_centres: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Boolean masks [Na], [Nb] of the Gaussians of each field whose nearest centre in the other field is
    farther than ``threshold`` x their distance to the nearest camera centre ([V, 3]).

    Why relative to the distance from the cameras, not to ``scene_scale`` or a statistic of the NN
    distances: the two fields disagree where the sparse views leave a Gaussian's depth ambiguous, and
    that ambiguity (and the spacing a pixel footprint gives the Gaussians) grows with the distance from
    the cameras. One world-space threshold either removes the far background's necessarily sparse,
    large Gaussians or keeps near floaters; scene_scale is the camera spread on a forward-facing scene
    (0.5 on LLFF fern), unrelated to the geometry's depth range (the same reason densify's
    prune_scale3d is off, recon/optimise/densify.py). A median of the cross-field distances is no
    scale either: both fields start from the same points, so early on most distances are ~0. The
    depth-relative test is scale-free: ``threshold`` 0.05 is "the other field has no Gaussian within
    5 % of this one's depth"."""
    a = means_a.detach().double().cpu().numpy()
    b = means_b.detach().double().cpu().numpy()
    cams = camera_centres.detach().double().cpu().numpy()
    if len(a) == 0 or len(b) == 0:
        return torch.zeros(len(a), dtype=torch.bool), torch.zeros(len(b), dtype=torch.bool)
    cam_tree = cKDTree(cams)
    d_ab = cKDTree(b).query(a, k=1)[0]  # [Na]: nearest centre of B for each Gaussian of A
    d_ba = cKDTree(a).query(b, k=1)[0]  # [Nb]
    z_a, z_b = cam_tree.query(a, k=1)[0], cam_tree.query(b, k=1)[0]
    far_a = torch.from_numpy(np.asarray(d_ab > threshold * z_a))
    far_b = torch.from_numpy(np.asarray(d_ba > threshold * z_b))
    return far_a.to(means_a.device), far_b.to(means_b.device)


class CoRegularisation:
    """The coupling of a ``Trainer`` (field A) with its partner ``Trainer`` (field B); see the module
    docstring. A's ``Trainer.step`` calls ``loss``, A's ``Trainer.run`` calls ``after_step``."""

    def __init__(self, cfg: CoregConfig, partner, seed: int):
        self.cfg, self.partner = cfg, partner
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + _CAMERA_STREAM)
        self.loss_steps = 0
        self.prune_steps = 0
        self.pruned = {"field": 0, "partner": 0}
        self._partner_record: dict = {}

    def loss(self, trainer, it: int, sh: int, factor: float) -> Tensor | None:
        """The co-regularisation term of step ``it`` (None on steps without one): both fields rendered at
        one pseudo camera (``pseudo.jitter``, at 1/``coreg.downscale`` of this step's training size)."""
        c = self.cfg
        if not (it >= c.start and it % c.every == 0):
            return None
        data = trainer.data
        size = trainer.pyramid.level(factor * c.downscale)[0]
        cam = interpolated_camera(data.cameras, self.generator, trainer.cfg.pseudo.jitter * data.scene_scale, size)
        settings = trainer.render_settings(sh)
        with stage("render_forward"):
            a = trainer.render_fn(trainer.gaussians(), [cam], settings).rgb.squeeze(0)  # [H, W, 3]
            b = self.partner.render_fn(self.partner.gaussians(), [cam], settings).rgb.squeeze(0)
        self.loss_steps += 1
        return c.weight * losses.mutual_photometric(a, b, c.ssim_weight)

    def after_step(self, trainer, it: int) -> None:
        """After A's step ``it``: the partner's step ``it`` (its parameters already hold the
        co-regularisation gradient of A's backward), then co-pruning when due."""
        self._partner_record = self.partner.step(it)
        self.partner.iteration = it
        d = trainer.cfg.densify  # the refinement window as gsplat's strategy clips it (densify.make_strategy)
        window = d.refine_start <= it < min(d.refine_stop, trainer.cfg.optim.iterations)
        if self.cfg.prune and window and it % self.cfg.prune_every == 0:
            with stage("densify"):
                self.co_prune(trainer)

    @torch.no_grad()
    def co_prune(self, trainer) -> tuple[int, int]:
        """Removes the Gaussians of each field that have no Gaussian of the other near them
        (``co_prune_masks``); -> how many of A's and of B's. A field is never emptied."""
        centres = torch.stack([c.centre for c in trainer.data.cameras]).to(trainer.params["means"])
        far_a, far_b = co_prune_masks(
            trainer.params["means"], self.partner.params["means"], centres, self.cfg.prune_threshold
        )
        counts = []
        for t, mask in ((trainer, far_a), (self.partner, far_b)):
            n = int(mask.sum())
            if 0 < n < len(mask):
                remove(t.params, t.optimizers, t.densifier.state, mask)
            counts.append(n if n < len(mask) else 0)
        self.prune_steps += 1
        self.pruned["field"] += counts[0]
        self.pruned["partner"] += counts[1]
        return counts[0], counts[1]

    def record(self) -> dict:
        """metrics.json's ``coreg``: what ran and what co-pruning removed."""
        c = self.cfg
        return {
            "enabled": True,
            "weight": c.weight,
            "ssim_weight": c.ssim_weight,
            "start": c.start,
            "every": c.every,
            "downscale": c.downscale,
            "loss_steps": self.loss_steps,
            "prune": c.prune,
            "prune_every": c.prune_every,
            "prune_threshold": c.prune_threshold,
            "prune_steps": self.prune_steps,
            "pruned": dict(self.pruned),
            "partner_seed": self.partner.cfg.seed,
            "partner_num_gaussians": len(self.partner.params["means"]),
            "partner_train_psnr": self._partner_record.get("psnr"),
        }
