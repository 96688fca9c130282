"""`recon fit SCENE --views N`: fit Gaussians to a few views and write a run folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recon.commands.choices import FORMATS, PROTOCOLS

# With --resume the run's saved config.yaml and scene.json decide these; giving them too
# would be silently ignored, so they are refused (attribute, flag, value when not given).
_RESUME_REFUSED = (("views", "--views", None), ("config", "--config", None), ("overrides", "--set", []),
                   ("protocol", "--protocol", None), ("format", "--format", None), ("seed", "--seed", None),
                   ("out", "--out", None), ("depth_model", "--depth-model", None),
                   ("stereo_model", "--stereo-model", None), ("diffusion_model", "--diffusion-model", None))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="fit 3D Gaussians to a few views of a scene and write a run folder",
        description="Reconstruct SCENE (a scene folder, or builtin:synthetic) from N training views: "
                    "initialise from stereo priors, optimise, render the held-out views and report "
                    "metrics. Without --config the preset tuned for the scene's format and protocol "
                    "is used (llff3, dtu3, blender8, spare3/spare9, synthetic, else generic). "
                    "Any config key can be overridden with --set KEY=VALUE.",
        epilog="Ctrl-C or SIGTERM stops after the current step, saves a checkpoint and prints the "
               "`recon fit --resume RUN` command (a second one aborts at once); exit codes: 0 done, "
               "2 bad input or a file that could not be written, 130 stopped by SIGINT, 143 by SIGTERM.",
    )
    p.add_argument("scene", nargs="?", metavar="SCENE", help="scene folder or builtin:synthetic (omit with --resume)")
    p.add_argument("--views", type=int, default=None, help="number of training views (default: config data.views)")
    p.add_argument("--config", default=None, metavar="NAME|PATH",
                   help="preset in configs/ (default, fast, generic, synthetic, llff3, dtu3, blender8, spare3, "
                        "spare9) or a YAML file (default: picked for the scene's format and protocol); "
                        "quality: the quality variant of the preset picked for the scene (configs/quality-*.yaml, "
                        "a longer fit)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.iterations=500 --set depth.enabled=false")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<scene>-<time>)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: config seed)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in RUN from its latest checkpoint, with the config saved there")
    p.add_argument("--format", default=None, choices=[f for f in FORMATS if f != "synthetic"],
                   help="force the scene format instead of detecting it")
    p.add_argument("--protocol", default=None, choices=PROTOCOLS,
                   help="view selection (default: the format's usual protocol; farthest for custom captures)")
    p.add_argument("--depth-model", default=None, metavar="PATH", help="local monocular depth model folder")
    p.add_argument("--stereo-model", default=None, metavar="PATH", help="local learned stereo prior folder")
    p.add_argument("--diffusion-model", default=None, metavar="PATH",
                   help="local diffusers img2img folder; enables diffusion refinement of pseudo views")
    p.add_argument("--view", action="store_true", help="watch the fit live in the browser")
    p.add_argument("--host", default="127.0.0.1", help="viewer address (with --view)")
    p.add_argument("--port", type=int, default=8080, help="viewer port (with --view)")
    p.add_argument("--token", default=None, help="viewer access token (with --view; generated when --host "
                                                  "is not loopback)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the summary is still printed)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="for scripts: no progress bars, no summary; prints only the run folder")
    p.set_defaults(func=handler)


class ProgressBar:
    """Fit progress listener: iteration, loss, PSNR and number of Gaussians."""

    def __init__(self) -> None:
        self.bar = None
        self._last = 0.0

    def on_start(self, event) -> None:
        from recon.progress import open_bar

        self.bar = open_bar("fit", total=event.total_iterations, transient=False)

    def on_step(self, event) -> None:
        now = time.perf_counter()
        if now - self._last < 0.2 and event.iteration < event.total_iterations:
            return  # a listener must return quickly; redraws are throttled
        self._last = now
        self.bar.update(event.iteration,
                        status=f"loss {event.loss:.4f}  PSNR {event.psnr:5.2f}  {event.num_gaussians} Gaussians")

    def on_finish(self, event) -> None:
        if self.bar is not None:
            self.bar.close()


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if args.seed is not None:
        out.append(f"seed={args.seed}")
    if args.format:
        out.append(f"data.format={args.format}")
    if args.depth_model:
        out.append(f"depth.model={args.depth_model}")
    if args.stereo_model:
        out.append(f"stereo_model={args.stereo_model}")
    if args.diffusion_model:
        out += [f"diffusion.model={args.diffusion_model}", "diffusion.enabled=true"]
    return out


def handler(args: argparse.Namespace) -> int:
    from recon import progress
    from recon.commands._signals import FitInterrupt, StopServing
    from recon.optimise.checkpoint import explain_write_failure
    from recon.optimise.events import FitControl

    if args.resume:
        _check_resume_flags(args)
    was_quiet = progress.is_quiet()
    progress.set_quiet(was_quiet or args.quiet or args.no_progress)
    control = FitControl()
    interrupt = FitInterrupt(control)  # Ctrl-C/SIGTERM: stop like the viewer's Stop button
    listeners: list = [interrupt] if args.quiet or args.no_progress else [interrupt, ProgressBar()]
    viewer = None
    try:
        with interrupt.installed():
            if args.view:
                from recon.view.live import LiveViewer  # lazy: viser only when asked for

                viewer = LiveViewer(host=args.host, port=args.port, control=control, token=args.token)
                listeners.append(viewer)
            out, preset = _fit(args, listeners, control)
        if args.quiet:
            print(out)
        else:
            _print_summary(out, preset)
        if interrupt.signum is not None:
            print(interrupt.report())
            return interrupt.exit_code
        if viewer is not None:
            # The page stays up on the finished run until Ctrl-C; checkpoints are already written.
            print("fit finished; the viewer keeps serving the result (Ctrl-C to exit)")
            stop = StopServing()
            with stop.installed():
                stop.attach(viewer.server.request_stop)
                viewer.serve_forever()
    except OSError as exc:  # disk full, read-only, a file where the run folder should be
        run = interrupt.run_dir or args.resume or args.out or Path(exc.filename or ".").parent
        raise explain_write_failure(exc, exc.filename, run) from exc
    finally:
        if viewer is not None:
            viewer.close()
        progress.set_quiet(was_quiet)  # the flag is this command's, not the process's
    return 0


def _check_resume_flags(args: argparse.Namespace) -> None:
    from recon.errors import ConfigError

    given = [flag for attr, flag, unset in _RESUME_REFUSED if getattr(args, attr) != unset
             and not (attr == "out" and Path(args.out) == Path(args.resume))]
    if given:
        raise ConfigError(
            f"--resume {args.resume} continues that run with the config saved in its config.yaml, so "
            f"{', '.join(given)} would be ignored; drop {'it' if len(given) == 1 else 'them'}, or start a new "
            f"run (recon fit SCENE ... --out NEW_DIR) to change them")


def _fit(args: argparse.Namespace, listeners: list, control) -> tuple[Path, str | None]:
    """-> (run folder, the name of the preset the fit used; None when resumed or a file)."""
    from recon.errors import ConfigError
    from recon.optimise.config import load_config
    from recon.pipeline import fit_scene

    if args.resume:
        run = Path(args.resume)
        record = run / "scene.json"
        if not record.is_file():
            raise ConfigError(f"cannot resume {run}: no scene.json there; pass the folder of a run")
        scene = args.scene or json.loads(record.read_text())["scene"]
        out = fit_scene(scene, out_dir=run, resume=True, listeners=listeners, control=control)
        return out, None
    if not args.scene:
        raise ConfigError("recon fit needs a SCENE (a folder or builtin:synthetic), or --resume RUN")
    preset = args.config
    chosen = {"name": preset, "reason": "given with --config"}
    from recon.optimise.presets import QUALITY, choose_preset

    if preset in (None, QUALITY):  # quality: the quality variant of the preset the scene gets
        choice = choose_preset(args.scene, format=args.format, protocol=args.protocol, views=args.views,
                               quality=preset == QUALITY)
        preset, chosen = choice.name, choice.record()
        if not args.quiet:
            print(choice.message())
    config = load_config(preset, _overrides(args))
    name = Path(args.scene.replace("builtin:", "")).name or "scene"
    out_dir = args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = fit_scene(args.scene, out_dir=out_dir, config=config, views=args.views, protocol=args.protocol,
                    listeners=listeners, control=control, preset=chosen)
    return out, preset


def _print_summary(run: Path, preset: str | None) -> None:
    """The block a person reads at the end of a fit: what ran, how well, where to look."""
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics.get("test") or {}
    proto = metrics.get("protocol") or {}

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [("run", str(run))]
    if preset is not None:
        reason = (metrics.get("config") or {}).get("reason")
        rows.append(("config", preset + (f" ({reason})" if reason else "")))
    if proto:
        w, h = proto.get("resolution", ["?", "?"])
        rows.append(("protocol", f"{proto.get('name')}: {proto.get('views')} train / {len(proto.get('test', []))} test "
                                 f"views at {w}x{h}{'' if proto.get('posed', True) else ', poses recovered by SfM'}"))
    rows += _working_size_rows(metrics)
    if test:
        parts = [f"{k.upper()} {fmt(test.get(k))}" for k in ("psnr", "ssim", "lpips")]
        parts += [f"{k} {fmt(test[k])}" for k in ("psnr_masked", "ssim_masked", "lpips_masked") if k in test]
        rows.append((f"test ({test.get('num_views', 0)} views)", ", ".join(parts)))
        initial = (metrics.get("test_initial") or {}).get("psnr")
        if initial is not None:
            rows.append(("", f"(initial Gaussians: PSNR {initial:.2f})"))
        if test.get("lpips") is None and test.get("lpips_reason"):
            rows.append(("LPIPS", test["lpips_reason"]))
    else:
        rows.append(("test", metrics.get("test_reason", "no test views")))
    rows.append(("Gaussians", f"{metrics['num_gaussians']:,}"))
    rows.append(("time", f"fit {metrics['fit_seconds']} s, total {metrics['total_seconds']} s, "
                         f"peak memory {metrics['peak_rss_bytes'] / 2**30:.2f} GiB"))
    if (run / "report.html").is_file():
        rows.append(("report", str(run / "report.html")))
    width = max(len(k) for k, _ in rows)
    print("-" * 24 + " recon fit: done " + "-" * 24)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _working_size_rows(metrics: dict) -> list[tuple[str, str]]:
    """What the fit worked at and for how long, and why (metrics.json's ``data`` and ``config``)."""
    rows = []
    size = (metrics.get("data") or {}).get("resolution")
    if size:
        (w0, h0), (w, h) = size["loaded"], size["working"]
        undistorted = metrics["data"].get("undistorted_views") or 0
        rows.append(("resolution", f"{w0}x{h0} loaded -> fitted at {w}x{h} ({size['why']})"
                                   + (f"; {undistorted} views undistorted on load" if undistorted else "")))
    config = metrics.get("config") or {}
    if config.get("iterations"):
        rows.append(("budget", f"{config['iterations']} iterations, at most {config['max_gaussians']:,} Gaussians"))
    return rows
