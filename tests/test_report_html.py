"""report.html: a self-contained page per run. Loaded from disk in headless Chromium (no
network), it must show the metrics table with the run's numbers, and for each test view the
ground truth, render, depth and error images (decoded by the browser, not broken links),
the training curve and the camera layout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from recon.export.report_html import write_report


def _write_run(run: Path, with_gt_folder: bool) -> dict:
    """A run folder with the files `recon fit` writes (small images)."""
    import imageio.v3 as iio

    from recon.export.cameras_json import NamedCamera, write_cameras_json
    from recon.geometry import look_at
    from recon.types import Camera

    rng = np.random.default_rng(0)
    names = ["view_000", "view_008"]
    gt = {}
    for n in names:
        truth = rng.random((24, 32, 3)).astype(np.float32)
        gt[n] = truth
        for sub, img in (("test", np.clip(truth + 0.05, 0, 1)), ("depth", rng.random((24, 32, 3)))):
            path = run / "renders" / sub / (f"test_{n}.png" if sub == "depth" else f"{n}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(path, (img * 255).astype(np.uint8))
        if with_gt_folder:
            (run / "renders" / "gt").mkdir(parents=True, exist_ok=True)
            iio.imwrite(run / "renders" / "gt" / f"{n}.png", (truth * 255).astype(np.uint8))
    metrics = {
        "scene": "synthetic", "seed": 0, "iterations": 40, "stopped_early": False,
        "test": {"num_views": 2, "psnr": 26.1234, "ssim": 0.8321, "lpips": None, "lpips_reason": "no weights"},
        "test_views": [{"name": "view_000", "psnr": 25.5, "ssim": 0.81, "lpips": None},
                       {"name": "view_008", "psnr": 26.7466, "ssim": 0.8542, "lpips": None}],
        "test_initial": {"psnr": 11.2},
        "protocol": {"name": "llff", "description": "LLFF: every 8th view", "train": ["view_001", "view_012"],
                     "test": names, "views": 2, "resolution": [32, 24], "metrics": {"psnr": "x"}, "posed": True},
        "fit_seconds": 12.5, "total_seconds": 20.0, "peak_rss_bytes": 2**30, "num_gaussians": 1234,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    K = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    import torch

    cams = []
    for i, name in enumerate(["view_001", "view_012", *names]):
        eye = torch.tensor([4.0, -1.5 + i, 1.0], dtype=torch.float64)
        T = look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
        cam = Camera(K=torch.tensor(K, dtype=torch.float32), T_cam_world=T.float(), width=32, height=24)
        cams.append(NamedCamera(name, "train" if i < 2 else "test", cam))
    write_cameras_json(run / "cameras.json", cams)
    (run / "config.yaml").write_text("seed: 0\noptim:\n  iterations: 40\n")
    log = [{"event": "start", "total_iterations": 40}]
    log += [{"iteration": i, "loss": 0.5 / i, "psnr": 10 + i / 4, "num_gaussians": 1000 + i, "seconds": i / 10}
            for i in range(10, 41, 10)]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    return gt


def test_report_is_self_contained_and_complete(tmp_path):
    run = tmp_path / "run"
    gt = _write_run(run, with_gt_folder=False)
    path = write_report(run, ground_truth=gt)
    page = path.read_text()
    assert path == run / "report.html"
    assert page.count("data:image/png;base64,") == 8  # 2 views x (GT, render, depth, error)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert "26.1234" in page and "0.8542" in page and "11.2" in page and "LPIPS: no weights" in page
    assert "<polyline" in page and 'aria-label="camera layout"' in page and "iterations: 40" in page
    # without ground truth the report still renders, and says what is missing
    page = write_report(run).read_text()
    assert page.count("data:image/png;base64,") == 4 and "not in the run folder" in page


def _chromium() -> str:
    path = os.environ.get("RECON_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; or set RECON_CHROMIUM)")
    return path


@pytest.mark.browser
def test_report_opens_from_disk_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    chromium = _chromium()
    run = tmp_path / "run"
    _write_run(run, with_gt_folder=True)  # ground truth read from renders/gt/
    path = write_report(run)
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            images = page.eval_on_selector_all(
                "#views img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, e.naturalHeight])")
            rows = page.eval_on_selector_all(
                "table.metrics tbody tr", "rs => rs.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
            headers = page.eval_on_selector_all("table.metrics thead th", "hs => hs.map(h => h.textContent)")
            svgs = page.eval_on_selector_all("svg", "ss => ss.map(s => s.getBoundingClientRect().width)")
        finally:
            browser.close()
    assert [a for a, *_ in images] == ["ground truth", "render", "depth", "|error| (0 to 0.25)"] * 2
    assert all(done and w == 32 and h == 24 for _, done, w, h in images)  # decoded, not broken
    assert headers[:3] == ["view", "PSNR", "SSIM"]
    assert rows[0][:3] == ["mean of 2 test views", "26.1234", "0.8321"]
    assert ["view_008", "26.7466", "0.8542", "n/a"] in rows
    assert len(svgs) == 4 and all(w > 100 for w in svgs)  # three curves and the camera layout
    assert all(u.startswith(("file:", "data:")) for u in requests)  # nothing fetched from a network
