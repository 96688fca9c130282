"""Builds and loads the C++/CUDA rasteriser extension on first use.

Installing recon needs no compiler: the sources ship with the package and are compiled
by torch's extension builder the first time a compiled backend is asked for, then cached
under ``$RECON_EXTENSION_DIR`` (default ``~/.cache/recon/extensions``). The CUDA sources are
added only when this torch was built with CUDA and a device is visible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

import recon
from recon.errors import MissingDependencyError
from recon.timing import stage

_lock = threading.Lock()
_module = None
_error: MissingDependencyError | None = None


def source_dir() -> Path:
    """The packaged sources (recon/_cuda) when present, else the repository's cuda/."""
    packaged = Path(recon.__file__).parent / "_cuda"
    if (packaged / "src" / "binding.cpp").is_file():
        return packaged
    return Path(recon.__file__).resolve().parent.parent / "cuda"


def build_dir() -> Path:
    root = Path(os.environ.get("RECON_EXTENSION_DIR", Path.home() / ".cache" / "recon" / "extensions"))
    flavour = "cuda" if _want_cuda() else "cpu"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}_{flavour}"
    path = root / tag.replace("+", "_").replace(".", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _want_cuda() -> bool:
    return bool(torch.version.cuda) and torch.cuda.is_available()


def _march_native_ok() -> bool:
    """-march=native is skipped where the compiler rejects it (e.g. some ARM toolchains)."""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.cpp"
        src.write_text("int main() { return 0; }\n")
        try:
            res = subprocess.run([cxx, "-march=native", "-c", str(src), "-o", str(Path(tmp) / "t.o")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0


def load(verbose: bool = False):
    """The compiled module; raises MissingDependencyError (with the fix) if it cannot build."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is not None:
        raise _error
    with _lock:
        if _module is None and _error is None:
            try:
                with stage("extension_load"):  # minutes when it compiles (first use, changed sources)
                    _module = _build(verbose)
            except MissingDependencyError as err:
                _error = err
                raise
    if _error is not None:
        raise _error
    return _module


def has_cuda(module) -> bool:
    return bool(module.has_cuda())


def _build(verbose: bool):
    src = source_dir()
    if not (src / "src" / "binding.cpp").is_file():
        raise MissingDependencyError(
            f"rasteriser sources not found in {src}; reinstall recon (pip install -e .)")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise MissingDependencyError(
            f"no C++ compiler ({cxx}) found to build the rasteriser; install one "
            "(apt-get install g++ / xcode-select --install) or use settings.backend='reference'")
    from torch.utils import cpp_extension

    # -fno-trapping-math lets GCC vectorise the blending loops (no FP traps are relied on).
    cflags = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math"]
    if _march_native_ok():
        cflags.append("-march=native")
    sources = sorted(str(p) for p in (src / "src").glob("*.cpp"))
    kwargs: dict = {}
    if _want_cuda():
        sources += sorted(str(p) for p in (src / "src").glob("*.cu"))
        cflags.append("-DRECON_WITH_CUDA")
        kwargs["extra_cuda_cflags"] = ["-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr",
                                       "-DRECON_WITH_CUDA",
                                       f"-I{src / 'include'}"]
    from rich.console import Console

    status = Console(stderr=True).status(
        f"building the recon rasteriser extension in {build_dir()} (first use only, 1-3 min)")
    try:
        with status:
            return cpp_extension.load(
                name="recon_raster_ext",
                sources=sources,
                extra_include_paths=[str(src / "include")],
                extra_cflags=cflags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir()),
                verbose=verbose,
                **kwargs,
            )
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise MissingDependencyError(
            f"building the rasteriser extension in {build_dir()} failed ({last}); check that "
            "g++ (and nvcc for CUDA) work, delete that folder and retry, or use "
            "settings.backend='reference'") from err
