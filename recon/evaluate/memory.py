"""Peak memory of a run: the one place recon reads it (metrics.json and bench cells).

``peak_rss_bytes()`` is the resident-set high-water mark of the whole run, this process
and every child it has waited for (compilers building the extension, SfM helpers), as
``/usr/bin/time -v`` reports it: the larger of ``RUSAGE_SELF`` and ``RUSAGE_CHILDREN``
``ru_maxrss`` (KiB on Linux). ``PeakMemory`` samples the current RSS on a thread, so a
bench cell gets its own peak rather than the process's all-time maximum.
"""

from __future__ import annotations

import os
import resource
import threading

import torch


def peak_rss_bytes() -> int:
    """Peak resident memory of this process and its reaped children, in bytes."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, children)) * 1024


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


class PeakMemory:
    """Context manager: ``peak_rss`` (bytes, sampled every ``interval`` s) and ``peak_cuda``
    (torch allocator peak, None without CUDA) of the code it wraps."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()

    rss = staticmethod(current_rss_bytes)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        self.peak_rss = current_rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, current_rss_bytes())
        if torch.cuda.is_available():
            self.peak_cuda = int(torch.cuda.max_memory_allocated())
