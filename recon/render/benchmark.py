"""Side-by-side rasteriser benchmark: forward + backward time and peak extra memory.

    run_raster_bench("raster.json")  # what `recon bench raster --out FILE.json` runs

Every available backend renders the same synthetic scene in the same run: our CPU backend,
the dense torch reference (only where its [pixels x Gaussians] intermediates fit), and on
a GPU our CUDA backend and gsplat's CUDA ``rasterization``. Figures are medians of a few
repeats after one warm-up; the machine load is recorded next to them because on a shared
machine it changes the CPU figures a lot.
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
    if backend == "gsplat":
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
    }


def _default_backends() -> list[str]:
    from recon.render import available_backends

    found = available_backends()
    out = [b for b in ("cpu", "reference") if b in found]
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
            "load_average_1m_5m_15m": list(os.getloadavg()),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
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
    g, cam = bench_scene(n, width, height, device)
    try:
        return _measure(backend, g, cam, repeats)
    except (RuntimeError, ImportError) as err:
        return {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
