"""Builds and loads the C++/CUDA rasteriser extension on first use.

``pip install`` builds it when a compiler and torch are present (setup.py calls ``load()``);
otherwise, or when the sources changed since, torch's extension builder compiles it the first
time a compiled backend is asked for. Either way it is cached under ``$RECON_EXTENSION_DIR``
(default ``~/.cache/recon/extensions``) in a folder keyed on everything that changes the
binary: the sources' content, compiler and its version, flags, Python, torch (and CUDA)
versions and the CPU architecture. The build targets the architecture's baseline; the hot
loops pick their instruction set at run time, so a cache shared between machines is safe.
The CUDA sources are added only when this torch was built with CUDA and a device is visible.

The sources are compiled from a copy inside that folder, not from where they were found:
torch's builder (ninja) keys its rebuild decision on the source *paths*, so two checkouts
(or an installed and an editable copy) with identical sources would otherwise rebuild one
another's binary on every switch, a minute or more each time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
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


# -fno-trapping-math lets GCC vectorise the blending loops (no FP traps are relied on).
# No -march=native: the blending and projection loops are compiled per instruction set and
# picked at run time (cuda/src/cpu_isa.h), so the binary runs on any CPU of its arch.
CXX_FLAGS = ("-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-Wno-psabi")
NVCC_FLAGS = ("-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "-DRECON_WITH_CUDA")


def build_dir() -> Path:
    root = Path(os.environ.get("RECON_EXTENSION_DIR", Path.home() / ".cache" / "recon" / "extensions"))
    flavour = "cuda" if _want_cuda() else "cpu"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}_{flavour}"
    path = root / tag.replace("+", "_").replace(".", "_") / build_key()
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_key() -> str:
    """Hash of everything that changes the binary (see the module docstring)."""
    h = hashlib.sha256()
    src = source_dir()
    for f in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in {".cpp", ".cu", ".h", ".cuh"}):
        h.update(str(f.relative_to(src)).encode())
        h.update(f.read_bytes())
    # torch's install folder too: the build commands name its include and library folders, and ninja
    # recompiles every object when a command changes, so two environments with the same torch version
    # (a CI venv and the user's) sharing one folder rebuilt each other's binary on every alternation.
    parts = [_compiler_id(os.environ.get("CXX", "c++")), " ".join(CXX_FLAGS), platform.machine(),
             sys.version, torch.__version__, str(torch.version.cuda), str(Path(torch.__file__).resolve().parent)]
    if _want_cuda():
        parts += [_compiler_id("nvcc"), " ".join(NVCC_FLAGS)]
    h.update("\n".join(parts).encode())
    return h.hexdigest()[:16]


@functools.cache
def _compiler_id(cxx: str) -> str:
    """The compiler's first --version line (its name and version), or "missing"."""
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _want_cuda() -> bool:
    return bool(torch.version.cuda) and torch.cuda.is_available()


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


def _staged_sources(src: Path, folder: Path) -> Path:
    """A copy of ``src`` (the sources the key was computed from) at ``folder/sources``;
    written once per key, atomically (a concurrent build either sees all of it or none)."""
    staged = folder / "sources"
    if (staged / "src" / "binding.cpp").is_file():
        return staged
    tmp = folder / f"sources.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.so"))
    try:
        tmp.rename(staged)
    except OSError:  # another process staged it first: identical content (same key)
        shutil.rmtree(tmp, ignore_errors=True)
    return staged


def _build(verbose: bool):
    found = source_dir()
    if not (found / "src" / "binding.cpp").is_file():
        raise MissingDependencyError(
            f"rasteriser sources not found in {found}; reinstall recon (pip install -e .)")
    folder = build_dir()
    src = _staged_sources(found, folder)
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise MissingDependencyError(
            f"no C++ compiler ({cxx}) found to build the rasteriser; install one "
            "(apt-get install g++ / xcode-select --install) or use settings.backend='reference'")
    from torch.utils import cpp_extension

    cflags = list(CXX_FLAGS)
    sources = sorted(str(p) for p in (src / "src").glob("*.cpp"))
    kwargs: dict = {}
    if _want_cuda():
        sources += sorted(str(p) for p in (src / "src").glob("*.cu"))
        cflags.append("-DRECON_WITH_CUDA")
        kwargs["extra_cuda_cflags"] = [*NVCC_FLAGS, f"-I{src / 'include'}"]
    from rich.console import Console

    status = Console(stderr=True).status(
        f"building the recon rasteriser extension in {folder} (first use only, 1-3 min)")
    try:
        with status:
            return cpp_extension.load(
                name="recon_raster_ext",
                sources=sources,
                extra_include_paths=[str(src / "include")],
                extra_cflags=cflags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                verbose=verbose,
                **kwargs,
            )
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise MissingDependencyError(
            f"building the rasteriser extension in {folder} failed ({last}); check that "
            "g++ (and nvcc for CUDA) work, delete that folder and retry, or use "
            "settings.backend='reference'") from err
