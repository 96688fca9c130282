"""Progress bars for anything longer than a few seconds (stereo, SfM, optimisation,
evaluation, bench), all drawn by one rich ``Progress`` on stderr so stdout stays for results.

Stages call one of two helpers and never touch rich themselves::

    with progress.stage("multi-view stereo", total=len(views)) as bar:
        for ...:
            bar.advance()

    for view in progress.track(views, "rendering test views"):
        ...

Bars opened while another is showing (evaluation under the fit bar) stack in the same
display instead of fighting over the terminal. ``set_quiet(True)`` (``recon --quiet``)
turns every bar off. On a non-terminal rich draws nothing while a bar runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_state: dict = {"quiet": False, "progress": None, "open": 0, "console": None}


def set_quiet(quiet: bool) -> None:
    """No bars at all (scripts, CI logs)."""
    _state["quiet"] = bool(quiet)


def is_quiet() -> bool:
    return bool(_state["quiet"])


def console():
    """The stderr console the bars draw on (print through it to keep bars intact)."""
    from rich.console import Console

    if _state.get("console") is None:
        _state["console"] = Console(stderr=True)
    return _state["console"]


class Bar:
    """One task in the shared display. ``advance``/``update`` are cheap and thread-safe."""

    def __init__(self, progress, task_id, transient: bool) -> None:
        self._progress, self._task, self._transient = progress, task_id, transient
        self.closed = False

    def advance(self, n: float = 1, status: str | None = None) -> None:
        fields = {} if status is None else {"status": status}
        self._progress.update(self._task, advance=n, **fields)

    def update(self, completed: float | None = None, *, total: float | None = None, status: str | None = None,
               description: str | None = None) -> None:
        fields = {k: v for k, v in (("completed", completed), ("total", total), ("description", description)) if v is not None}
        if status is not None:
            fields["status"] = status
        self._progress.update(self._task, **fields)

    def close(self) -> None:
        """Remove a transient bar (or freeze a kept one) and stop the display when it was the last."""
        if self.closed:
            return
        self.closed = True
        with _lock:
            if self._transient:
                self._progress.remove_task(self._task)
            else:
                self._progress.stop_task(self._task)
            _state["open"] -= 1
            if _state["open"] == 0:
                self._progress.stop()
                _state["progress"] = None


class _NoBar:
    closed = True

    def advance(self, n: float = 1, status: str | None = None) -> None:
        pass

    def update(self, completed=None, *, total=None, status=None, description=None) -> None:
        pass

    def close(self) -> None:
        pass


def open_bar(description: str, total: float | None = None, *, enabled: bool = True, transient: bool = True):
    """A bar that stays until ``close()`` (for listeners that see start and finish as two
    calls); prefer :func:`stage`. ``transient=False`` leaves the finished bar on screen."""
    if not enabled or is_quiet():
        return _NoBar()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with _lock:
        progress = _state["progress"]
        if progress is None:
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=console())
            progress.start()
            _state["progress"] = progress
        task_id = progress.add_task(description, total=total, status="")
        _state["open"] += 1
    return Bar(progress, task_id, transient)


@contextmanager
def stage(description: str, total: float | None = None, *, enabled: bool = True, transient: bool = True) -> Iterator[Bar]:
    """A bar for the duration of the ``with`` block."""
    bar = open_bar(description, total, enabled=enabled, transient=transient)
    try:
        yield bar
    finally:
        bar.close()


def track(items: Iterable[T], description: str, total: int | None = None, *, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` with a bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with stage(description, total, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.advance()
