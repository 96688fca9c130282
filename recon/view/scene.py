"""What the browser sees: the Gaussians, the cameras, and the view controls.

Two ways to show Gaussians:

* **splats** (default): the Gaussians go to the browser once per update as viser
  Gaussian splats and the browser rasterises them with WebGL at interactive rates. viser
  splats carry one RGB colour each, so they show the SH DC term (view-independent colour).
* **rgb / depth / alpha**: the server renders the client's current view with
  ``recon.render.render`` (every SH band up to the chosen degree) and sends the image as
  the scene background.

Server renders are shared out under one budget, however many browsers are connected: one
worker thread renders the waiting clients in turn (first come, first served), each at its
latest camera (a camera that moves again before its frame is done replaces the request:
a superseded frame, counted in ``frames_superseded``), and after a render that took t
seconds it rests t * (1 - b) / b, so renders use at most a fraction b = ``render_budget``
of the wall time. The budget matters because the rasteriser holds the GIL while it runs:
a render beside a fit pauses the fit's thread. Memory stays bounded: one pending entry per
client, and viser keeps only the newest background image per client in its send buffer.
(apps/viewer_load.py measures latency, superseded frames and the fit's slowdown.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recon.geometry import invert_pose, make_pose, quat_to_rotmat, rotmat_to_quat, world_to_camera
from recon.types import Camera, Gaussians, RenderOutput, RenderSettings
from recon.visual import colour_depth

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, Y_0^0
RENDER_MODES = ("splats", "rgb", "depth", "alpha")
MAX_SERVER_RENDER_SIDE = 512  # CPU rasterisation: keep interactive renders small
RENDER_BUDGET = 0.1  # share of wall time all server renders together may use (a fit beside them pauses)
THUMBNAIL_HEIGHT = 96
TRAIN_COLOUR = (40, 110, 230)
TEST_COLOUR = (230, 120, 30)

RenderFn = Callable[[Gaussians, Sequence[Camera], RenderSettings], RenderOutput]


@dataclass(frozen=True)
class SplatArrays:
    """Gaussians in the form ``viser``'s ``add_gaussian_splats`` takes."""

    centers: np.ndarray  # [N, 3] float32
    covariances: np.ndarray  # [N, 3, 3] float32 world-space covariance
    rgbs: np.ndarray  # [N, 3] float32 in [0, 1], SH DC colour
    opacities: np.ndarray  # [N, 1] float32 in [0, 1]


def splat_arrays(gaussians: Gaussians) -> SplatArrays:
    """Optimisation-space Gaussians -> world covariances, DC colours, opacities."""
    g = gaussians.detach().to("cpu")
    with torch.no_grad():
        R = quat_to_rotmat(g.quats.float())  # [N, 3, 3]
        scales = torch.exp(g.log_scales.float())  # [N, 3]
        M = R * scales[:, None, :]  # [N, 3, 3] = R @ diag(s)
        cov = M @ M.transpose(1, 2)  # [N, 3, 3]
        rgb = (0.5 + SH_C0 * g.sh[:, 0].float()).clamp(0.0, 1.0)  # [N, 3]
        opacity = torch.sigmoid(g.opacity_logits.float())[:, None]  # [N, 1]
    return SplatArrays(
        centers=g.means.float().numpy().astype(np.float32, copy=False),
        covariances=cov.numpy().astype(np.float32, copy=False),
        rgbs=rgb.numpy().astype(np.float32, copy=False),
        opacities=opacity.numpy().astype(np.float32, copy=False),
    )


def vertical_fov(camera: Camera) -> float:
    """Vertical field of view in radians (viser frustums and cameras use it)."""
    return float(2.0 * np.arctan2(camera.height / 2.0, float(camera.K[1, 1])))


def camera_wxyz_position(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world rotation as a (w, x, y, z) quaternion and the camera centre: the
    pose viser frustums and client cameras take (both use OpenCV camera axes)."""
    T_world_cam = invert_pose(camera.T_cam_world.double())  # [4, 4]
    wxyz = rotmat_to_quat(T_world_cam[:3, :3]).numpy()
    return wxyz, T_world_cam[:3, 3].numpy()


def camera_from_viser(
    wxyz: np.ndarray, position: np.ndarray, fov: float, width: int, height: int
) -> Camera:
    """A viser client camera (T_world_cam as wxyz + position, vertical fov) -> Camera."""
    R_world_cam = quat_to_rotmat(torch.as_tensor(np.asarray(wxyz), dtype=torch.float64))
    T_world_cam = make_pose(R_world_cam, torch.as_tensor(np.asarray(position), dtype=torch.float64))
    f = (height / 2.0) / np.tan(fov / 2.0)
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return Camera(K=K.float(), T_cam_world=invert_pose(T_world_cam).float(), width=width, height=height)


def capped_size(width: int, height: int, max_side: int = MAX_SERVER_RENDER_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def scene_up(cameras: Sequence[Camera]) -> np.ndarray:
    """World "up" as the cameras see it: the mean of their -y axes (OpenCV y is down)."""
    ups = [-invert_pose(c.T_cam_world.double())[:3, 1].numpy() for c in cameras]
    up = np.mean(ups, axis=0)
    norm = np.linalg.norm(up)
    return up / norm if norm > 1e-8 else np.array([0.0, -1.0, 0.0])


def orbit_axis(cameras: Sequence[Camera]) -> np.ndarray:
    """Up axis of the orbit: the normal of the plane through the camera centres (captures
    circle the object), when they span a plane that is roughly level for the cameras;
    otherwise the cameras' mean up direction. [3] unit vector"""
    up = scene_up(cameras)
    centres = np.stack([c.centre.double().numpy() for c in cameras])  # [V, 3]
    if len(centres) >= 4:  # three points always span a plane: not evidence of a ring
        _, sv, vt = np.linalg.svd(centres - centres.mean(0))
        normal = vt[2] if vt[2] @ up > 0 else -vt[2]
        planar = sv[1] > 1e-6 and sv[2] < 0.2 * sv[1]
        if planar and normal @ up > np.cos(np.radians(30.0)):
            return normal
    return up


def look_distance(camera: Camera, points: np.ndarray | None) -> float:
    """Median depth of ``points`` [N, 3] in front of ``camera``: where to put the orbit
    centre so the browser camera turns around the scene, not around the lens."""
    if points is None or len(points) == 0:
        return 1.0
    z = world_to_camera(camera.T_cam_world.double(), torch.as_tensor(points, dtype=torch.float64))[:, 2].numpy()
    z = z[z > 1e-3]
    return float(np.median(z)) if len(z) else 1.0


def _thumbnail(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> small uint8 image for a frustum."""
    img = image.detach().float().cpu().clamp(0, 1)
    step = max(1, int(img.shape[0]) // THUMBNAIL_HEIGHT)
    return (img[::step, ::step].numpy() * 255).astype(np.uint8)


def colourise(out: RenderOutput, mode: str) -> np.ndarray:
    """First camera of a render -> uint8 [H, W, 3] image for the given mode."""
    if mode == "rgb":
        img = out.rgb[0].detach().clamp(0, 1).cpu().numpy()
    elif mode == "alpha":
        img = np.repeat(out.alpha[0].detach().clamp(0, 1).cpu().numpy()[..., None], 3, axis=-1)
    elif mode == "depth":  # the run folder's depth colouring (renders/depth/*.png)
        img = colour_depth(out.depth[0]).numpy()
    else:
        raise ValueError(f"render mode {mode!r} is not one of {RENDER_MODES}")
    return (img * 255).round().astype(np.uint8)


def default_render_fn(gaussians: Gaussians, cameras: Sequence[Camera], settings: RenderSettings) -> RenderOutput:
    from recon.render import render

    return render(gaussians, list(cameras), settings)


@dataclass
class CameraSet:
    train: tuple[Camera, ...] = ()
    train_names: tuple[str, ...] = ()
    test: tuple[Camera, ...] = ()
    test_names: tuple[str, ...] = ()
    thumbnails: tuple = ()  # train images [H, W, 3], optional


class SceneView:
    """Keeps the browser scene in step with the current Gaussians and cameras.

    Thread-safe: ``set_gaussians`` may be called from any thread; the GUI callbacks run
    on viser's threads; server renders run on this object's worker thread."""

    def __init__(self, server, *, render_fn: RenderFn | None = None, background=(0.0, 0.0, 0.0),
                 render_budget: float = RENDER_BUDGET) -> None:
        if not 0.0 < render_budget <= 1.0:
            raise ValueError(f"render_budget must be in (0, 1], got {render_budget}")
        self.server = server
        self.render_budget = float(render_budget)
        self.render_fn = render_fn or default_render_fn
        self.background = tuple(float(b) for b in background)
        self._lock = threading.Lock()
        self._gaussians: Gaussians | None = None
        self._cameras = CameraSet()
        self._splats = None  # viser GaussianSplatHandle
        self._camera_root = None  # viser FrameHandle parenting every frustum
        self.frustums: dict[str, object] = {}  # scene node name -> viser CameraFrustumHandle
        self._pending: dict[int, object] = {}  # client id -> ClientHandle awaiting a render, oldest first
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self.renders_done = 0  # server renders sent (tests, overhead accounting)
        self.frames_superseded = 0  # render requests replaced by a newer camera before they ran
        self.renders_by_client: dict[int, int] = {}  # client id -> renders sent (connected clients only)
        self.render_seconds = 0.0  # total time spent rendering, encoding and sending for clients
        self.last_render_seconds = 0.0
        self._build_gui()
        self._worker = threading.Thread(target=self._render_loop, name="recon-view-render", daemon=True)
        self._worker.start()
        server.viser.on_client_connect(self._on_connect)

    # ---------------------------------------------------------------- GUI
    def _build_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("View"):
            self.mode = gui.add_dropdown("Render mode", RENDER_MODES, initial_value="splats",
                                         hint="splats: the browser draws the Gaussians (DC colour); "
                                              "rgb/depth/alpha: the server renders your view")
            self.sh_degree = gui.add_slider("SH degree", min=0, max=3, step=1, initial_value=3,
                                            hint="bands used by server renders (rgb mode)")
            self.show_cameras = gui.add_checkbox("Show cameras", initial_value=True)
            self.input_view = gui.add_dropdown("Input view", ("(none)",), initial_value="(none)")
            self.snap = gui.add_button("Snap to input view")
            self.status = gui.add_markdown("")
        self.mode.on_update(lambda _: self._mode_changed())
        self.sh_degree.on_update(lambda _: self._request_all())
        self.show_cameras.on_update(lambda _: self._set_cameras_visible(self.show_cameras.value))
        self.snap.on_click(lambda event: self._snap(event.client))

    def _on_connect(self, client) -> None:
        # New browsers start from server.initial_camera (set in set_cameras).
        client.camera.on_update(lambda cam: self._request(cam.client))

    # ---------------------------------------------------------------- content
    def set_gaussians(self, gaussians: Gaussians) -> None:
        """Shows ``gaussians`` (copied to the CPU) in every connected browser."""
        g = gaussians.detach().to("cpu")
        with self._lock:
            first, self._gaussians = self._gaussians is None, g
        if first and self._cameras.train:  # the orbit centre depends on where the Gaussians are
            self._place_initial_camera()
        if self.mode.value == "splats":
            self._push_splats(g)
        self._request_all()

    @property
    def gaussians(self) -> Gaussians | None:
        return self._gaussians

    @property
    def splats(self):
        """The viser GaussianSplatHandle shown in splat mode (None in server-render modes)."""
        return self._splats

    @property
    def camera_root(self):
        """The viser FrameHandle that parents every camera frustum."""
        return self._camera_root

    def _push_splats(self, g: Gaussians) -> None:
        arrays = splat_arrays(g)
        # Re-adding a node under the same name replaces it in every client.
        self._splats = self.server.scene.add_gaussian_splats(
            "/gaussians", centers=arrays.centers, covariances=arrays.covariances,
            rgbs=arrays.rgbs, opacities=arrays.opacities,
        )

    def set_cameras(self, cameras: CameraSet) -> None:
        """Frustums for the input (train) cameras, with thumbnails, and the test cameras."""
        self._cameras = cameras
        scene = self.server.scene
        self._camera_root = scene.add_frame("/cameras", show_axes=False,
                                            visible=bool(self.show_cameras.value))
        for kind, cams, names, colour in (
            ("train", cameras.train, cameras.train_names, TRAIN_COLOUR),
            ("test", cameras.test, cameras.test_names, TEST_COLOUR),
        ):
            for i, (cam, name) in enumerate(zip(cams, names)):
                wxyz, pos = camera_wxyz_position(cam)
                image = None
                if kind == "train" and i < len(cameras.thumbnails):
                    image = _thumbnail(cameras.thumbnails[i])
                node = f"/cameras/{kind}/{_node_name(name, i)}"
                self.frustums[node] = scene.add_camera_frustum(
                    node, fov=vertical_fov(cam),
                    aspect=cam.width / cam.height, scale=self._frustum_scale(), color=colour,
                    image=image, wxyz=wxyz, position=pos, variant="wireframe",
                )
        if cameras.train:
            scene.set_up_direction(tuple(orbit_axis(cameras.train)))
        options = tuple(f"train: {n}" for n in cameras.train_names) + tuple(
            f"test: {n}" for n in cameras.test_names)
        if options:
            self.input_view.options = options
            self.input_view.value = options[0]
        self._place_initial_camera()

    def _frustum_scale(self) -> float:
        cams = self._cameras.train + self._cameras.test
        if len(cams) < 2:
            return 0.1
        centres = np.stack([c.centre.double().numpy() for c in cams])
        spread = np.linalg.norm(centres - centres.mean(0), axis=1).mean()
        return float(max(spread * 0.15, 1e-3))

    def _set_cameras_visible(self, visible: bool) -> None:
        if self._camera_root is not None:
            self._camera_root.visible = visible  # children follow their parent frame

    def selected_camera(self) -> Camera | None:
        value = self.input_view.value
        for prefix, cams, names in (("train: ", self._cameras.train, self._cameras.train_names),
                                    ("test: ", self._cameras.test, self._cameras.test_names)):
            for cam, name in zip(cams, names):
                if value == prefix + name:
                    return cam
        return None

    def _snap(self, client) -> None:
        cam = self.selected_camera()
        if cam is None or client is None:
            return
        self._move_client(client, cam)

    def _move_client(self, client, cam: Camera) -> None:
        wxyz, pos = camera_wxyz_position(cam)
        points = self._gaussians.means.numpy() if self._gaussians is not None else None
        forward = invert_pose(cam.T_cam_world.double())[:3, 2].numpy()
        up = -invert_pose(cam.T_cam_world.double())[:3, 1].numpy()
        with client.atomic():
            client.camera.fov = vertical_fov(cam)
            client.camera.position = pos
            client.camera.look_at = pos + forward * look_distance(cam, points)
            client.camera.up_direction = up

    def _place_initial_camera(self) -> None:
        """New browsers start at the first input camera, orbiting the scene centre."""
        if not self._cameras.train:
            return
        cam = self._cameras.train[0]
        _, pos = camera_wxyz_position(cam)
        T_world_cam = invert_pose(cam.T_cam_world.double()).numpy()
        points = self._gaussians.means.numpy() if self._gaussians is not None else None
        look = pos + T_world_cam[:3, 2] * look_distance(cam, points)
        initial = self.server.viser.initial_camera
        initial.position = tuple(pos)
        initial.look_at = tuple(look)
        initial.up = tuple(-T_world_cam[:3, 1])
        initial.fov = vertical_fov(cam)

    # ---------------------------------------------------------------- server renders
    def _mode_changed(self) -> None:
        mode = self.mode.value
        if mode == "splats":
            if self._gaussians is not None:
                self._push_splats(self._gaussians)
            self.server.scene.set_background_image(None)
            self.status.content = ""
        else:
            if self._splats is not None:
                self._splats.remove()
                self._splats = None
            self._request_all()

    def _request_all(self) -> None:
        if self.mode.value == "splats":
            return
        for client in self.server.viser.get_clients().values():
            self._request(client)

    def _request(self, client) -> None:
        if self.mode.value == "splats" or self._closed:
            return
        with self._lock:
            if client.client_id in self._pending:
                self.frames_superseded += 1  # keeps its place in the queue; renders at the newest camera
            self._pending[client.client_id] = client
        self._wake.set()

    def _render_loop(self) -> None:
        rest_until = 0.0
        while not self._closed:
            self._wake.wait(0.5)
            if self._closing.wait(max(0.0, rest_until - time.perf_counter())):
                break  # closed while resting
            with self._lock:
                self._wake.clear()
                if not self._pending or self._gaussians is None:
                    continue
                client_id = next(iter(self._pending))
                client = self._pending.pop(client_id)
                g = self._gaussians
                if self._pending:
                    self._wake.set()
            start = time.perf_counter()
            try:
                self._render_for(client, g)
            except Exception as exc:  # noqa: BLE001 - show the reason in the panel, keep serving
                self.status.content = f"server render failed: {type(exc).__name__}: {exc}"
            cost = time.perf_counter() - start
            self.render_seconds += cost
            rest_until = time.perf_counter() + cost * (1.0 - self.render_budget) / self.render_budget

    def render_view(self, g: Gaussians, cam: Camera, mode: str) -> np.ndarray:
        settings = RenderSettings(sh_degree=min(int(self.sh_degree.value), g.sh_degree),
                                  background=self.background)
        with torch.no_grad():
            out = self.render_fn(g, [cam], settings)
        return colourise(out, mode)

    def _render_for(self, client, g: Gaussians) -> None:
        mode = self.mode.value
        if mode == "splats":
            return
        try:
            state = client.camera
            width, height = capped_size(state.image_width, state.image_height)
            cam = camera_from_viser(state.wxyz, state.position, state.fov, width, height)
        except AssertionError:  # this client has not reported its camera yet
            return
        start = time.perf_counter()
        try:
            image = self.render_view(g, cam, mode)
        except NotImplementedError as exc:
            self.status.content = f"server rendering unavailable ({exc}); showing splats"
            self.mode.value = "splats"
            return
        if client.client_id not in self.server.viser.get_clients():
            return  # the browser left while we rendered
        self.last_render_seconds = time.perf_counter() - start
        client.scene.set_background_image(image, format="jpeg", jpeg_quality=85)
        self.renders_done += 1
        connected = self.server.viser.get_clients()
        counts = {cid: n for cid, n in self.renders_by_client.items() if cid in connected}  # bounded
        counts[client.client_id] = counts.get(client.client_id, 0) + 1
        self.renders_by_client = counts

    def close(self) -> None:
        self._closed = True
        self._closing.set()
        self._wake.set()
        self._worker.join(timeout=5.0)


def _node_name(name: str, index: int) -> str:
    """Scene node names are paths: keep them free of slashes and spaces."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
    return safe or f"camera_{index:03d}"
