"""Side-by-side rasteriser benchmark: forward + backward time and peak extra memory.

    run_raster_bench("raster.json")  # what `recon bench raster --out FILE.json` runs

Every available backend renders the same synthetic scene in the same run: our CPU backend,
the peers a user would run instead at equal work (on CPU the dense torch reference where its
[pixels x Gaussians] intermediates fit, and "torch-tiled", the same math in plain torch one
16x16 tile at a time; on a GPU gsplat's CUDA ``rasterization``) with their time as a ratio of
ours, and our CUDA backend. For the CPU backend the work is counted (pixel lanes evaluated and
Gaussian-pixel pairs blended, forward and backward) and set against a measured FMA peak of
the instruction set in use. Figures are medians of a few repeats after one warm-up; the
machine load is recorded next to them because on a shared machine it changes the CPU figures
a lot.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from recon.geometry import look_at
from recon.types import Camera, Gaussians, RenderSettings

__all__ = ["run_raster_bench", "bench_scene"]

# The dense reference keeps ~20 float tensors of [pixels, visible Gaussians].
_REFERENCE_BYTES_PER_PAIR = 20 * 4
_REFERENCE_BUDGET_BYTES = 2 << 30
# The tiled torch peer loops over tiles in Python: seconds per step beyond this size.
_TORCH_TILED_MAX_N = 50_000
_PEER_TILE = 16
# Vector operations per pixel lane in the blending loops of cuda/src/cpu_raster_tile.h,
# counted by hand from the source (arithmetic, compares, selects; the exp polynomial
# included): the work a lane costs when set against the FMA peak (one op per FMA slot).
FORWARD_OPS_PER_LANE = 50
BACKWARD_OPS_PER_LANE = 90


def bench_scene(n: int, width: int, height: int, device: str = "cpu", seed: int = 0):
    """n Gaussians filling a 3 x 2.2 x 2 box seen from 4 units away, sized like a fit's
    (standard deviation ~0.6 x the mean spacing), SH degree 3. -> (Gaussians, Camera)."""
    gen = torch.Generator().manual_seed(seed)
    box = torch.tensor([1.5, 1.1, 1.0])
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * box  # [N, 3]
    spacing = (8 * float(box.prod()) / max(n, 1)) ** (1 / 3)
    log_scales = math.log(0.6 * spacing) + 0.3 * torch.randn(n, 3, generator=gen)  # [N, 3]
    g = Gaussians(means, log_scales, torch.randn(n, 4, generator=gen),
                  torch.randn(n, generator=gen), 0.2 * torch.randn(n, 16, 3, generator=gen))
    g = g.to(device)
    for t in g.tensors():
        t.requires_grad_(True)
    f = 0.8 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    T = look_at(torch.tensor([0.0, 0.0, -4.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    return g, Camera(K=K.to(device), T_cam_world=T.to(device), width=width, height=height)


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _step(backend: str, g: Gaussians, cam: Camera):
    """One forward + backward; returns (forward_s, backward_s, process_cpu_s)."""
    sync = torch.cuda.synchronize if g.means.is_cuda else (lambda: None)
    for t in g.tensors():
        t.grad = None
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    if backend == "torch-tiled":
        rgb = torch_tiled_render(g, cam)
    elif backend == "gsplat":
        from gsplat import rasterization

        rgb, _, _ = rasterization(
            g.means, g.quats, torch.exp(g.log_scales), torch.sigmoid(g.opacity_logits), g.sh,
            cam.T_cam_world[None], cam.K[None], cam.width, cam.height, sh_degree=3)
    else:
        from recon.render import render

        rgb = render(g, [cam], RenderSettings(backend=backend)).rgb
    loss = rgb.sum()
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c0


def _measure(backend: str, g: Gaussians, cam: Camera, repeats: int) -> dict:
    cuda = g.means.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # The peak includes the warm-up, so memory the allocator keeps afterwards still counts.
        peak_ok = _reset_peak_rss()
        base = _rss_bytes("VmRSS")
    _step(backend, g, cam)  # warm-up (and the extension build on first use)
    fwd, bwd, cpu = zip(*(_step(backend, g, cam) for _ in range(repeats)))
    work = _work_counts() if backend == "cpu" else None
    if cuda:
        extra = torch.cuda.max_memory_allocated() - base
    else:
        extra = _rss_bytes("VmHWM") - base if peak_ok else None
    return {
        "forward_ms": 1e3 * statistics.median(fwd),
        "backward_ms": 1e3 * statistics.median(bwd),
        "total_ms": 1e3 * statistics.median(f + b for f, b in zip(fwd, bwd)),
        # CPU seconds of the whole process per step (all threads): on a shared machine the
        # wall time depends on the load, this much less; idle, wall ~ cpu / threads.
        "process_cpu_ms": 1e3 * statistics.median(cpu),
        "peak_extra_mib": None if extra is None else extra / 2**20,
        "memory_kind": "cuda allocator peak" if cuda else "process peak RSS above the start",
        "repeats": repeats,
        **({"work": work} if work else {}),
    }


def torch_tiled_render(g: Gaussians, cam: Camera, tile: int = _PEER_TILE) -> torch.Tensor:
    """The plain pure-torch splatting a user could write instead, at equal work: the dense
    reference's projection and blending, one tile at a time over the Gaussians whose
    bounding box touches it (so memory stays [tile pixels x Gaussians in the tile]).
    -> rgb [1, H, W, 3] without background; differentiable like render()."""
    from recon.render import _reference as ref

    viewmats = cam.T_cam_world[None].to(g.means)  # [1, 4, 4]
    Ks = cam.K[None].to(g.means)  # [1, 3, 3]
    p = ref.project(*g.tensors(), viewmats, Ks, cam.width, cam.height, g.sh_degree, 0.01, 1e10, False)
    m2, radii = p["means2d"][0], p["radii"][0]  # [N, 2], [N, 2]
    visible = (radii > 0).all(-1)
    lo = (m2.detach() - radii).floor()  # [N, 2] bounding box in pixels
    hi = (m2.detach() + radii).ceil()
    rows = []
    for y0 in range(0, cam.height, tile):
        row = []
        for x0 in range(0, cam.width, tile):
            w, h = min(tile, cam.width - x0), min(tile, cam.height - y0)
            hit = visible & (hi[:, 0] >= x0) & (lo[:, 0] <= x0 + w) & (hi[:, 1] >= y0) & (lo[:, 1] <= y0 + h)
            ids = torch.nonzero(hit).squeeze(-1)
            rgb, _, _ = ref._rasterize_one(m2, p["conics"][0], p["colors"][0], p["opacities"][0],
                                           p["depths"][0], radii, cam.width, cam.height, (x0, y0, w, h), ids)
            row.append(rgb)
        rows.append(torch.cat(row, 1))
    return torch.cat(rows, 0)[None]


def _work_counts() -> dict:
    """Work of the CPU backend's last step (the blending stages, forward and backward)."""
    from recon.render import _ext

    return dict(_ext.load().cpu_raster_stats())


def cpu_peak(threads: int, seconds: float = 0.3) -> dict:
    """Measured FMA peak of the CPU kernels' instruction set: lane-FMAs per second on
    `threads` threads (median of 3), calibrated to run ~`seconds` each."""
    from recon.render import _ext

    ext = _ext.load()
    iters = 100_000
    while True:
        t0 = time.perf_counter()
        ext.cpu_fma_rate(iters, 1)
        if time.perf_counter() - t0 > 0.05 or iters > 1 << 34:
            break
        iters *= 4
    iters = int(iters * seconds / max(time.perf_counter() - t0, 1e-6))
    rates = sorted(ext.cpu_fma_rate(iters, threads) for _ in range(3))
    return {"isa": ext.cpu_isa(), "float_lanes": ext.cpu_isa_float_lanes(), "threads": threads,
            "lane_fma_per_s": rates[1], "load_average_1m_5m_15m": list(os.getloadavg())}


def _throughput(row: dict, peak: dict) -> dict:
    """Achieved work rate of a CPU row as a fraction of the measured peak."""
    w = row["work"]
    ops = w["forward_lanes"] * FORWARD_OPS_PER_LANE + w["backward_lanes"] * BACKWARD_OPS_PER_LANE
    seconds = row["total_ms"] / 1e3
    return {
        "blended_pairs_per_s": w["forward_blended"] / (row["forward_ms"] / 1e3),
        "lane_ops_per_s": ops / seconds,
        "fraction_of_peak": ops / seconds / peak["lane_fma_per_s"],
        "note": "whole step (projection, binning, autograd) against the blending loops' ops only",
    }


def _add_ratios(results: list[dict]) -> None:
    """Each peer's time as a multiple of our backend's on the same device and size."""
    ours = {(r["n_gaussians"], r["backend"]): r for r in results if "total_ms" in r}
    for r in results:
        base = ours.get((r["n_gaussians"], "cuda" if r["backend"] == "gsplat" else "cpu"))
        if base and "total_ms" in r and r["backend"] not in ("cpu", "cuda"):
            r["total_vs_ours"] = r["total_ms"] / base["total_ms"]


def _default_backends() -> list[str]:
    from recon.render import available_backends

    found = available_backends()
    out = [b for b in ("cpu", "reference") if b in found] + ["torch-tiled"]
    if torch.cuda.is_available():
        out = [b for b in ("cuda",) if b in found] + ["gsplat"] + out
    return out


def run_raster_bench(
    out_path: str | Path,
    sizes: Sequence[int] = (10_000, 50_000, 200_000),
    width: int = 504,
    height: int = 378,
    backends: Sequence[str] | None = None,
    repeats: int = 5,
    progress: bool = True,
) -> dict:
    """Benchmarks each backend at each size, writes JSON to out_path and returns it."""
    from recon.progress import stage

    backends = list(backends) if backends is not None else _default_backends()
    results = []
    with stage("raster bench", total=len(backends) * len(sizes), enabled=progress) as bar:
        for n in sizes:
            for backend in backends:
                bar.update(status=f"{backend} N={n}")
                results.append({"backend": backend, "n_gaussians": n, **_run_one(backend, n, width, height, repeats)})
                bar.advance()
    _add_ratios(results)
    peak = None
    if "cpu" in backends:
        peak = cpu_peak(torch.get_num_threads())
        for r in results:
            if r["backend"] == "cpu" and "work" in r:
                r["throughput"] = _throughput(r, peak)
    report = {
        "benchmark": "raster forward+backward",
        "width": width,
        "height": height,
        "scene": "bench_scene(): uniform box, SH degree 3, loss = rgb.sum()",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "omp_threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
            "torch_threads": torch.get_num_threads(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_average_1m_5m_15m": list(os.getloadavg()),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "cpu_peak": peak,
        "results": results,
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(report, indent=2))
    return report


def _run_one(backend: str, n: int, width: int, height: int, repeats: int) -> dict:
    device = "cuda" if backend in ("cuda", "gsplat") else "cpu"
    if backend == "reference":
        need = n * width * height * _REFERENCE_BYTES_PER_PAIR
        if need > _REFERENCE_BUDGET_BYTES:
            return {"skipped": f"dense reference would need ~{need / 2**30:.0f} GiB "
                               f"(budget {_REFERENCE_BUDGET_BYTES / 2**30:.0f} GiB)"}
    if backend == "torch-tiled" and n > _TORCH_TILED_MAX_N:
        return {"skipped": f"tiled torch loop is timed up to {_TORCH_TILED_MAX_N} Gaussians (seconds per step)"}
    g, cam = bench_scene(n, width, height, device)
    try:
        return _measure(backend, g, cam, repeats)
    except (RuntimeError, ImportError) as err:
        return {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
