"""Will this fit fit in memory? An estimate made before the fit starts, against the memory
this process may use, so that 4032x3024 photos or a ``densify.max_gaussians`` the machine
cannot hold stop with a message naming the setting to change, not with an out-of-memory kill.

The estimate is deliberately simple and on the generous side:

* images: every loaded view at working resolution (RGB float32 + depth + mask), and for
  training views their depth prior and the coarse levels of the image pyramid;
* Gaussians: ``max_gaussians`` x (parameters, gradients and the two Adam moments, plus the
  copy a checkpoint takes of parameters and moments) + per-Gaussian rasteriser data
  (projection, its gradient, tile intersections) + densification statistics;
* render buffers: forward and backward per-pixel buffers and the SSIM/loss intermediates,
  for one training render and one pseudo-view render at working resolution;
* runtime: Python, torch and the libraries, measured at ~0.6 GiB for a tiny fit.

A fit that trains two Gaussian fields side by side (CoR-GS co-regularisation, ``coreg.enabled``)
holds the Gaussians and the render buffers twice: ``fields=2``.

Available memory is the smaller of /proc/meminfo's MemAvailable and what the cgroup
(container) limit leaves; without either, the check is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from recon.errors import ReconError

GiB = 2**30
RUNTIME_BYTES = int(0.6 * GiB)
VIEW_BYTES_PER_PIXEL = 12 + 4 + 4  # RGB float32, depth, mask
TRAIN_EXTRA_BYTES_PER_PIXEL = 4 + 4  # depth prior, pyramid levels (1/4 + 1/16 + ... of RGB)
RENDER_BYTES_PER_PIXEL = 2 * (44 + 120)  # (outputs + gradients, SSIM/loss maps) x (train + pseudo render)
RASTER_BYTES_PER_GAUSSIAN = 2 * 48 + 8 * 16 + 16  # projection + gradient, ~8 tile hits, densify stats
TENSOR_COPIES_PER_PARAMETER = 4 + 3  # value, gradient, Adam m and v; checkpoint copy of value, m, v
SAFETY = 0.9  # leave a tenth of what is available to the rest of the machine


class InsufficientMemoryError(ReconError):
    """The fit as configured will not fit in the memory this process may use."""


def floats_per_gaussian(sh_degree: int) -> int:
    return 3 + 3 + 4 + 1 + 3 * (sh_degree + 1) ** 2  # means, log-scales, quaternion, opacity, SH


def bytes_per_gaussian(sh_degree: int) -> int:
    return floats_per_gaussian(sh_degree) * 4 * TENSOR_COPIES_PER_PARAMETER + RASTER_BYTES_PER_GAUSSIAN


@dataclass(frozen=True)
class MemoryEstimate:
    width: int  # working resolution
    height: int
    num_views: int  # views held in memory (train and test)
    num_train: int
    max_gaussians: int  # per field
    sh_degree: int
    fields: int = 1  # Gaussian fields trained at once (2 with CoR-GS co-regularisation)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def images_bytes(self) -> int:
        return self.pixels * (self.num_views * VIEW_BYTES_PER_PIXEL + self.num_train * TRAIN_EXTRA_BYTES_PER_PIXEL)

    @property
    def render_bytes(self) -> int:
        return self.fields * self.pixels * RENDER_BYTES_PER_PIXEL

    @property
    def gaussians_bytes(self) -> int:
        return self.fields * self.max_gaussians * bytes_per_gaussian(self.sh_degree)

    @property
    def total_bytes(self) -> int:
        return RUNTIME_BYTES + self.images_bytes + self.render_bytes + self.gaussians_bytes

    def describe(self) -> str:
        fields = f" in each of {self.fields} fields (coreg.enabled)" if self.fields > 1 else ""
        return (f"{self.num_views} images at {self.width}x{self.height}: {_gib(self.images_bytes)}, render buffers "
                f"{_gib(self.render_bytes)}, up to {self.max_gaussians:,} Gaussians{fields} (SH degree "
                f"{self.sh_degree}): {_gib(self.gaussians_bytes)}, runtime {_gib(RUNTIME_BYTES)}")


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def estimate_fit_memory(width: int, height: int, num_views: int, num_train: int, max_gaussians: int,
                        sh_degree: int, fields: int = 1) -> MemoryEstimate:
    return MemoryEstimate(int(width), int(height), int(num_views), int(num_train), int(max_gaussians), int(sh_degree),
                          int(fields))


def estimate_for_config(cfg, width: int, height: int, num_views: int, num_train: int) -> MemoryEstimate:
    """The estimate for a ``FitConfig``: the most Gaussians it can hold is the larger of the
    densification cap (when densifying) and the initial point budgets; co-regularisation's
    partner field (``coreg.enabled``) holds as many again."""
    most = max(cfg.init.max_points, cfg.init.random_points, cfg.densify.max_gaussians if cfg.densify.enabled else 0)
    fields = 2 if cfg.coreg.enabled else 1
    return estimate_fit_memory(width, height, num_views, num_train, most, cfg.init.sh_degree, fields)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def available_memory(meminfo: Path = Path("/proc/meminfo"),
                     cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """(bytes this process may still allocate, where that figure comes from), or None."""
    found: list[tuple[int, str]] = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    except OSError:
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # v1
        limit, usage = _read_int(cgroup / limit_file), _read_int(cgroup / usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes a huge number for none
            found.append((max(0, limit - usage), f"the cgroup limit ({_gib(limit)}, {_gib(usage)} in use)"))
    return min(found) if found else None


def _largest_fitting(lo: int, hi: int, fits) -> int | None:
    """Largest integer in [lo, hi] for which ``fits`` holds (monotone), or None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def check_fit_memory(estimate: MemoryEstimate, available: tuple[int, str] | None = None) -> None:
    """Raises ``InsufficientMemoryError`` when ``estimate`` exceeds what is available,
    naming the largest part and the setting that shrinks it (with a value that fits)."""
    if os.environ.get("RECON_SKIP_MEMORY_CHECK"):
        return
    available = available if available is not None else available_memory()
    if available is None:
        return
    budget, source = int(available[0] * SAFETY), available[1]
    if estimate.total_bytes <= budget:
        return
    e = estimate
    long_side = max(e.width, e.height)

    def with_side(side: int) -> MemoryEstimate:  # the same estimate (views, Gaussians, fields) at another size
        s = side / long_side
        return replace(e, width=max(1, round(e.width * s)), height=max(1, round(e.height * s)))

    def with_gaussians(n: int) -> MemoryEstimate:
        return replace(e, max_gaussians=n)

    side = _largest_fitting(64, long_side, lambda s: with_side(s).total_bytes <= budget)
    count = _largest_fitting(1000, e.max_gaussians, lambda n: with_gaussians(n).total_bytes <= budget)
    pixel_part = e.images_bytes + e.render_bytes
    fixes = []
    if side is not None:
        fixes.append(f"--set data.max_side={side} (images at that size)")
    if count is not None:
        fixes.append(f"--set densify.max_gaussians={count}")
    biggest = "the images" if pixel_part >= e.gaussians_bytes else "the Gaussians"
    order = fixes if pixel_part >= e.gaussians_bytes else fixes[::-1]
    what = (f"lower {' or '.join(order)}" if order else
            "lower both data.max_side and densify.max_gaussians (neither alone is enough)")
    raise InsufficientMemoryError(
        f"this fit needs about {_gib(e.total_bytes)} of memory but only {_gib(available[0])} is available "
        f"({source}); {biggest} take the most ({e.describe()}); {what}, or free memory "
        f"(RECON_SKIP_MEMORY_CHECK=1 skips this check)")
