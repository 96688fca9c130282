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
import time
from contextlib import contextmanager
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


@contextmanager
def browser(tmp_path: Path, viewport=(400, 300)):
    """A headless Chromium context (skips when playwright or the browser is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    chromium = _chromium()
    with sync_api.sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="recon-chromium-", dir=tmp_path), executable_path=chromium,
                headless=True, args=CHROMIUM_FLAGS, viewport={"width": viewport[0], "height": viewport[1]})
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start is an environment issue
            pytest.skip(f"{chromium} could not start: {str(exc).splitlines()[0]}")
        try:
            yield context
        finally:
            context.close()


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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
                # Software WebGL is slow (and slower on a busy machine): wait until the splats
                # have been sorted and drawn, i.e. the image centre is coloured, up to 60 s.
                import imageio.v3 as iio

                page.wait_for_timeout(3000)
                deadline = time.monotonic() + 60
                while True:
                    page.screenshot(path=str(shot))
                    centre = iio.imread(shot)[H // 2 - 60:H // 2 + 60, W // 2 - 60:W // 2 + 60, :3].astype(float)
                    if (centre.max(-1) - centre.min(-1)).mean() > 40 or time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(1000)
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


def _ring_cameras(n: int = 3, width: int = 400, height: int = 300) -> tuple[Camera, ...]:
    f = 0.5 * height / math.tan(math.radians(25))
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return tuple(Camera(K, look_at(torch.tensor([2.0 * math.sin(a), -0.5, -2.0 * math.cos(a)]), torch.zeros(3),
                                   torch.tensor([0.0, -1.0, 0.0])), width, height)
                 for a in np.linspace(0.0, 1.0, n))


def test_two_browsers_start_at_the_input_camera_and_each_gets_server_renders(tmp_path: Path):
    """Through viser's public server API: each browser reports its own camera (starting at the
    first input camera), and in rgb mode the server renders for every connected browser."""
    from recon.view.scene import CameraSet, SceneView
    from recon.view.server import ViewerServer

    cams = _ring_cameras()
    server = ViewerServer(port=0, announce=False)
    scene = SceneView(server, render_budget=1.0)
    try:
        scene.set_gaussians(coloured_sphere(500))
        scene.set_cameras(CameraSet(cams, ("a", "b", "c")))
        with browser(tmp_path) as context:
            pages = [context.new_page() for _ in range(2)]
            for page in pages:
                page.goto(server.url)
            assert server.wait_for_clients(2, timeout=90)
            clients = list(server.viser.get_clients().values())
            for client in clients:  # the initial camera is the first input camera
                assert wait_until(lambda c=client: np.allclose(c.camera.position, cams[0].centre.numpy(), atol=1e-3))
            scene.mode.value = "rgb"
            assert wait_until(lambda: all(scene.renders_by_client.get(c.client_id, 0) >= 1 for c in clients), 90), \
                scene.renders_by_client
            # "Snap to input view", clicked in one page, moves only that browser's camera.
            scene.input_view.value = "train: c"
            pages[1].get_by_role("button", name="Snap to input view").click(timeout=60_000)
            def at_c(c):
                return np.allclose(c.camera.position, cams[2].centre.numpy(), atol=1e-3)
            assert wait_until(lambda: sum(at_c(c) for c in clients) == 1, 60)
            # Moving one browser's camera (server side, public API) renders for that browser only.
            before = dict(scene.renders_by_client)
            mover = clients[0]
            with mover.atomic():
                mover.camera.position = tuple(cams[2].centre.tolist())
                mover.camera.look_at = (0.0, 0.0, 0.0)
            assert wait_until(lambda: scene.renders_by_client[mover.client_id] > before[mover.client_id], 60)
    finally:
        scene.close()
        server.stop()


def test_browser_pause_resume_and_stop_buttons_drive_the_fit(tmp_path: Path):
    """The live viewer's buttons, clicked in a real page, pause, resume and stop the fit."""
    from recon.optimise.events import FitControl, FitStarted, StepEvent
    from recon.view.live import LiveViewer

    g, cams = coloured_sphere(300), _ring_cameras()
    control = FitControl()
    viewer = LiveViewer(port=0, control=control, update_every=0.2, panel_interval=0.0, announce=False)
    try:
        viewer.on_start(FitStarted(run_dir="/tmp/run", train_cameras=cams, train_names=("a", "b", "c"),
                                   test_cameras=(), test_names=(), total_iterations=1000))
        with browser(tmp_path, viewport=(1000, 700)) as context:
            page = context.new_page()
            page.goto(viewer.server.url)
            assert viewer.server.wait_for_clients(1, timeout=90)
            # A connected browser gets snapshots, at most one per update_every (0.2 s) plus the
            # one on connect: the trainer's Gaussians are not copied at every step.
            snapshots = []
            def source():
                return snapshots.append(1) or g
            start, i = time.monotonic(), 1
            while time.monotonic() - start < 1.0 or i < 50:
                viewer.on_step(StepEvent(i, 1000, 1.0 / i, 10.0, len(g), 0, i * 0.01, source))
                i += 1
                time.sleep(0.005)
            elapsed = time.monotonic() - start
            assert 1 <= len(snapshots) <= 2 + elapsed / 0.2, (len(snapshots), i, elapsed)
            assert wait_until(lambda: viewer.pushes >= 1)
            page.get_by_role("button", name="Pause").click(timeout=60_000)
            assert wait_until(lambda: control.paused)
            page.get_by_role("button", name="Resume").click(timeout=60_000)
            assert wait_until(lambda: not control.paused)
            page.get_by_role("button", name="Stop (saves a checkpoint)").click(timeout=60_000)
            assert wait_until(lambda: control.stop_requested)
    finally:
        viewer.close()
