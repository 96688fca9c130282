"""Ctrl-C (SIGINT) and SIGTERM for the long-running commands.

The first signal asks the work to stop at a safe point: a fit finishes its current step,
writes a checkpoint and its outputs (what the viewer's Stop button does) and the command
prints the iteration reached and the exact ``recon fit --resume RUN`` command; a viewer
closes its server. A second signal aborts at once (exit code 128 + signal number) after
saying which checkpoint is on disk.

Exit codes of an interrupted ``recon fit``: 130 after SIGINT, 143 after SIGTERM (128 + the
signal number, the shell convention). ``recon view`` exits 0: a signal is how it ends.

Handlers are installed explicitly: a parent that ignores SIGINT (``nohup``, some job
runners, ``signal(SIGINT, SIG_IGN)`` before exec) passes SIG_IGN down, and Python then
never installs its own Ctrl-C handler.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from recon.optimise.checkpoint import checkpoint_iteration, latest_checkpoint, resume_command
from recon.optimise.events import FitControl, FitFinished, FitStarted, StepEvent

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def on_signals(first: Callable[[int], None], abort: Callable[[int], str]) -> Iterator[None]:
    """While the block runs, the first SIGINT/SIGTERM calls ``first(signum)`` (which may
    raise to stop at once); any later one prints ``abort(signum)`` and raises
    ``SystemExit(128 + signum)`` (``finally`` blocks still run). Off the main thread
    (where Python cannot install handlers) the block runs with the handlers it has."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def handle(signum, _frame) -> None:
        nonlocal count
        count += 1
        if count == 1:
            first(signum)
            return
        _say(abort(signum))
        raise SystemExit(exit_code(signum))

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class FitInterrupt:
    """A ``FitListener`` that turns the first signal into ``control.stop()`` once the fit
    is running (before that there is nothing to save, so it aborts at once) and reports
    where the fit stopped. Use ``with interrupt.installed(): ...`` around the fit."""

    def __init__(self, control: FitControl) -> None:
        self.control = control
        self.signum: int | None = None  # the first signal received
        self.run_dir: str | None = None
        self.iteration: int | None = None
        self.total: int | None = None
        self._fitting = False

    # ---- FitListener
    def on_start(self, event: FitStarted) -> None:
        self.run_dir, self.total, self._fitting = event.run_dir, event.total_iterations, True

    def on_step(self, event: StepEvent) -> None:
        self.iteration = event.iteration
        if event.iteration >= event.total_iterations:
            self._fitting = False  # the loop is over: a signal now can only abort

    def on_finish(self, event: FitFinished) -> None:
        self.iteration, self._fitting = event.iteration, False

    # ---- signals
    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else exit_code(self.signum)

    def installed(self):
        return on_signals(self._first, self._abort_message)

    def _first(self, signum: int) -> None:
        self.signum = signum
        if not self._fitting:
            _say(self._abort_message(signum))
            raise SystemExit(exit_code(signum))
        self.control.stop()
        _say(f"{signal_name(signum)}: stopping after iteration {(self.iteration or 0) + 1} and saving a checkpoint "
             f"(send it again to abort at once)")

    def _checkpoint_line(self) -> str:
        ckpt = latest_checkpoint(Path(self.run_dir)) if self.run_dir else None
        if ckpt is None:
            return "no checkpoint had been written, so there is nothing to resume; run the command again"
        return (f"newest checkpoint: {ckpt} (iteration {checkpoint_iteration(ckpt)}); continue with: "
                f"{resume_command(self.run_dir)}")

    def _abort_message(self, signum: int) -> str:
        where = "before the fit started" if self.iteration is None else f"at iteration {self.iteration}"
        return f"{signal_name(signum)}: aborted {where}; {self._checkpoint_line()}"

    def report(self) -> str:
        """After a stopped fit: the iteration reached and the command that continues it."""
        of = f" of {self.total}" if self.total else ""
        return (f"{signal_name(self.signum)}: the fit stopped at iteration {self.iteration}{of}; "
                f"{self._checkpoint_line()}")


class StopServing:
    """For a viewer: any SIGINT/SIGTERM makes ``serve_forever`` return (the command then
    exits 0). Install it before the server exists; ``attach(server.request_stop)`` once it
    does (a signal that came earlier stops it straight away). With ``serving=False`` (a
    command that only renders, e.g. a path video) there is nothing to stop cleanly, so a
    signal exits at once with 128 + its number."""

    def __init__(self, serving: bool = True) -> None:
        self.requested = False
        self.serving = serving
        self._stop: Callable[[], None] | None = None

    def installed(self):
        return on_signals(self._first, lambda signum: f"viewer: {signal_name(signum)} again, exiting at once")

    def attach(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        if self.requested:
            stop()

    def _first(self, signum: int) -> None:
        if not self.serving:
            _say(f"{signal_name(signum)}: interrupted")
            raise SystemExit(exit_code(signum))
        _say(f"viewer: {signal_name(signum)}, stopping")
        self.requested = True
        if self._stop is not None:
            self._stop()
