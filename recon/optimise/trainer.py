"""The optimisation loop. It renders, computes losses, steps optimisers, densifies and
emits events (``recon.optimise.events``); it owns no files, sockets or UI. Checkpointing is
a callback the caller passes (``checkpoint_fn(state)``), called only with finite state.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.errors import ConfigError, ReconError
from recon.geometry import zbuffer_depth
from recon.optimise import losses, sparse_view
from recon.optimise.camera_refinement import CameraRefinement
from recon.optimise.config import FitConfig
from recon.optimise.densify import Densifier
from recon.optimise.events import FitControl, FitListener, FitStarted, StepEvent
from recon.optimise.exposure import ViewExposure
from recon.optimise.pseudo_views import interpolated_camera
from recon.optimise.pyramid import ImagePyramid
from recon.optimise.schedules import (
    diffusion_refresh_due,
    diffusion_weight,
    exp_decay,
    resolution_factor_at,
    sh_degree_at,
)
from recon.timing import end_iteration, stage, start
from recon.types import Camera, Gaussians, RenderSettings

# Names of the Gaussian parameters in gsplat's convention (its strategy edits them).
_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


class FitDivergedError(ReconError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


@dataclass
class TrainData:
    """What the trainer fits to. Depth priors are per training view ([H, W], 0 = unknown)."""

    cameras: list[Camera]
    images: list[Tensor]  # each [H, W, 3]
    names: list[str]
    masks: list[Tensor | None] = field(default_factory=list)  # each [H, W] bool (True = object); random_background
    depth_priors: list[tuple[Tensor, str] | None] = field(default_factory=list)  # (values, kind)
    prior_points: Tensor | None = None  # [M, 3] metric prior points, reprojected into pseudo views
    scene_scale: float = 1.0  # extent of the cameras/scene, scales lrs and thresholds
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class TrainResult:
    gaussians: Gaussians  # detached
    cameras: list[Camera]  # training cameras after pose (and focal) refinement
    history: list[dict]
    iteration: int
    seconds: float
    stopped: bool  # True when a FitControl stopped it early
    camera_refinement: dict | None = None  # CameraRefinement.record(): what was refined, initial/final focal
    exposure: dict | None = None  # ViewExposure.record(): each training view's gain and bias, None when off


class Trainer:
    def __init__(
        self,
        config: FitConfig,
        gaussians: Gaussians,
        data: TrainData,
        *,
        render_fn: Callable | None = None,
        listeners: Sequence[FitListener] = (),
        control: FitControl | None = None,
        checkpoint_fn: Callable[[dict], None] | None = None,
        refine_poses: bool = False,
        refine_focal: bool = False,  # one focal scale per intrinsics group (recon.optimise.camera_refinement)
        depth_model=None,  # recon.priors.depth.DepthPrior for pseudo views, or None
        refiner=None,  # recon.priors.diffusion.Img2ImgRefiner, or None
        run_dir: str = "",
    ):
        if render_fn is None:
            from recon.render import render as render_fn
        self.cfg, self.data, self.render_fn = config, data, render_fn
        self.listeners, self.control = list(listeners), control or FitControl()
        self.checkpoint_fn, self.depth_model, self.refiner = checkpoint_fn, depth_model, refiner
        self.run_dir = run_dir
        self.max_sh = gaussians.sh_degree
        self.generator = torch.Generator().manual_seed(config.seed)
        self.iteration, self.seconds, self.history = 0, 0.0, []
        self._last_psnr: float | None = None  # training PSNR of the latest logged step (see step())
        self.params = self._make_params(gaussians)
        self.optimizers = {k: self._adam(k) for k in self.params}
        V = len(data.cameras)
        self.camera_refinement = CameraRefinement(data.cameras, poses=refine_poses, focal=refine_focal,
                                                  pose_lr=config.pose.lr, focal_lr=config.pose.focal_lr,
                                                  start=config.pose.start, focal_start=config.pose.focal_start)
        e = config.exposure
        self.exposure = ViewExposure(V, enabled=e.enabled, lr=e.lr, start=e.start)
        self.densifier = Densifier(config.densify, config.optim.iterations, data.scene_scale, config.seed)
        self.pseudo_targets: list[tuple[Camera, Tensor]] = []  # diffusion-refined renders
        # recon.optimise.coreg.CoRegularisation when a partner field is co-trained (coreg.enabled), else None
        self.coupling = None
        cam0 = data.cameras[0]
        self.pyramid = ImagePyramid(data.images, data.depth_priors, cam0.width, cam0.height, data.masks)
        if config.optim.random_background:
            unmasked = [n for n, m in zip(data.names, data.masks or [None] * V) if m is None]
            if unmasked:
                raise ConfigError(
                    f"optim.random_background=true needs an object mask for every training view (Blender alpha, "
                    f"DTU mask/ folder); {', '.join(unmasked)} has none: set optim.random_background=false")

    # ---- parameters -------------------------------------------------------------------
    def _make_params(self, g: Gaussians) -> dict[str, torch.nn.Parameter]:
        t = {"means": g.means, "scales": g.log_scales, "quats": g.quats,
             "opacities": g.opacity_logits, "sh0": g.sh[:, :1], "shN": g.sh[:, 1:]}
        return {k: torch.nn.Parameter(v.detach().float().clone().contiguous()) for k, v in t.items()}

    def _lr(self, key: str) -> float:
        o = self.cfg.optim
        return {"means": o.lr_means * self.data.scene_scale, "scales": o.lr_scales,
                "quats": o.lr_quats, "opacities": o.lr_opacity, "sh0": o.lr_sh0, "shN": o.lr_shN}[key]

    def _adam(self, key: str) -> torch.optim.Adam:
        return torch.optim.Adam([self.params[key]], lr=self._lr(key), eps=1e-15,
                                fused=True if self.cfg.optim.fused_adam else None)

    def gaussians(self) -> Gaussians:
        p = self.params
        return Gaussians(p["means"], p["scales"], p["quats"], p["opacities"], torch.cat([p["sh0"], p["shN"]], 1))

    @property
    def pose_deltas(self) -> torch.nn.Parameter:  # [V, 6]
        return self.camera_refinement.pose_deltas

    def train_camera(self, v: int, size: tuple[int, int] | None = None) -> Camera:
        """Training camera v as it is rendered, with its refined pose (T = se3_exp(delta_v) @ T_init)
        and focal (recon.optimise.camera_refinement), at ``size``."""
        cam = self.data.cameras[v]
        if size is not None and size != (cam.width, cam.height):
            cam = cam.scaled(*size)
        return self.camera_refinement.render_camera(v, cam)

    def render_settings(self, sh: int) -> RenderSettings:
        """How the fit renders at SH degree ``sh`` (backend, antialiasing, background)."""
        r = self.cfg.render
        return RenderSettings(sh_degree=sh, background=self.data.background, backend=r.backend,
                              antialiased=r.antialiased)

    # ---- losses -------------------------------------------------------------------------

    def _depth_terms(self, depth: Tensor, prior: Tensor, kind: str, weight: float, metric: bool = False) -> Tensor:
        """metric: the prior is in the scene's frame (stereo points), so depth.metric_weight applies."""
        c = self.cfg.depth
        valid = (prior > 0) & (depth.detach() > 0)  # [H, W]
        loss = depth.sum() * 0.0
        if metric and kind == "depth" and c.metric_weight > 0:
            loss = loss + c.metric_weight * losses.metric_depth_loss(depth, prior, valid)
        if c.pearson_weight > 0:
            loss = loss + c.pearson_weight * losses.pearson_depth_loss(depth, prior, kind, valid)
        if c.ranking_weight > 0:
            loss = loss + c.ranking_weight * losses.depth_ranking_loss(
                depth, prior, kind, valid, num_pairs=c.ranking_pairs, window=c.ranking_window,
                generator=self.generator)
        return weight * loss

    def _depth_active(self, it: int) -> bool:
        c = self.cfg.depth
        return c.enabled and c.start <= it < c.stop

    def _pseudo_camera(self, size: tuple[int, int] | None = None) -> Camera:
        return interpolated_camera(self.data.cameras, self.generator, self.cfg.pseudo.jitter * self.data.scene_scale,
                                   size)

    def _pseudo_loss(self, it: int, sh: int, factor: float) -> Tensor | None:
        """factor: the training render's pyramid level this step; the pseudo view renders at factor * downscale."""
        c = self.cfg.pseudo
        if not (c.enabled and self._depth_active(it) and it >= c.start and it % c.every == 0):
            return None
        size, _, _ = self.pyramid.level(factor * c.downscale)
        cam = self._pseudo_camera(size)
        with stage("render_forward"):
            out = self.render_fn(self.gaussians(), [cam], self.render_settings(sh))
        depth = out.depth.squeeze(0)  # [H, W] (one camera; a view, see step())
        if self.depth_model is not None:
            pred = self.depth_model.predict(out.rgb[0].detach().clamp(0, 1))
            prior, kind = pred.values.to(depth), pred.kind
        else:
            pts = self.data.prior_points
            if pts is None or len(pts) == 0:
                return None
            # sparse depth of the prior points, without those seen through gaps of nearer ones
            prior = sparse_view.drop_occluded(zbuffer_depth(pts, cam), c.occlusion_window)
            return self._depth_terms(depth, prior, "depth", c.weight, metric=True)
        return self._depth_terms(depth, prior, kind, c.weight)

    def _training_gaussians(self) -> Gaussians:
        """The Gaussians of this step's training render: with dropout when configured."""
        g, r = self.gaussians(), self.cfg.regularise
        if not (r.enabled and r.dropout_rate > 0):
            return g
        return replace(g, opacity_logits=sparse_view.drop_gaussians(g.opacity_logits, r.dropout_rate, self.generator))

    def _binocular_loss(self, it: int, settings: RenderSettings, g: Gaussians, cam: Camera, depth: Tensor,
                        gt: Tensor, view: int, factor: float) -> Tensor | None:
        c = self.cfg.binocular
        if not (c.enabled and it >= c.start and it % c.every == 0):
            return None
        if c.downscale > 1:
            cam, depth, gt = self._binocular_level(settings, cam, depth, view, factor * c.downscale)
        valid = depth.detach() > 0
        if int(valid.sum()) < 16:
            return None
        fx = float(cam.K[0, 0])
        side = 1.0 if float(torch.rand((), generator=self.generator)) < 0.5 else -1.0
        baseline = side * c.disparity * cam.width * float(depth.detach()[valid].median()) / fx
        with stage("render_forward"):
            shifted = self.render_fn(g, [sparse_view.shifted_camera(cam, baseline)], settings).rgb.squeeze(0)
        shifted = self.exposure.apply(view, shifted)  # it stands in for photo `view`: the same exposure
        return c.weight * losses.binocular_loss(shifted, depth, gt, fx, baseline, c.ssim_weight)

    def _binocular_level(self, settings: RenderSettings, cam: Camera, depth: Tensor, view: int,
                         factor: float) -> tuple[Camera, Tensor, Tensor]:
        """The binocular term's camera, source depth [h, w] and target [h, w, 3] at the pyramid level
        ``factor``: depth area-averaged (differentiable), 0 where any pixel under it had none."""
        (w, h), images, _ = self.pyramid.level(factor)
        gt = images[view]
        if self.cfg.optim.random_background:  # the same composite as the training target, at this level
            gt = torch.where(self.pyramid.level_masks(factor)[view][..., None], gt, gt.new_tensor(settings.background))
        small = F.adaptive_avg_pool2d(depth[None, None], (h, w))[0, 0]  # [h, w]
        covered = F.adaptive_avg_pool2d((depth.detach() > 0).to(depth.dtype)[None, None], (h, w))[0, 0] >= 1.0
        return cam.scaled(w, h), torch.where(covered, small, torch.zeros_like(small)), gt

    def _diffusion_loss(self, it: int, sh: int) -> Tensor | None:
        c = self.cfg.diffusion
        weight = diffusion_weight(it, c)
        if self.refiner is None or not c.enabled or weight <= 0:
            return None
        if diffusion_refresh_due(it, c):  # refresh the refined pseudo targets
            cams = [self._pseudo_camera() for _ in range(c.num_views)]
            with torch.no_grad(), stage("render_forward"):
                rgb = self.render_fn(self.gaussians().detach(), cams, self.render_settings(sh)).rgb
            refined = self.refiner.refine(rgb.clamp(0, 1))  # [B, H, W, 3]
            self.pseudo_targets = list(zip(cams, refined.detach().float()))
        if not self.pseudo_targets:
            return None
        k = int(torch.randint(len(self.pseudo_targets), (1,), generator=self.generator))
        cam, target = self.pseudo_targets[k]
        with stage("render_forward"):
            pred = self.render_fn(self.gaussians(), [cam], self.render_settings(sh)).rgb.squeeze(0)
        return weight * losses.l1(pred, target)

    # ---- loop ---------------------------------------------------------------------------
    def _set_lrs(self, it: int) -> None:
        o = self.cfg.optim
        s = self.data.scene_scale
        lr = exp_decay(it, o.iterations, o.lr_means * s, o.lr_means_final * s)
        for group in self.optimizers["means"].param_groups:
            group["lr"] = lr

    def step(self, it: int) -> dict:
        """One iteration (1-based); returns the loss terms as floats."""
        cfg = self.cfg
        self._set_lrs(it)
        sh = sh_degree_at(it - 1, cfg.optim.sh_degree_interval, self.max_sh)
        v = int(torch.randint(len(self.data.cameras), (1,), generator=self.generator))
        factor = resolution_factor_at(it, cfg.optim.resolution_schedule)
        size, images, priors = self.pyramid.level(factor)
        gt = images[v]  # [H, W, 3]
        settings = self.render_settings(sh)
        if cfg.optim.random_background:  # 3DGS: a new background colour each step, so none can be baked in
            bg = torch.rand(3, generator=self.generator)  # [3]
            settings = replace(settings, background=tuple(bg.tolist()))
            gt = torch.where(self.pyramid.level_masks(factor)[v][..., None], gt, bg)
        g, cam = self._training_gaussians(), self.train_camera(v, size)
        with stage("render_forward"):
            out = self.render_fn(g, [cam], settings)
        with stage("densify"):
            info = self.densifier.pre_backward(self.params, self.optimizers, it, out) if cfg.densify.enabled else None
        stop_losses = start("losses")  # the stages below are nested: they count on their own
        # squeeze, not [0]: a view, whose backward is free; indexing's backward writes a zero
        # image and copies the gradient into it, once per use (depth is used three times)
        rgb, depth = out.rgb.squeeze(0), out.depth.squeeze(0)  # [H, W, 3], [H, W] (one camera)
        rgb = self.exposure.apply(v, rgb)  # as photo v's exposure shows it (the identity when exposure is off)
        terms = {"photo": losses.photometric(rgb, gt, cfg.optim.ssim_weight)}
        prior = priors[v] if priors else None
        if prior is not None and self._depth_active(it):
            terms["depth"] = self._depth_terms(depth, prior[0], prior[1], 1.0, metric=cfg.depth.model is None)
        if (bino := self._binocular_loss(it, settings, g, cam, depth, gt, v, factor)) is not None:
            terms["binocular"] = bino
        if (pseudo := self._pseudo_loss(it, sh, factor)) is not None:
            terms["pseudo"] = pseudo
        if (diff := self._diffusion_loss(it, sh)) is not None:
            terms["diffusion"] = diff
        if self.coupling is not None and (co := self.coupling.loss(self, it, sh, factor)) is not None:
            terms["coreg"] = co  # its backward also leaves the partner field's share on the partner's parameters
        r = cfg.regularise
        if r.enabled:
            terms["reg"] = r.opacity_weight * losses.opacity_regulariser(self.params["opacities"]) + \
                r.scale_weight * losses.scale_regulariser(self.params["scales"], r.max_scale * self.data.scene_scale, r.max_ratio)
        loss = sum(terms.values())
        self._check_loss(it, loss, terms)
        with stage("backward"):
            loss.backward()
        with stage("optimiser"):
            for opt in self.optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            self.camera_refinement.step(it)
            self.exposure.step(it)
        if info is not None:
            with stage("densify"):
                self.densifier.post_backward(self.params, self.optimizers, it, info)
        if r.enabled and r.opacity_decay < 1 and it % r.opacity_decay_every == 0 and it < r.opacity_decay_stop:
            sparse_view.decay_opacities_(self.params["opacities"], r.opacity_decay)
        record = {k: float(t.detach()) for k, t in terms.items()}
        if self._logged(it) or self._last_psnr is None:  # a float64 pass over the image: only when it is logged
            self._last_psnr = losses.psnr(rgb.clamp(0, 1), gt)
        record.update(loss=float(loss.detach()), psnr=self._last_psnr, sh_degree=sh)
        stop_losses()
        return record

    def _logged(self, it: int) -> bool:
        """Iterations whose record goes to the history (and log.jsonl): every log_every, the first and the last."""
        return it % self.cfg.log_every == 0 or it == self.cfg.optim.iterations or it == 1

    def _check_loss(self, it: int, loss: Tensor, terms: dict) -> None:
        value = float(loss.detach())
        if math.isfinite(value) and value <= self.cfg.optim.max_loss:
            return
        parts = ", ".join(f"{k}={float(t):.4g}" for k, t in terms.items())
        bad = [k for k, p in self.params.items() if not torch.isfinite(p).all()]
        raise FitDivergedError(
            f"loss {'is not finite' if not math.isfinite(value) else 'exploded'} at iteration {it} "
            f"({parts}; {len(self.params['means'])} Gaussians; non-finite parameters: {bad or 'none'}); "
            f"the last good checkpoint is kept: lower the learning rates (optim.lr_*) or resume "
            f"with --resume and a smaller optim.lr_means")

    def is_finite(self) -> bool:
        """True when every Gaussian parameter is finite (a checkpoint worth keeping)."""
        return all(bool(torch.isfinite(p).all()) for p in self.params.values())

    def run(self, thumbnails: tuple = (), test_cameras: tuple = (), test_names: tuple = ()) -> TrainResult:
        total = self.cfg.optim.iterations
        for ls in self.listeners:
            ls.on_start(FitStarted(self.run_dir, tuple(self.data.cameras), tuple(self.data.names),
                                   tuple(test_cameras), tuple(test_names), total, thumbnails,
                                   tuple(self.render_settings(0).background)))
        start, paused, stopped = time.perf_counter(), 0.0, False
        base_seconds = self.seconds
        while self.iteration < total:
            with stage("paused"):
                paused += self.control.wait_if_paused()
            if self.control.stop_requested:
                stopped = True
                break
            it = self.iteration + 1
            record = self.step(it)
            if self.coupling is not None:  # the partner field's step it, and co-pruning
                self.coupling.after_step(self, it)
            self.iteration = it
            self.seconds = base_seconds + time.perf_counter() - start - paused
            n = len(self.params["means"])
            if self._logged(it):
                self.history.append({"iteration": it, "seconds": self.seconds, "num_gaussians": n, **record})
            event = StepEvent(it, total, record["loss"], record["psnr"], n, record["sh_degree"],
                              self.seconds, lambda: self.gaussians().detach())
            for ls in self.listeners:
                ls.on_step(event)
            if self.checkpoint_fn and (it % self.cfg.checkpoint_every == 0) and self.is_finite():
                with stage("checkpoint"):
                    self.checkpoint_fn(self.state_dict())
            end_iteration()
        cams = [self.camera_refinement.refined_camera(v) for v in range(len(self.data.cameras))]
        return TrainResult(self.gaussians().detach(), cams, self.history, self.iteration, self.seconds, stopped,
                           self.camera_refinement.record(), self.exposure.record(list(self.data.names)))

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration, "seconds": self.seconds, "history": list(self.history),
            "params": {k: p.detach().clone() for k, p in self.params.items()},
            # deep copies: Adam updates its moments in place after this snapshot
            "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers.items()},
            **self.camera_refinement.state_dict(),  # pose_deltas, pose_opt, log_focal, focal_opt
            **self.exposure.state_dict(),  # exposure_log_gain, exposure_bias, exposure_opt
            "densify": self.densifier.state_dict(), "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.seconds = int(state["iteration"]), float(state["seconds"])
        self.history = list(state["history"])
        self.params = {k: torch.nn.Parameter(state["params"][k].clone()) for k in _KEYS}
        self.optimizers = {k: self._adam(k) for k in self.params}
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
            for group in opt.param_groups:  # the saved groups carry the saving run's choice: keep this config's
                group["fused"] = True if self.cfg.optim.fused_adam else None
        self.camera_refinement.load_state_dict(state)
        self.exposure.load_state_dict(state)
        self.densifier.load_state_dict(state["densify"])
        self.generator.set_state(state["generator"])
