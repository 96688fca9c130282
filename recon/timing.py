"""Wall-clock seconds per stage of a fit: metrics.json's ``time_breakdown``.

The pipeline opens a recording (``with recording() as times:``); code at any layer below it
wraps a stage in ``with stage("name"):``. Outside a recording ``stage`` does nothing, so the
trainer, init and renderers time themselves only inside a fit. Nested stages count toward
the innermost one (exclusive time): the stages of a recording never overlap, and their sum
is at most the recording's wall time. The trainer calls ``end_iteration()`` once per
iteration, which gives per-iteration samples (and medians) of the stages inside the loop.

Only ``time.perf_counter`` is read: no tensor, generator or file is touched, so timing a
fit cannot change its results.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Stages of one fit, in the order they run; time_breakdown always carries every one (0 when
# a stage did not run in this process, e.g. pose recovery on a posed scene).
FIT_STAGES = (
    "load",  # scene loading, resizing and the train/test split
    "pose_recovery",  # SfM on an unposed scene
    "stereo",  # the stereo prior: multi-view stereo (or SIFT triangulation for init.method=sift)
    "init",  # initial Gaussians from the prior points (kNN scales) or random
    "priors",  # learned depth priors and the diffusion refiner (load + predict)
    "extension_load",  # building (first use, changed sources) or loading the compiled rasteriser
    "initial_eval",  # PSNR of the initial Gaussians on the test views
    "render_forward",  # the optimisation's renders (training view, pseudo views, diffusion targets)
    "render_backward",  # the compiled rasteriser's backward (projection + blending) inside loss.backward()
    "backward",  # the rest of loss.backward(): SSIM, depth terms and the other autograd nodes
    "losses",  # loss terms, the divergence check and the per-step record
    "densify",  # densification bookkeeping (gradient statistics) and split/clone/prune
    "optimiser",  # Adam steps and zero_grad (Gaussians and poses)
    "checkpoint",  # checkpoint snapshots and writes
    "paused",  # a FitControl pause (viewer)
    "optimise_other",  # the rest of the loop: schedules, sampling, logging, listeners
    "eval_render",  # final renders of the train and test views
    "eval_score",  # test metrics (PSNR, SSIM, LPIPS)
    "write_outputs",  # run folder files: PLY, PNGs, depth maps, cameras, curve, scene.json
)
# The stages inside the optimisation loop, which also get per-iteration medians.
ITERATION_STAGES = ("render_forward", "render_backward", "backward", "losses", "densify", "optimiser")

_current: ContextVar[StageTimes | None] = ContextVar("recon_stage_times", default=None)


class StageTimes:
    """Accumulates exclusive seconds per stage name, and per-iteration samples."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.totals: dict[str, float] = {}
        # ITERATION_STAGES' seconds per finished iteration (0.0 where a stage did not run)
        self.samples: dict[str, list[float]] = {}
        self.iteration_seconds: list[float] = []  # wall time between end_iteration calls (one fewer than iterations)
        self._this_iteration: dict[str, float] = {}
        self._iteration_start: float | None = None
        self._open: list[list[float]] = []  # [start, seconds of nested stages] per open stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._open.append(frame)
        try:
            yield
        finally:
            self._open.pop()
            elapsed = time.perf_counter() - frame[0]
            if self._open:
                self._open[-1][1] += elapsed
            own = elapsed - frame[1]
            self.totals[name] = self.totals.get(name, 0.0) + own
            if name in ITERATION_STAGES:
                self._this_iteration[name] = self._this_iteration.get(name, 0.0) + own

    def end_iteration(self) -> None:
        now = time.perf_counter()
        if self._iteration_start is not None:
            self.iteration_seconds.append(now - self._iteration_start)
        self._iteration_start = now
        done = len(next(iter(self.samples.values()))) if self.samples else 0
        for name in self._this_iteration.keys() - self.samples.keys():
            self.samples[name] = [0.0] * done
        for name, values in self.samples.items():
            values.append(self._this_iteration.get(name, 0.0))
        self._this_iteration = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def breakdown(self, total_seconds: float) -> dict:
        """metrics.json's ``time_breakdown``: seconds per FIT_STAGES entry (plus any other
        stage recorded), ``other`` = total_seconds minus their sum, and per-iteration medians."""
        out: dict = {name: round(self.totals.get(name, 0.0), 4) for name in FIT_STAGES}
        out.update({k: round(v, 4) for k, v in self.totals.items() if k not in out})
        out["other"] = round(max(total_seconds - sum(self.totals.values()), 0.0), 4)
        out["iterations"] = len(self.samples[next(iter(self.samples))]) if self.samples else 0
        medians = {name: statistics.median(self.samples[name]) if name in self.samples else 0.0
                   for name in ITERATION_STAGES}
        if self.iteration_seconds:
            medians["iteration"] = statistics.median(self.iteration_seconds)
        out["per_iteration_median"] = {k: round(v, 6) for k, v in medians.items()}
        return out


@contextmanager
def recording() -> Iterator[StageTimes]:
    """Collects the stages timed by this thread (and its context) until the block ends."""
    times = StageTimes()
    token = _current.set(times)
    try:
        yield times
    finally:
        _current.reset(token)


def current() -> StageTimes | None:
    return _current.get()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Times the block as stage ``name`` of the current recording; nothing outside one."""
    times = _current.get()
    if times is None:
        yield
        return
    with times.stage(name):
        yield


def start(name: str) -> Callable[[], None]:
    """``stop = start(name)`` ... ``stop()``: ``stage(name)`` without indenting the block
    (for a long block in a file others edit). Stages opened between the two are nested."""
    times = _current.get()
    if times is None:
        return _nothing
    timed = times.stage(name)
    timed.__enter__()
    return lambda: timed.__exit__(None, None, None)


def _nothing() -> None:
    return None


def end_iteration() -> None:
    """Marks the end of one optimisation iteration (no-op outside a recording)."""
    times = _current.get()
    if times is not None:
        times.end_iteration()
