"""What the trainer tells the outside world, and how the outside world steers it.

The trainer owns no sockets, files or UI: it calls listeners with these events. A viewer,
a progress bar or a logger is a listener. Listeners must return quickly; one that needs
the Gaussians copies them (``event.gaussians()`` returns detached tensors) and does its
own work elsewhere (the viewer throttles and renders on its own thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from recon.types import Camera, Gaussians


@dataclass(frozen=True)
class FitStarted:
    run_dir: str
    train_cameras: tuple[Camera, ...]
    train_names: tuple[str, ...]
    test_cameras: tuple[Camera, ...]
    test_names: tuple[str, ...]
    total_iterations: int
    thumbnails: tuple = ()  # train images [H, W, 3] float tensors, for frustum thumbnails
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)  # what the fit renders behind its Gaussians


@dataclass(frozen=True)
class StepEvent:
    iteration: int  # 1-based
    total_iterations: int
    loss: float
    psnr: float  # on the training batch of the latest logged step (every log_every steps, the first and the last)
    num_gaussians: int
    sh_degree: int  # active SH degree
    seconds: float  # wall time since the fit started (excluding pauses)
    gaussians: Callable[[], Gaussians]  # detached snapshot, computed only when called


@dataclass(frozen=True)
class FitFinished:
    iteration: int
    run_dir: str
    metrics: dict = field(default_factory=dict)


class FitListener(Protocol):
    def on_start(self, event: FitStarted) -> None: ...

    def on_step(self, event: StepEvent) -> None: ...

    def on_finish(self, event: FitFinished) -> None: ...


class FitControl:
    """Shared with listeners so a UI can pause, resume or stop a fit. The trainer calls
    ``wait_if_paused()`` between iterations and checks ``stop_requested``."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self.stop_requested = False

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self.stop_requested = True
        self._running.set()

    def wait_if_paused(self) -> float:
        """Blocks while paused; returns the seconds spent waiting (excluded from fit time)."""
        if self._running.is_set():
            return 0.0
        import time

        start = time.perf_counter()
        self._running.wait()
        return time.perf_counter() - start
