"""The viewer over the wire: HTTP page, viser websocket protocol, several clients, server
renders at a client's camera, the live listener (throttling, pause/resume/stop), Ctrl-C."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import torch

viser = pytest.importorskip("viser")
websockets = pytest.importorskip("websockets")
zstandard = pytest.importorskip("zstandard")
msgspec = pytest.importorskip("msgspec")

from recon.geometry import look_at  # noqa: E402
from recon.optimise.events import FitControl, FitFinished, FitStarted, StepEvent  # noqa: E402
from recon.types import Camera, Gaussians  # noqa: E402
from recon.view.scene import SH_C0, CameraSet, SceneView  # noqa: E402
from recon.view.server import ViewerServer  # noqa: E402


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


def reference_render(g, cams, settings):
    from recon.render import render

    return render(g, cams, replace(settings, backend="reference"))


class VisClient:
    """A minimal viser websocket client: decodes server windows (16-byte header, zstd
    msgpack, 8-byte-aligned raw buffers) and sends plain msgpack messages."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[dict] = []
        self.buffers: list[list[bytes]] = []  # per window

    async def __aenter__(self):
        self.ws = await websockets.connect(
            f"ws://127.0.0.1:{self.port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    async def receive(self, until, timeout: float = 10.0) -> None:
        """Collects messages until ``until(self)`` is true (or fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not until(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {[m['type'] for m in self.messages][-30:]}")
            try:
                raw = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                continue
            n_inner, n_comp = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
            inner = msgspec.msgpack.decode(
                zstandard.ZstdDecompressor().decompress(raw[16:16 + n_comp], max_output_size=n_inner))
            offset, bufs = 16 + n_comp, []
            for length in inner["binaryBufferLengths"]:
                offset += (8 - offset % 8) % 8
                bufs.append(raw[offset:offset + length])
                offset += length
            for m in inner["messages"]:
                m["_buffers"] = bufs
                self.messages.append(m)

    def of_type(self, type_name: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == type_name]

    def gui_uuid(self, label: str) -> str:
        for m in self.messages:
            if m["type"].startswith("Gui") and m.get("props", {}).get("label") == label:
                return m["uuid"]
        raise AssertionError(f"no GUI element labelled {label!r}")

    def gui_value(self, label: str):
        uuid = self.gui_uuid(label)
        value = None
        for m in self.messages:
            if m.get("uuid") == uuid:
                value = m.get("value", value) if "value" in m else m.get("updates", {}).get("value", value)
        return value

    async def send(self, type_name: str, **fields) -> None:
        await self.ws.send(msgspec.msgpack.encode({"type": type_name, **fields}))

    async def send_camera(self, cam: Camera, width: int, height: int) -> None:
        from recon.view.scene import camera_wxyz_position, vertical_fov

        wxyz, pos = camera_wxyz_position(cam)
        fwd = cam.T_world_cam[:3, 2].double().numpy()
        await self.send("ViewerCameraMessage", wxyz=wxyz.tolist(), position=pos.tolist(),
                        fov=vertical_fov(cam), near=0.01, far=100.0, image_height=height,
                        image_width=width, look_at=(pos + fwd).tolist(), up_direction=[0.0, -1.0, 0.0])


def splat_buffer(message: dict) -> np.ndarray:
    """GaussianSplatsMessage -> its [N, 8] uint32 buffer (see viser's GaussianSplatsProps)."""
    ref = message["props"]["buffer"]
    return np.frombuffer(message["_buffers"][ref["__binary_index"]], dtype=np.uint32).reshape(-1, 8)


# ----------------------------------------------------------------------------- tests
def test_page_and_scene_reach_a_websocket_client():
    g, cams = make_gaussians(), make_cameras()
    server = ViewerServer(port=0, announce=False)
    scene = SceneView(server)
    try:
        scene.set_gaussians(g)
        scene.set_cameras(CameraSet(cams[:2], ("left", "mid"), cams[2:], ("test/0",)))
        assert server.host == "127.0.0.1"
        html = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert "<html" in html.lower() and "<script" in html.lower()

        async def talk():
            async with VisClient(server.port) as client:
                await client.receive(lambda c: c.of_type("ReplayDoneMessage"))
                return client

        client = asyncio.run(talk())
        (splats,) = [m for m in client.of_type("GaussianSplatsMessage") if m["name"] == "/gaussians"]
        buf = splat_buffer(splats)  # [N, 8]
        assert buf.shape == (len(g), 8)
        centers = buf[:, :3].copy().view(np.float32)  # [N, 3]
        np.testing.assert_allclose(centers, g.means.numpy(), rtol=0, atol=1e-6)
        rgba = buf[:, 7:8].copy().view(np.uint8)  # [N, 4]
        expected_rgb = ((0.5 + SH_C0 * g.sh[:, 0]).clamp(0, 1) * 255).numpy()
        np.testing.assert_allclose(rgba[:, :3], expected_rgb, atol=1.01)
        np.testing.assert_allclose(rgba[:, 3], torch.sigmoid(g.opacity_logits).numpy() * 255, atol=1.01)

        frustums = {m["name"] for m in client.of_type("CameraFrustumMessage")}
        assert frustums == {"/cameras/train/left", "/cameras/train/mid", "/cameras/test/test_0"}
        positions = {m["name"]: m["position"] for m in client.of_type("SetPositionMessage")}
        np.testing.assert_allclose(positions["/cameras/train/mid"], cams[1].centre.numpy(), atol=1e-5)
        # New browsers start at the first input camera.
        (start,) = client.of_type("SetCameraPositionMessage")[-1:]
        np.testing.assert_allclose(start["position"], cams[0].centre.numpy(), atol=1e-5)
    finally:
        scene.close()
        server.stop()


def test_two_clients_and_a_server_render_at_the_client_camera():
    g, cams = make_gaussians(n=400), make_cameras()
    server = ViewerServer(port=0, announce=False)
    scene = SceneView(server, render_fn=reference_render)
    try:
        scene.set_gaussians(g)
        scene.set_cameras(CameraSet(cams, ("a", "b", "c")))

        async def talk():
            async with VisClient(server.port) as one, VisClient(server.port) as two:
                await one.receive(lambda c: c.of_type("ReplayDoneMessage"))
                await two.receive(lambda c: c.of_type("ReplayDoneMessage"))
                # viser counts a browser as connected once it has reported its camera.
                await one.send_camera(cams[1], 64, 48)
                await two.send_camera(cams[0], 64, 48)
                await asyncio.to_thread(server.wait_for_clients, 2, 10.0)
                assert server.num_clients() == 2
                await one.send("GuiUpdateMessage", uuid=one.gui_uuid("Render mode"), updates={"value": "rgb"})
                await one.receive(lambda c: any(m["rgb_data"] for m in c.of_type("BackgroundImageMessage")),
                                  timeout=60)
                # Switching to server renders removes the client-side splats for everyone.
                await two.receive(lambda c: c.of_type("RemoveSceneNodeMessage"))
                # "Snap to input view" moves only the client that clicked.
                await two.send("GuiUpdateMessage", uuid=two.gui_uuid("Input view"), updates={"value": "train: c"})
                await two.send("GuiUpdateMessage", uuid=two.gui_uuid("Snap to input view"), updates={"value": True})
                await two.receive(lambda c: any(np.allclose(m["position"], cams[2].centre.numpy(), atol=1e-5)
                                                for m in c.of_type("SetCameraPositionMessage")))
                # Hiding the cameras hides their parent frame.
                await two.send("GuiUpdateMessage", uuid=two.gui_uuid("Show cameras"), updates={"value": False})
                await two.receive(lambda c: any(m["name"] == "/cameras" and not m["visible"]
                                                for m in c.of_type("SetSceneNodeVisibilityMessage")))
                return one

        one = asyncio.run(talk())
        import imageio.v3 as iio

        data = [m for m in one.of_type("BackgroundImageMessage") if m["rgb_data"]][-1]
        raw = data["rgb_data"]
        if isinstance(raw, dict):  # binary placeholder
            raw = data["_buffers"][raw["__binary_index"]]
        image = iio.imread(bytes(raw))
        assert image.shape[:2] == (48, 64)
        expected = scene.render_view(g, cams[1], "rgb")  # the same view rendered directly
        assert np.abs(image.astype(float) - expected.astype(float)).mean() < 6.0  # JPEG error
        assert image.std() > 5.0  # the Gaussians are in view, not a flat background
        assert scene.renders_done >= 1
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


async def eventually(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_live_viewer_throttles_pauses_and_stops():
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

        async def talk():
            async with VisClient(viewer.server.port) as client:
                await client.receive(lambda c: c.of_type("ReplayDoneMessage"))
                await client.send_camera(cams[0], 64, 48)
                assert await asyncio.to_thread(viewer.server.wait_for_clients, 1, 10.0)
                start = time.monotonic()
                i = 200
                # At least ~1 s and 50 iterations of a fast "fit" (the machine may be busy).
                while time.monotonic() - start < 1.0 or i < 250:
                    viewer.on_step(_step(i, 10_000, source))
                    i += 1
                    await asyncio.sleep(0.001)
                elapsed = time.monotonic() - start
                calls_while_stepping = source.calls
                await client.receive(lambda c: c.of_type("GaussianSplatsMessage"))
                await client.receive(lambda c: c.gui_value("Iteration") == f"{i - 1} / 10000")
                pause = client.gui_uuid("Pause")
                await client.send("GuiUpdateMessage", uuid=pause, updates={"value": True})
                assert await eventually(lambda: control.paused)
                assert await eventually(lambda: source.calls == calls_while_stepping + 1)  # paused view
                await client.send("GuiUpdateMessage", uuid=pause, updates={"value": True})
                assert await eventually(lambda: not control.paused)
                await client.send("GuiUpdateMessage", uuid=client.gui_uuid("Stop (saves a checkpoint)"),
                                  updates={"value": True})
                assert await eventually(lambda: control.stop_requested)
                return i - 200, elapsed, calls_while_stepping

        steps, elapsed, calls = asyncio.run(talk())
        # One snapshot on connect, then at most one per update_every (0.2 s).
        assert 1 <= calls <= 2 + elapsed / 0.2, (steps, elapsed, calls)
        assert viewer.pushes >= 1
        pushes, calls = viewer.pushes, source.calls
        viewer.on_finish(FitFinished(iteration=steps, run_dir="/tmp/run",
                                     metrics={"test": {"psnr": 21.5, "ssim": 0.75}, "num_gaussians": 300}))
        assert "test psnr 21.5" in viewer.state.content and "num_gaussians 300" in viewer.state.content
        # Stopped before the last iteration: the final state is still sent, in full.
        assert source.calls == calls + 1
        deadline = time.monotonic() + 10
        while viewer.pushes == pushes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert viewer.pushes == pushes + 1 and viewer.scene.gaussians.sh.shape[1] == 4
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
