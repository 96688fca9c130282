"""End to end in a real browser: headless Chromium (Debian's package, software WebGL) loads
the viewer page, receives the Gaussians over the websocket and draws them with WebGL; the
screenshot must show the coloured splats where the scene projects, on a plain background.

Needs ``/usr/bin/chromium`` (or $RECON_CHROMIUM) and the ``playwright`` Python package;
playwright never downloads a browser here. Skips with the reason when either is missing."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.geometry import look_at
from recon.types import Camera, Gaussians

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No GPU: WebGL runs on SwiftShader; newer Chromium only falls back to it when asked.
    "--enable-unsafe-swiftshader",
]
VIEWPORT = (800, 600)


def _chromium() -> str:
    path = os.environ.get("RECON_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium; or set RECON_CHROMIUM)")
    return path


def coloured_sphere(n: int = 3000) -> Gaussians:
    """Opaque Gaussians on a sphere of radius 0.5, coloured by position (saturated)."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(n, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)  # [N, 3] unit directions
    rgb = (d + 1.0) / 2.0  # [N, 3] in [0, 1]
    sh = ((rgb - 0.5) / 0.28209479177387814)[:, None, :]  # [N, 1, 3] DC only
    return Gaussians(means=0.5 * d, log_scales=torch.full((n, 3), -3.2), quats=torch.randn(n, 4, generator=gen),
                     opacity_logits=torch.full((n,), 4.0), sh=sh)


def test_browser_shows_the_splats(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    chromium = _chromium()
    from recon.view.scene import CameraSet, SceneView
    from recon.view.server import ViewerServer

    W, H = VIEWPORT
    f = 0.5 * H / math.tan(math.radians(25))  # 50 degree vertical field of view
    K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
    eye = torch.tensor([0.0, -0.5, -2.0])
    cam = Camera(K, look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0])), W, H)

    server = ViewerServer(port=0, announce=False)
    scene = SceneView(server)
    shot = tmp_path / "viewer.png"
    try:
        scene.set_gaussians(coloured_sphere())
        scene.set_cameras(CameraSet((cam,), ("front",)))
        with sync_api.sync_playwright() as pw:
            try:
                context = pw.chromium.launch_persistent_context(
                    tempfile.mkdtemp(prefix="recon-chromium-", dir=tmp_path), executable_path=chromium,
                    headless=True, args=CHROMIUM_FLAGS, viewport={"width": W, "height": H})
            except Exception as exc:  # noqa: BLE001 - a browser that cannot start is an environment issue
                pytest.skip(f"{chromium} could not start: {str(exc).splitlines()[0]}")
            try:
                page = context.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text))
                page.goto(server.url)
                page.wait_for_selector("canvas", timeout=60_000)
                assert server.wait_for_clients(1, timeout=60), console
                # Software WebGL is slow: wait until the splats have been sorted and drawn.
                page.wait_for_timeout(6000)
                page.screenshot(path=str(shot))
            finally:
                context.close()
    finally:
        scene.close()
        server.stop()

    import imageio.v3 as iio

    img = iio.imread(shot)[..., :3].astype(np.float32)  # [H, W, 3]
    assert img.shape[:2] == (H, W)
    # The sphere (radius 0.5 at distance ~2.06) projects onto a disc of radius ~130-200 px
    # (the browser's canvas and field of view differ a little from the input camera) at the
    # image centre; the lower corners of the canvas show the plain background.
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(xx - W / 2, yy - H / 2)
    inside = img[r < 110]  # [P, 3]
    background = np.concatenate([img[430:540, 60:150].reshape(-1, 3), img[430:540, 650:740].reshape(-1, 3)])
    saturation = inside.max(-1) - inside.min(-1)
    print(f"screenshot {shot}: centre saturation {saturation.mean():.1f}, centre std {inside.std(0).mean():.1f}, "
          f"background std {background.std(0).mean():.1f}")
    assert saturation.mean() > 40, "no coloured splats at the image centre (blank canvas?)"
    assert inside.std(0).mean() > 12, "the centre is one flat colour, not the splat sphere"
    assert background.std(0).mean() < 5, "the background is not plain: the view is off the scene"
    assert np.abs(inside.mean(0) - background.mean(0)).max() > 30, "the centre looks like the background"


def test_browser_off_loopback_connects_only_with_the_token(tmp_path: Path):
    """Bound to 0.0.0.0 the viewer requires its token: the printed URL loads and its websocket
    (opened by viser's client without the query string) is admitted by the page's cookie; the
    bare address gets a 403 and no client connects."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    chromium = _chromium()
    from recon.view.scene import SceneView
    from recon.view.server import ViewerServer

    server = ViewerServer(host="0.0.0.0", port=0, announce=False)
    scene = SceneView(server)
    try:
        scene.set_gaussians(coloured_sphere(200))
        with sync_api.sync_playwright() as pw:
            try:
                context = pw.chromium.launch_persistent_context(
                    tempfile.mkdtemp(prefix="recon-chromium-", dir=tmp_path), executable_path=chromium,
                    headless=True, args=CHROMIUM_FLAGS, viewport={"width": 400, "height": 300})
            except Exception as exc:  # noqa: BLE001 - a browser that cannot start is an environment issue
                pytest.skip(f"{chromium} could not start: {str(exc).splitlines()[0]}")
            try:
                page = context.new_page()
                response = page.goto(f"http://127.0.0.1:{server.port}/")
                assert response.status == 403
                assert not server.wait_for_clients(1, timeout=3)
                response = page.goto(server.url)
                assert response.status == 200
                page.wait_for_selector("canvas", timeout=60_000)
                assert server.wait_for_clients(1, timeout=60)
            finally:
                context.close()
    finally:
        scene.close()
        server.stop()
