"""`recon bench`: benchmark suites of fits, or the rasteriser.

    recon bench --suite llff3|dtu3|blender8|spare3|spare9 --seeds N --out DIR
                [--data-root DIR] [--config C] [--iterations K] [--set key=value ...]
    recon bench raster --out FILE.json
"""

from __future__ import annotations

import argparse
import inspect
import json

from recon.errors import ConfigError


def register(subparsers) -> None:
    from recon.evaluate.protocols import DEFAULT_METHODS, DEFAULT_SEEDS, METHODS, SUITES

    p = subparsers.add_parser(
        "bench",
        help="run a benchmark suite (fits) or the rasteriser benchmark",
        description="`recon bench --suite S --out DIR` fits every scene of a suite found under the data "
        "root (default ../shared/data) for each method and seed and writes markdown/JSON/CSV tables and plots; "
        "an interrupted bench resumes. `recon bench raster --out FILE.json` times the rasteriser.",
    )
    p.add_argument("kind", nargs="?", choices=("fits", "raster"), default="fits",
                   help="what to benchmark (default: fits of a suite)")
    p.add_argument("--out", required=True, help="output folder (fits) or JSON file (raster)")
    p.add_argument("--suite", choices=tuple(SUITES), help="benchmark suite (fits)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                   help=f"number of seeds per cell (0..N-1; default {DEFAULT_SEEDS}); tables show mean ± std, never best-of")
    p.add_argument("--data-root", default=None, help="folder of scene folders (default ../shared/data)")
    p.add_argument("--config", default=None, help="fit preset name or YAML path (default: default)")
    p.add_argument("--iterations", type=int, default=None,
                   help="iteration budget of every fit (the scaled baseline's schedule follows; the 30k one does not)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every fit (repeatable)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods out of {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)}); "
                   "the baselines are vanilla 3DGS (configs/baseline-3dgs.yaml) at the suite's budget and at 30k")
    p.add_argument("--scenes", default=None, help="comma-separated subset of the suite's scenes")
    p.add_argument("--lpips-weights", default=None, metavar="DIR",
                   help="folder with LPIPS backbone and linear weights (else LPIPS is null)")
    p.add_argument("--report-only", action="store_true",
                   help="fit nothing: write the tables from the cells already finished in --out "
                   "(the others are listed as not run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kind == "raster":
        return _raster(args)
    if not args.suite:
        raise ConfigError("recon bench needs --suite (llff3, dtu3, blender8, spare3, spare9) or the `raster` kind")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: need at least one seed")
    from recon.evaluate.bench import run_bench

    result = run_bench(
        args.suite, args.data_root, args.out, seeds=args.seeds, config=args.config,
        overrides=args.overrides, iterations=args.iterations,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        scenes=[s.strip() for s in args.scenes.split(",")] if args.scenes else None,
        lpips_weights=args.lpips_weights, report_only=args.report_only,
    )
    print(open(result["paths"]["markdown"]).read())
    failed = [c for c in result["cells"] if c["status"] != "done"]
    print(json.dumps({"results": result["paths"]["markdown"], "cells": len(result["cells"]), "failed": len(failed)}))
    return 1 if failed else 0


def _raster(args: argparse.Namespace) -> int:
    try:
        from recon.render.benchmark import run_raster_bench
    except ModuleNotFoundError as exc:
        if exc.name != "recon.render.benchmark":
            raise
        raise ConfigError("the rasteriser benchmark (recon.render.benchmark) is not available in this build") from None
    params = inspect.signature(run_raster_bench).parameters
    kwargs = {}
    if args.iterations and "iterations" in params:
        kwargs["iterations"] = args.iterations
    result = run_raster_bench(args.out, **kwargs)
    print(json.dumps({"raster_bench": str(args.out)}))
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str)[:4000])
    return 0
