"""The raster benchmark runs end to end on a tiny scene and writes honest JSON."""

from __future__ import annotations

import json

from recon.render import available_backends, benchmark
from recon.render.benchmark import run_raster_bench


def test_raster_bench_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "_REFERENCE_BUDGET_BYTES", 100 << 20)  # 4000 is over it
    backends = [b for b in ("cpu", "reference") if b in available_backends()] + ["torch-tiled"]
    out = tmp_path / "raster.json"
    report = run_raster_bench(out, sizes=(300, 4000), width=40, height=30, backends=backends,
                              repeats=1, progress=False)
    assert json.loads(out.read_text()) == report
    assert report["machine"]["load_average_1m_5m_15m"]
    rows = {(r["backend"], r["n_gaussians"]): r for r in report["results"]}
    assert len(rows) == 2 * len(backends)
    for (backend, n), row in rows.items():
        if backend == "reference" and n == 4000:
            assert "skipped" in row and "GiB" in row["skipped"]  # over the dense budget
            continue
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0
        assert row["total_ms"] >= row["forward_ms"]
        assert row["peak_extra_mib"] is None or row["peak_extra_mib"] >= 0
        if backend == "cpu":  # work counted and set against the measured FMA peak
            work = row["work"]
            assert work["forward_lanes"] >= work["forward_blended"] > 0 and work["backward_lanes"] > 0
            assert 0 < row["throughput"]["fraction_of_peak"] < 1.5
        elif "cpu" in backends:  # the peers are ratios of ours
            assert row["total_vs_ours"] == row["total_ms"] / rows[("cpu", n)]["total_ms"]
    if "cpu" in backends:
        peak = report["cpu_peak"]
        assert peak["lane_fma_per_s"] > 0 and peak["isa"] in ("avx512", "avx2", "generic")


def test_torch_tiled_peer_matches_the_renderer():
    """The tiled torch peer does the same work: same picture as the dense reference."""
    from recon.render import render
    from recon.render.benchmark import bench_scene, torch_tiled_render
    from recon.types import RenderSettings

    g, cam = bench_scene(300, 40, 30)
    dense = render(g, [cam], RenderSettings(backend="reference", background=(0.0, 0.0, 0.0))).rgb
    tiled = torch_tiled_render(g, cam)
    assert dense.abs().max() > 0.1
    assert (dense - tiled).abs().max() < 1e-5
