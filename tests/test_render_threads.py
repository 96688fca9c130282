"""The extension's stages run without the GIL: other Python threads (the viewer, data
loading) keep running while a long rasterisation is in C++."""

from __future__ import annotations

import threading
import time

import torch

from recon.render import _ext
from recon.render.benchmark import bench_scene


def test_python_thread_runs_during_long_raster_calls():
    ext = _ext.load()
    W, H = 504, 378  # the benchmark's frame: ~60 ms per call on 2 idle cores
    g, cam = bench_scene(50_000, W, H)
    args = [t.detach() for t in g.tensors()]
    args += [cam.T_cam_world[None].contiguous(), cam.K[None].contiguous(), W, H, 3, 0.01, 1e10, False]
    means2d, conics, colors, opacities, depths, radii = ext.project_forward(*args)
    spans: dict[str, tuple[float, float]] = {}

    def rasterise():
        t0 = time.perf_counter()
        rgb, depth_sum, alpha, n_contrib, tile_offsets, flat_ids = ext.rasterize_forward(
            means2d, conics, colors, opacities, depths, radii, W, H, 16)
        t1 = time.perf_counter()
        ext.rasterize_backward(means2d, conics, colors, opacities, depths, tile_offsets, flat_ids, alpha,
                               n_contrib, torch.ones_like(rgb), torch.zeros_like(depth_sum),
                               torch.zeros_like(alpha), W, H, 16)
        spans["forward"] = (t0, t1)
        spans["backward"] = (t1, time.perf_counter())

    ticks = []  # this (main) thread's progress while the worker is in the extension
    worker = threading.Thread(target=rasterise)
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.0005)
    worker.join()
    assert set(spans) == {"forward", "backward"}
    for name, (start, end) in spans.items():
        inside = sum(start < t < end for t in ticks)
        # Holding the GIL, the call would leave at most a tick at each end of its span.
        assert inside >= 5, f"{name}: {inside} ticks of the main thread in a {1e3 * (end - start):.0f} ms call"
