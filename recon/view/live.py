"""Watch a fit while it runs: a ``FitListener`` that serves the viewer.

Cost budget: the viewer must not slow a fit by more than 10%. So ``on_step`` (which runs
on the trainer's thread, every iteration) only compares clocks, except:

* every ``panel_interval`` seconds it updates the progress panel (a few short messages);
* every ``update_every`` seconds, and only while a browser is connected, it clones the
  Gaussians (one memcpy of the parameters, so the worker never sees a half-updated
  state) and hands them to a background thread, which converts and sends them. When a
  push costs more than ``PUSH_BUDGET`` of the interval (millions of Gaussians), the
  interval grows to match.

With no browser connected the Gaussians are never copied.
"""

from __future__ import annotations

import threading
import time

from recon.optimise.events import FitControl, FitFinished, FitStarted, StepEvent
from recon.types import Gaussians
from recon.view.scene import CameraSet, SceneView
from recon.view.server import DEFAULT_HOST, DEFAULT_PORT, ViewerServer

PUSH_BUDGET = 0.02  # at most ~2% of wall time spent copying, converting and sending splats


def _clone(g: Gaussians, dc_only: bool = False) -> Gaussians:
    """A CPU copy the trainer cannot change under us. Browser splats only show the DC
    colour, so ``dc_only`` skips the higher SH bands (3/4 of the bytes at degree 3)."""
    sh = g.sh[:, :1] if dc_only else g.sh
    tensors = (g.means, g.log_scales, g.quats, g.opacity_logits, sh)
    return Gaussians(*(t.detach().to("cpu", copy=True) for t in tensors))


def _consistent(g: Gaussians) -> bool:
    n = g.means.shape[0]
    return all(t.shape[0] == n for t in g.tensors())


class LiveViewer:
    """``recon fit --view`` adds ``LiveViewer(host=..., port=..., control=FitControl)`` as a
    listener. Pause/Resume/Stop buttons drive ``control``."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        control: FitControl | None = None,
        *,
        update_every: float = 2.0,
        panel_interval: float = 0.25,
        render_fn=None,
        announce: bool = True,
        token: str | None = None,
    ) -> None:
        self.control = control
        self.update_every = float(update_every)
        self.panel_interval = float(panel_interval)
        self.server = ViewerServer(host, port, title="recon fit", announce=announce, token=token)
        self.scene = SceneView(self.server, render_fn=render_fn)
        self._build_panel()
        self._last_panel = 0.0
        self._last_push = float("-inf")
        self._interval = self.update_every  # grows for scenes whose pushes are expensive
        self._clone_seconds = 0.0
        self._force_push = threading.Event()  # a browser connected or the fit was paused
        self._last_event: StepEvent | None = None
        self._queue: Gaussians | None = None
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.pushes = 0  # Gaussians snapshots sent to browsers (tests, overhead accounting)
        self._worker = threading.Thread(target=self._push_loop, name="recon-live-push", daemon=True)
        self._worker.start()
        self.server.viser.on_client_connect(lambda _client: self._force_push.set())
        # Leaving splat mode needs every SH band, which splat-mode snapshots leave out.
        self.scene.mode.on_update(lambda _: self._force_push.set())

    # ---------------------------------------------------------------- panel
    def _build_panel(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Fit", order=0):
            self.progress = gui.add_progress_bar(0.0)
            self.iteration = gui.add_text("Iteration", "0", disabled=True)
            self.loss = gui.add_text("Loss", "-", disabled=True)
            self.psnr = gui.add_text("PSNR (train)", "-", disabled=True)
            self.count = gui.add_text("Gaussians", "-", disabled=True)
            self.elapsed = gui.add_text("Time", "-", disabled=True)
            self.state = gui.add_markdown("waiting for the fit to start")
            self.pause_button = gui.add_button("Pause", disabled=self.control is None)
            self.stop_button = gui.add_button("Stop (saves a checkpoint)", color="red",
                                              disabled=self.control is None)
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.stop_button.on_click(lambda _: self.request_stop())

    def toggle_pause(self) -> None:
        if self.control is None:
            return
        if self.control.paused:
            self.control.resume()
            self.pause_button.label = "Pause"
            self.state.content = "running"
        else:
            self.control.pause()
            self.pause_button.label = "Resume"
            self.state.content = "paused"
            # Show the paused state: the trainer is (or is about to be) blocked between
            # iterations, so the parameters are stable enough to snapshot from here.
            threading.Timer(0.3, self._snapshot_while_paused).start()

    def _snapshot_while_paused(self) -> None:
        event = self._last_event
        if self.control is None or not self.control.paused or event is None:
            return
        g = _clone(event.gaussians())
        if _consistent(g):
            self._enqueue(g)

    def request_stop(self) -> None:
        if self.control is not None:
            self.control.stop()
            self.state.content = "stopping after this iteration"

    # ---------------------------------------------------------------- FitListener
    def on_start(self, event: FitStarted) -> None:
        self.total = event.total_iterations
        self.scene.background = tuple(float(c) for c in event.background)  # as the fit renders (e.g. LLFF's mean colour)
        self.scene.set_cameras(CameraSet(
            train=tuple(event.train_cameras), train_names=tuple(event.train_names),
            test=tuple(event.test_cameras), test_names=tuple(event.test_names),
            thumbnails=tuple(event.thumbnails),
        ))
        self.state.content = f"fitting into `{event.run_dir}`"

    def on_step(self, event: StepEvent) -> None:
        if self._closed:
            return
        self._last_event = event
        now = time.perf_counter()
        last = event.iteration >= event.total_iterations
        if last or now - self._last_panel >= self.panel_interval:
            self._last_panel = now
            self._update_panel(event)
        due = now - self._last_push >= self._interval or self._force_push.is_set()
        if (due or last) and self.server.num_clients() > 0:
            self._force_push.clear()
            self._last_push = now
            # Server renders (rgb mode) need every SH band; browser splats only the DC term.
            dc_only = self.scene.mode.value == "splats" and not last  # keep the final state whole
            self._enqueue(_clone(event.gaussians(), dc_only=dc_only))
            self._clone_seconds = time.perf_counter() - now
        elif last:
            # Keep the final state for browsers that connect after the fit ends.
            self._enqueue(_clone(event.gaussians()))

    def on_finish(self, event: FitFinished) -> None:
        last = self._last_event
        if last is not None and last.iteration < last.total_iterations and not self._closed:
            # Stopped early: the fit is over, so its parameters are stable to copy here.
            self._enqueue(_clone(last.gaussians()))
        test = event.metrics.get("test") if isinstance(event.metrics.get("test"), dict) else {}
        shown = {**{f"test {k}": v for k, v in test.items() if k in ("psnr", "ssim", "lpips")},
                 **{k: v for k, v in event.metrics.items() if k in ("psnr", "num_gaussians", "fit_seconds")}}
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
        self.state.content = f"finished at iteration {event.iteration}" + (f": {metrics}" if metrics else "")
        self.pause_button.disabled = True
        self.stop_button.disabled = True

    def _update_panel(self, event: StepEvent) -> None:
        total = max(event.total_iterations, 1)
        self.progress.value = 100.0 * event.iteration / total
        self.iteration.value = f"{event.iteration} / {event.total_iterations}"
        self.loss.value = f"{event.loss:.5f}"
        self.psnr.value = f"{event.psnr:.2f} dB"
        self.count.value = f"{event.num_gaussians:,} (SH {event.sh_degree})"
        self.elapsed.value = f"{event.seconds:.1f} s"

    # ---------------------------------------------------------------- background push
    def _enqueue(self, g: Gaussians) -> None:
        with self._queue_lock:
            self._queue = g  # latest wins: an unsent older snapshot is dropped
        self._wake.set()

    def _push_loop(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._queue_lock:
                g, self._queue = self._queue, None
            if g is not None and not self._closed:
                start = time.perf_counter()
                self.scene.set_gaussians(g)
                self.pushes += 1
                # Self-throttle: large scenes cost more per push, so push less often and
                # keep the viewer's share of the machine under PUSH_BUDGET.
                cost = time.perf_counter() - start + self._clone_seconds
                if self.scene.mode.value != "splats":  # each push also re-renders every client
                    cost += self.scene.last_render_seconds * max(1, self.server.num_clients())
                self._interval = max(self.update_every, cost / PUSH_BUDGET)

    # ---------------------------------------------------------------- lifetime
    def serve_forever(self) -> None:
        """After the fit: keep serving until Ctrl-C."""
        self.server.serve_forever()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._worker.join(timeout=5.0)
        self.scene.close()
        self.server.stop()

    def __enter__(self) -> LiveViewer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
