"""The raster benchmark runs end to end on a tiny scene and writes honest JSON."""

from __future__ import annotations

import json

from recon.render import available_backends, benchmark
from recon.render.benchmark import run_raster_bench


def test_raster_bench_writes_json(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "_REFERENCE_BUDGET_BYTES", 100 << 20)  # 4000 is over it
    backends = [b for b in ("cpu", "reference") if b in available_backends()]
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
