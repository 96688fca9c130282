"""One fit, end to end: load scene -> choose split -> recover poses if unposed ->
initialise -> optimise -> render train/test views -> score -> run folder.

This module calls the stages and decides what the run folder records; the files are
written by ``recon.export.run_outputs`` (layout in docs/ARCHITECTURE.md). The trainer only
emits events and hands its state to ``checkpoint_fn``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from recon.errors import ConfigError, ReconError
from recon.export import report_html, run_outputs
from recon.geometry import unproject_depth
from recon.optimise.background import fit_background
from recon.optimise.checkpoint import (
    earlier_total_seconds,
    find_resume_checkpoint,
    load_checkpoint,
    resume_record,
    save_checkpoint,
)
from recon.optimise.config import FitConfig, from_dict, load_config
from recon.optimise.events import FitControl, FitFinished, FitListener
from recon.optimise.memory import check_fit_memory, estimate_for_config
from recon.optimise.trainer import TrainData, Trainer
from recon.timing import current, recording, stage, start
from recon.types import Camera, Gaussians, Scene, Split, View


def _resolve_config(config: FitConfig | str | Path | None) -> FitConfig:
    if isinstance(config, FitConfig):
        return config
    return load_config(str(config) if config is not None else "default")


def _load(scene_spec: str, cfg: FitConfig) -> Scene:
    from recon.data.loading import LoaderOptions, load_with_options

    return load_with_options(scene_spec, LoaderOptions.from_data_config(cfg.data))  # recorded in scene.json


def _split(scene: Scene, protocol: str | None, n_views: int) -> Split:
    from recon.data.splits import select_split

    return select_split(scene, protocol, n_views)  # None: the format's usual protocol


def _scene_scale(cameras: list[Camera]) -> float:
    """Radius of the training cameras around their mean (x1.1, like 3DGS), floored at a
    tenth of the normalised unit so coincident cameras still give sensible rates."""
    centres = torch.stack([c.centre for c in cameras])  # [V, 3]
    radius = float((centres - centres.mean(0)).norm(dim=-1).max()) * 1.1
    return max(radius, 0.1)


def _initialise(views: list[View], cfg: FitConfig, generator: torch.Generator):
    """-> (gaussians, depth priors per view as (values, kind) or None, prior points [M, 3],
    the init record: the method asked for and the one that ran)."""
    from recon.init import initialise

    # MVS also runs under another init method when its depth is the depth prior.
    mvs_depth = cfg.depth.enabled and cfg.depth.model is None
    stereo = {"max_points": cfg.init.max_points, "seed": cfg.seed, **cfg.init.stereo}
    res = initialise(views, cfg.init.method, sh_degree=cfg.init.sh_degree, random_points=cfg.init.random_points,
                     with_depths=mvs_depth, generator=generator, fill_stride=cfg.init.fill_stride,
                     fill_max_gap=cfg.init.fill_max_gap, opacity=cfg.init.opacity,
                     scale_factor=cfg.init.scale_factor, **stereo)
    # (a fallback to random init is warned about by recon.init and recorded in metrics.json)
    depths = [None] * len(views)
    if res.depths is not None:
        depths = [(d, "depth") if bool((d > 0).any()) else None for d in res.depths]
    points = res.points
    if points is None and res.depths is not None:  # random/SIFT init: MVS depths still give points
        points = _unproject(views, res.depths)
    return res.gaussians, depths, points, res.record()


def _unproject(views: list[View], depths: list[Tensor]) -> Tensor:
    """Valid MVS depth pixels -> world points [M, 3] (reprojected into pseudo views)."""
    out = [unproject_depth(v.camera.K, v.camera.T_cam_world, d) for v, d in zip(views, depths)]
    return torch.cat(out) if out else torch.zeros(0, 3)


def _learned_priors(cfg: FitConfig, views: list[View], run_dir: Path):
    """Depth model (if configured) -> (model, per-view priors); diffusion refiner or None."""
    model = refiner = None
    priors = None
    if cfg.depth.enabled and cfg.depth.model:
        from recon.priors.depth import load_depth_prior

        model = load_depth_prior(cfg.depth.model, cache_dir=run_dir / "cache" / "depth")
        priors = []
        for v in views:
            d = model.predict(v.image)
            priors.append((d.values.float(), d.kind))
    if cfg.diffusion.enabled:
        if not cfg.diffusion.model:
            raise ConfigError("diffusion.enabled=true needs diffusion.model (a local diffusers folder); "
                              "pass --diffusion-model PATH or set diffusion.enabled=false")
        from recon.priors.diffusion import Img2ImgRefiner

        d = cfg.diffusion
        refiner = Img2ImgRefiner.from_pretrained(d.model, strength=d.strength, steps=d.steps, prompt=d.prompt,
                                                 seed=cfg.seed, controlnet_path=d.controlnet)
    return model, priors, refiner


def fit_scene(
    scene_spec: str | Path,
    *,
    out_dir: str | Path,
    config: FitConfig | str | Path | None = None,
    views: int | None = None,
    protocol: str | None = None,
    resume: bool = False,
    listeners: tuple[FitListener, ...] | list[FitListener] = (),
    control: FitControl | None = None,
    preset: dict | None = None,
) -> Path:
    """Runs one fit and returns the run folder. ``resume=True`` continues the run in
    ``out_dir`` from its latest checkpoint with the configuration saved there. ``preset``
    (``{"name", "reason"}``, e.g. recon.optimise.presets.PresetChoice.record()) says which
    preset ``config`` came from and why; metrics.json keeps it beside the budget."""
    run = Path(out_dir)
    if resume:
        if not (run / "config.yaml").is_file():
            raise ReconError(f"cannot resume {run}: no config.yaml there; pass the folder of a run")
        import yaml

        cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        if cfg.coreg.enabled:
            raise ConfigError(
                f"cannot resume {run}: it was fitted with coreg.enabled=true, and its checkpoints hold only the "
                f"first of the two co-regularised fields (recon/optimise/coreg.py), not the partner; fit it "
                f"again from the start")
    else:
        cfg = _resolve_config(config)
        if views is not None:
            cfg.data.views = int(views)
        if protocol is not None:
            cfg.data.protocol = protocol
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(cfg.to_yaml())
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new uninitialised tensor with NaN (a guard against
    # kernels that read memory they never wrote); ours write their outputs in full, and the
    # fills cost a few per cent of every iteration (tests/test_trainer.py checks nothing changes).
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with recording():  # metrics.json's time_breakdown (recon.timing)
            return _fit(str(scene_spec), run, cfg, resume, list(listeners), control, preset)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise ReconError(
            f"out of memory while fitting {scene_spec} ({type(exc).__name__}); lower the resolution "
            f"(--set data.max_side=400), cap the Gaussians (--set densify.max_gaussians=50000) or "
            f"use --config fast") from exc
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


@dataclass
class _Prepared:
    scene: Scene
    split: Split
    train: list[View]
    test: list[View]
    gaussians: Gaussians
    data: TrainData
    depth_model: object
    refiner: object
    init: dict  # recon.init.InitResult.record(): the initialisation that actually ran


def _prepare(spec: str, run: Path, cfg: FitConfig) -> _Prepared:
    """Scene, split, poses (SfM when unposed), initial Gaussians and priors."""
    generator = torch.Generator().manual_seed(cfg.seed)
    with stage("load"):
        scene = _load(spec, cfg)
        split = _split(scene, cfg.data.protocol, cfg.data.views)
    if cfg.stereo_model and scene.posed:
        raise ConfigError(f"--stereo-model recovers poses for a folder of photos without poses; {spec} has poses "
                          f"({scene.format}): drop the flag, or pass a folder with only the images")
    v0 = scene.views[0]  # before any heavy work: will the fit fit in memory? (names the setting to change)
    check_fit_memory(estimate_for_config(cfg, v0.width, v0.height, len(scene.views), len(split.train)))
    recovered = None
    if not scene.posed:
        with stage("pose_recovery"):
            recovered = _recover_poses(scene, split, cfg)
        scene, split = replace(recovered.scene, meta={**recovered.scene.meta, "poses": recovered.record}), recovered.split
    train, test = list(scene.subset(split.train)), list(scene.subset(split.test))
    with stage("init"):  # multi-view stereo inside it times itself as "stereo"
        gaussians, depth_priors, prior_points, init = _initialise(train, cfg, generator)
        if recovered is not None and cfg.stereo_model:  # the pointmap model's fused cloud seeds the Gaussians
            from recon.init import gaussians_from_points

            gaussians = gaussians_from_points(recovered.points, recovered.colors, cfg.init.sh_degree)
            prior_points = recovered.points
            init = {**init, "used": "pointmap model (--stereo-model)"}
    with stage("priors"):
        depth_model, learned, refiner = _learned_priors(cfg, train, run)
    if learned is not None:
        depth_priors = learned
    if not cfg.depth.enabled:
        depth_priors = [None] * len(train)
    bg = fit_background(cfg.render.background, scene.background, [v.image for v in train])
    data = TrainData(
        cameras=[v.camera for v in train], images=[v.image for v in train], names=[v.name for v in train],
        masks=[v.mask for v in train], depth_priors=depth_priors, prior_points=prior_points,
        scene_scale=_scene_scale([v.camera for v in train]), background=bg)
    return _Prepared(scene, split, train, test, gaussians, data, depth_model, refiner, init)


def _recover_poses(scene: Scene, split: Split, cfg: FitConfig):
    """Unposed scene -> poses from the training views alone, test views registered against
    the frozen training model (recon.priors.poses; a pointmap model with --stereo-model).
    -> recon.priors.poses.RecoveredPoses (its record of how train and test poses were
    obtained goes to metrics.json)."""
    from recon.priors.poses import recover_split_poses

    model = None
    if cfg.stereo_model:
        from recon.priors.pointmap import load_pointmap_model

        model = load_pointmap_model(cfg.stereo_model)
    return recover_split_poses(scene, split, seed=cfg.seed, num_threads=cfg.threads if cfg.threads > 0 else -1,
                               pointmap_model=model, max_points=cfg.init.max_points)


def _fit(spec: str, run: Path, cfg: FitConfig, resume: bool, listeners: list, control, preset: dict | None) -> Path:
    from recon import render as render_module

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    p = _prepare(spec, run, cfg)
    render_fn = lambda *a, **k: render_module.render(*a, **k)  # noqa: E731  looked up late (tests swap it)
    # auto: refine the cameras of scenes whose poses were recovered, not given
    refine_poses, refine_focal = (mode == "on" or (mode == "auto" and not p.scene.posed)
                                  for mode in (cfg.pose.refine, cfg.pose.refine_focal))
    log = run_outputs.RunLog(run / "log.jsonl", cfg.log_every)
    try:
        trainer = Trainer(cfg, p.gaussians, p.data, render_fn=render_fn, listeners=[log, *listeners], control=control,
                          refine_poses=refine_poses, refine_focal=refine_focal, depth_model=_uncached(p.depth_model), refiner=p.refiner, run_dir=str(run))
        coupling = None
        if cfg.coreg.enabled:  # CoR-GS: a partner field, stepped by the trainer in lockstep (recon.optimise.coreg)
            from recon.optimise.coreg import CoRegularisation, partner_config

            partner = Trainer(partner_config(cfg), p.gaussians, p.data, render_fn=render_fn,
                              refine_poses=refine_poses, refine_focal=refine_focal,
                              depth_model=_uncached(p.depth_model), refiner=p.refiner, run_dir=str(run))
            coupling = trainer.coupling = CoRegularisation(cfg.coreg, partner, cfg.seed)
        initial = resumed = None
        earlier, session = 0.0, 1  # wall time of earlier sessions, up to the checkpoint resumed from
        if resume:
            ckpt, skipped = find_resume_checkpoint(run)  # skips (and warns about) a truncated newest one
            if ckpt is None:
                warnings.warn(f"{run} has no checkpoint yet; starting the fit from the beginning", RuntimeWarning,
                              stacklevel=2)
            else:
                state = load_checkpoint(ckpt)
                trainer.load_state_dict(state)
                initial = state.get("initial_test")
                resumed = resume_record(ckpt, state, skipped, run)
                earlier, session = earlier_total_seconds(state), resumed["session"]
        if initial is None and p.test:
            with stage("initial_eval"):
                initial = _initial_scores(render_fn, p.gaussians, p.test, p.split.protocol, trainer.render_settings(0))
        if not resume:
            from recon.data.loading import LoaderOptions

            with stage("write_outputs"):
                record = run_outputs.scene_record(spec, p.scene, p.split)
                record["loader"] = LoaderOptions.from_data_config(cfg.data).to_record()  # how `recon eval` re-reads it
                record["preset"] = preset  # kept for --resume's metrics.json
                run_outputs.write_scene_json(run, record)
        elif (run / "scene.json").is_file():
            preset = json.loads((run / "scene.json").read_text()).get("preset")
        trainer.checkpoint_fn = lambda state: save_checkpoint(run, {
            **state, "initial_test": initial, "sessions": session, "total_seconds": earlier + time.perf_counter() - t0})
        with stage("optimise_other"):  # the loop's own stages (render_forward, ...) are nested
            result = trainer.run(thumbnails=tuple(v.image for v in p.train), test_names=tuple(v.name for v in p.test),
                                 test_cameras=tuple(v.camera for v in p.test))
        if trainer.is_finite():  # also after a stop, so `--resume` continues from here
            with stage("checkpoint"):
                trainer.checkpoint_fn(trainer.state_dict())
        test = p.test
        if refine_poses and test and "poses" in p.scene.meta:  # registered test poses follow the refined frame
            from recon.priors.poses import follow_refined_training

            cams, p.scene.meta["poses"]["test_follow_refinement"] = follow_refined_training(
                [v.camera for v in test], [v.camera for v in p.train], list(result.cameras))
            test = [replace(v, camera=c) for v, c in zip(test, cams)]
        if refine_focal and test:  # test views sharing a training view's intrinsics take its refined focal
            from recon.optimise.camera_refinement import follow_refined_intrinsics

            cams, result.camera_refinement["test_focal_scales"] = follow_refined_intrinsics(
                [v.camera for v in test], [v.camera for v in p.train], list(result.cameras))
            test = [replace(v, camera=c) for v, c in zip(test, cams)]
        metrics = _write_outputs(run, cfg, p.scene, p.split, p.train, test, result, render_fn,
                                 trainer.render_settings(trainer.max_sh), initial, t0 - earlier, resumed, p.init,
                                 preset, coreg=coupling.record() if coupling is not None else None)
        for ls in trainer.listeners:
            ls.on_finish(FitFinished(result.iteration, str(run), metrics))
    finally:
        log.close()
    return run


def _write_outputs(run: Path, cfg: FitConfig, scene: Scene, split: Split, train: list[View], test: list[View],
                   result, render_fn, settings, initial: dict | None, started: float,
                   resumed: dict | None, init: dict, preset: dict | None = None,
                   coreg: dict | None = None) -> dict:
    """Writes the run folder's results (files by recon.export) and returns metrics.json's contents.
    metrics.json is written after the other files (report.html, which reads it, after it); its
    total_seconds is perf_counter() - ``started`` just before (earlier sessions moved ``started`` back)."""
    from recon.evaluate.memory import peak_rss_bytes
    from recon.evaluate.scoring import score_views
    from recon.export.ply import write_ply

    g = result.gaussians
    stop_writing = start("write_outputs")  # renders and scores are nested stages
    write_ply(run / "point_cloud.ply", g)
    run_outputs.render_views(run, "train", g, train, result.cameras, render_fn, settings)
    preds = run_outputs.render_views(run, "test", g, test, [v.camera for v in test], render_fn, settings)
    metrics: dict = {"scene": str(scene.root) if scene.root else scene.format, "seed": cfg.seed,
                     "iterations": result.iteration, "stopped_early": result.stopped, "resumed": resumed,
                     "init": init}
    fallbacks = [] if init["fallback_reason"] is None else [
        {"stage": "init", "wanted": init["requested"], "used": init["used"], "reason": init["fallback_reason"]}]
    if test:
        with stage("eval_score"):
            scores = score_views(preds, test, split.protocol)
        metrics.update(test=scores.summary, test_views=scores.per_view, test_initial=initial)
        impl = scores.implementations
        fallbacks += scores.fallbacks
    else:
        impl = {}
        metrics["test"] = None
        metrics["test_reason"] = "the split has no test views"
    metrics["protocol"] = {"name": split.protocol, "description": split.description,
                           "train": [v.name for v in train], "test": [v.name for v in test],
                           "views": len(train), "resolution": [train[0].width, train[0].height],
                           "metrics": impl, "posed": scene.posed, "render_settings": asdict(settings),
                           "test_poses": scene.meta.get("poses", {}).get("test_poses", "dataset (posed)"),
                           "poses": scene.meta.get("poses")}
    # Which rasteriser ran, with which instruction set and thread count (float rounding
    # depends on both); a fall back to the reference renderer is a named fallback too.
    from recon.render import backend_record

    metrics["compute"] = backend_record(settings.backend, g.means.device)
    if metrics["compute"]["fallback_reason"] is not None:
        fallbacks.append({"stage": "render", "wanted": "cpu" if g.means.device.type == "cpu" else "cuda",
                          "used": metrics["compute"]["used"],
                          "reason": metrics["compute"]["fallback_reason"]})
    metrics["fallbacks"] = fallbacks
    metrics["camera_refinement"] = result.camera_refinement
    metrics["coreg"] = coreg  # recon.optimise.coreg.CoRegularisation.record(), None without co-regularisation
    metrics["exposure"] = result.exposure  # recon.optimise.exposure.ViewExposure.record(), None when off
    # What the fit worked at and with which budget, and why (the preset picked, the loader's size cap).
    metrics["data"] = {"format": scene.format, "resolution": scene.meta.get("resolution"),
                       "undistorted_views": scene.meta.get("undistorted_views", 0),
                       **({"exif_orientation": scene.meta["exif_orientation"]} if "exif_orientation" in scene.meta else {})}
    metrics["config"] = {"preset": (preset or {}).get("name"), "reason": (preset or {}).get("reason"),
                         "iterations": cfg.optim.iterations, "max_gaussians": cfg.densify.max_gaussians,
                         "resolution_schedule": [list(e) for e in cfg.optim.resolution_schedule]}
    run_outputs.write_run_cameras(run, train, result.cameras, test)
    run_outputs.training_curve(run / "training_curve.png", result.history)
    stop_writing()
    total_seconds = time.perf_counter() - started
    # Last, so the peak covers every output written (renders, scoring, the plot) and any child.
    metrics.update(fit_seconds=round(result.seconds, 2), total_seconds=round(total_seconds, 2),
                   peak_rss_bytes=peak_rss_bytes(), num_gaussians=len(result.gaussians),
                   train_final=result.history[-1] if result.history else None)
    times = current()
    if times is not None:  # seconds per stage (recon.timing.FIT_STAGES); "other" is the rest
        metrics["time_breakdown"] = times.breakdown(min(total_seconds, times.elapsed()))  # this session
    run_outputs.write_metrics_json(run, metrics)
    report_html.write_report(run, ground_truth={v.name: v.image for v in test})
    return metrics


def _initial_scores(render_fn, gaussians: Gaussians, views: list[View], protocol: str, settings) -> dict:
    """Scores of the initial Gaussians on the test views (the one scorer, without LPIPS):
    the baseline the fit must beat."""
    from recon.evaluate.scoring import no_lpips, score_views

    with torch.no_grad():
        preds = [render_fn(gaussians, [v.camera], settings).rgb[0].clamp(0, 1) for v in views]
    return score_views(preds, views, protocol, lpips=no_lpips("not computed for the initial Gaussians")).summary


# ---- helpers -----------------------------------------------------------------------------


def _uncached(depth_model):
    """The trainer predicts depth on rendered pseudo views, new images every time: caching
    them would only fill the run's cache folder, so it gets the model without the cache."""
    without_cache = getattr(depth_model, "without_cache", None)
    return without_cache() if without_cache is not None else depth_model
