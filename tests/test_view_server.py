"""The viewer's server through viser's public API (no decoding of viser's private websocket
format): the page, what the scene holds, the live listener without a browser, `recon view`
and Ctrl-C, a taken port. Browsers (several clients, server renders at each one's camera,
the buttons) are in tests/test_view_browser.py; the token in tests/test_view_access.py."""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from recon.geometry import look_at
from recon.optimise.events import FitControl, FitFinished, FitStarted, StepEvent
from recon.types import Camera, Gaussians
from recon.view.scene import CameraSet, SceneView
from recon.view.server import ViewerServer


# ----------------------------------------------------------------------------- fixtures
def make_gaussians(n: int = 300, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.3,  # [N, 3]
        log_scales=torch.full((n, 3), -3.0) + 0.3 * torch.randn(n, 3, generator=gen),  # [N, 3]
        quats=torch.randn(n, 4, generator=gen),  # [N, 4]
        opacity_logits=torch.randn(n, generator=gen),  # [N]
        sh=torch.randn(n, 4, 3, generator=gen) * 0.5,  # [N, 4, 3] degree 1
    )


def make_cameras(n: int = 3, width: int = 64, height: int = 48) -> tuple[Camera, ...]:
    K = torch.tensor([[60.0, 0.0, width / 2], [0.0, 60.0, height / 2], [0.0, 0.0, 1.0]])
    cams = []
    for a in np.linspace(0.0, 1.2, n):
        eye = torch.tensor([2.0 * math.sin(a), -0.3, -2.0 * math.cos(a)])
        cams.append(Camera(K, look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0])), width, height))
    return tuple(cams)


def test_scene_content_through_viser_public_handles():
    """What the browser is sent, read back from viser's public handles (the browser test
    checks the splats are drawn): the splats, a frustum per camera at its centre, the
    initial camera at the first input camera, and the camera frame's visibility."""
    g, cams = make_gaussians(), make_cameras()
    server = ViewerServer(port=0, announce=False)
    scene = SceneView(server)
    try:
        scene.set_gaussians(g)
        scene.set_cameras(CameraSet(cams[:2], ("left", "mid"), cams[2:], ("test/0",)))
        assert server.host == "127.0.0.1"
        html = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert "<html" in html.lower() and "<script" in html.lower()
        assert scene.splats is not None and scene.splats.name == "/gaussians"
        assert set(scene.frustums) == {"/cameras/train/left", "/cameras/train/mid", "/cameras/test/test_0"}
        np.testing.assert_allclose(scene.frustums["/cameras/train/mid"].position, cams[1].centre.numpy(), atol=1e-5)
        np.testing.assert_allclose(server.viser.initial_camera.position, cams[0].centre.numpy(), atol=1e-5)
        scene.show_cameras.value = False
        assert scene.camera_root.visible is False
        scene.mode.value = "rgb"  # server renders replace the browser-side splats
        assert scene.splats is None
    finally:
        scene.close()
        server.stop()


class CountingGaussians:
    """StepEvent.gaussians stand-in that counts snapshots (the copy the viewer pays for)."""

    def __init__(self, g: Gaussians) -> None:
        self.g, self.calls = g, 0

    def __call__(self) -> Gaussians:
        self.calls += 1
        return self.g


def _step(i: int, total: int, source: CountingGaussians) -> StepEvent:
    return StepEvent(iteration=i, total_iterations=total, loss=1.0 / i, psnr=10.0 + i * 0.01,
                     num_gaussians=len(source.g), sh_degree=1, seconds=i * 0.01, gaussians=source)


def test_live_viewer_copies_nothing_without_a_browser_and_sends_the_final_state_when_stopped():
    """(With a browser connected, throttling and the Pause/Stop buttons are tested in
    tests/test_view_browser.py.)"""
    from recon.view.live import LiveViewer

    g, cams = make_gaussians(), make_cameras()
    control = FitControl()
    viewer = LiveViewer(port=0, control=control, update_every=0.2, panel_interval=0.0, announce=False)
    source = CountingGaussians(g)
    try:
        viewer.on_start(FitStarted(run_dir="/tmp/run", train_cameras=cams, train_names=("a", "b", "c"),
                                   test_cameras=(), test_names=(), total_iterations=10_000))
        for i in range(1, 200):  # no browser: the Gaussians are never copied
            viewer.on_step(_step(i, 10_000, source))
        assert source.calls == 0
        viewer.request_stop()
        assert control.stop_requested and "stopping" in viewer.state.content
        viewer.on_finish(FitFinished(iteration=199, run_dir="/tmp/run",
                                     metrics={"test": {"psnr": 21.5, "ssim": 0.75}, "num_gaussians": 300}))
        assert "test psnr 21.5" in viewer.state.content and "num_gaussians 300" in viewer.state.content
        # Stopped before the last iteration: the final state is still sent, in full.
        assert source.calls == 1
        deadline = time.monotonic() + 10
        while viewer.pushes == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert viewer.pushes == 1 and viewer.scene.gaussians.sh.shape[1] == 4
    finally:
        viewer.close()


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_recon_view_serves_a_run_and_stops_cleanly_on_ctrl_c(tmp_path):
    import json

    from recon.export.ply import write_ply

    run = tmp_path / "run"
    run.mkdir()
    write_ply(run / "point_cloud.ply", make_gaussians())
    cams = make_cameras()
    (run / "cameras.json").write_text(json.dumps({"cameras": [
        {"name": f"v{i}", "split": "train", "K": c.K.tolist(), "T_cam_world": c.T_cam_world.tolist(),
         "width": c.width, "height": c.height} for i, c in enumerate(cams)]}))
    proc = subprocess.Popen([sys.executable, "-m", "recon.cli", "view", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline, url_line = time.monotonic() + 120, ""
        while time.monotonic() < deadline and not url_line and proc.poll() is None:
            url_line = next((ln for ln in list(lines) if ln.startswith("viewer: open http://127.0.0.1:")), "")
            time.sleep(0.05)
        assert url_line, "".join(lines)
        port = int(url_line.split("http://127.0.0.1:")[1].split()[0])
        assert "<html" in urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10).read().decode().lower()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    assert any("viewer: stopping" in ln for ln in lines), "".join(lines)
    assert not _port_in_use(port)


def test_taken_port_is_a_clear_error():
    from recon.errors import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*--port"):
            ViewerServer(port=port, announce=False)


def reference_render(g, cams, settings):
    from dataclasses import replace

    from recon.render import render

    return render(g, cams, replace(settings, backend="reference"))


class _FakeClient:
    """A connected browser as SceneView sees it: an id, a camera state and a scene."""

    def __init__(self, client_id: int, cam: Camera) -> None:
        from recon.view.scene import camera_wxyz_position, vertical_fov

        wxyz, pos = camera_wxyz_position(cam)
        self.client_id, self.frames = client_id, 0
        self.camera = type("CameraState", (), dict(wxyz=wxyz, position=pos, fov=vertical_fov(cam),
                                                  image_width=cam.width, image_height=cam.height))()
        self.scene = self

    def set_background_image(self, image, **_):
        self.frames += 1


def test_server_renders_share_one_budget_round_robin_latest_camera_wins(monkeypatch):
    """16 browsers moving their cameras as fast as they can: renders take at most the budget's
    share of wall time, every browser is served in turn, older cameras are superseded (one
    pending entry per browser, whatever the request rate)."""
    from types import SimpleNamespace

    cams = make_cameras()
    server = ViewerServer(port=0, announce=False)

    def slow_render(g, cams, settings):  # a 20 ms rasteriser
        time.sleep(0.02)
        return SimpleNamespace(rgb=torch.zeros(1, cams[0].height, cams[0].width, 3))

    scene = SceneView(server, render_fn=slow_render, render_budget=0.2)
    clients = {i: _FakeClient(i, cams[i % 3]) for i in range(16)}
    monkeypatch.setattr(server.viser, "get_clients", lambda: clients)
    try:
        scene.set_gaussians(make_gaussians(50))
        scene.mode.value = "rgb"
        start = time.perf_counter()
        # Until every browser has had two frames (or 60 s on a very busy machine).
        while min(c.frames for c in clients.values()) < 2 and time.perf_counter() - start < 60:
            for client in clients.values():
                scene._request(client)  # what a camera update does
                assert len(scene._pending) <= len(clients)
            time.sleep(0.005)
        wall = time.perf_counter() - start
        frames = sorted(c.frames for c in clients.values())
        assert frames[0] >= 2 and frames[-1] - frames[0] <= 1, frames  # first come, first served
        share = scene.render_seconds / wall
        assert share <= 0.2 * 1.25, share  # the budget (a render that ended the loop may overshoot)
        assert scene.frames_superseded > 10 * scene.renders_done
    finally:
        scene.close()
        server.stop()
