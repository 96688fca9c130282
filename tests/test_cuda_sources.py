"""Compile-only checks of the CUDA sources and the shared math header.

CI has no GPU, so this is how the kernels are kept from rotting: every ``cuda/src/*.cu``
is compiled with nvcc for sm_80 and sm_90 (object files only, nothing runs), and every
header in ``cuda/include/recon`` is compiled both as host C++ (the CPU backend's view)
and under nvcc (the kernels' view). Without nvcc the tests skip with the reason; under
CI=true a missing compiler or a failed compile is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_SRC = REPO / "cuda" / "src"
CUDA_INCLUDE = REPO / "cuda" / "include"
ARCH_FLAGS = [
    "-gencode", "arch=compute_80,code=sm_80",  # Ampere (A100) and up
    "-gencode", "arch=compute_90,code=sm_90",  # Hopper (H100/H200)
]
# What recon/render/_ext.py (through torch's extension builder) compiles them with.
# "--threads 2" compiles the two architectures of one file in parallel, so the slowest file
# (cub's radix sort in cuda_bin.cu) does not leave the second core idle at the end.
NVCC_FLAGS = ["-c", "-std=c++17", "-O3", "--use_fast_math", "--expt-relaxed-constexpr",
              "--threads", "2", "-I", str(CUDA_INCLUDE), "-DRECON_WITH_CUDA", *ARCH_FLAGS]
COMPILE_TIMEOUT_S = 600
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(tool: str) -> None:
    message = f"{tool} not found on PATH (nor in $CUDA_HOME/bin); cannot compile the CUDA sources"
    if IN_CI:
        pytest.fail(message + "; CI=true requires it (install the CUDA toolkit)")
    pytest.skip(message)


def _find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def _cu_sources() -> list[Path]:
    return sorted(CUDA_SRC.glob("*.cu"))


def _headers() -> list[Path]:
    return sorted(p for p in (CUDA_INCLUDE / "recon").glob("*") if p.suffix in {".h", ".hpp"})


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = _find_nvcc()
    if path is None:
        _missing("nvcc")
    return path


@pytest.fixture(scope="module")
def object_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda_objects")


@pytest.fixture(scope="module")
def compiled_sources(nvcc: str, object_dir: Path) -> dict[str, subprocess.CompletedProcess]:
    """Compile every .cu once, two at a time (the machines running CI are small)."""
    out_dir = object_dir

    def compile_one(source: Path) -> tuple[str, subprocess.CompletedProcess]:
        command = [nvcc, *NVCC_FLAGS, str(source), "-o", str(out_dir / (source.stem + ".o"))]
        return source.name, _run(command)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(compile_one, _cu_sources()))


def test_cuda_sources_exist():
    # the rasteriser's stages: projection, tile binning/sorting, forward and backward blending
    names = [p.name for p in _cu_sources()]
    assert len(names) >= 4, f"expected the four rasteriser stages in {CUDA_SRC}, found {names}"


@pytest.mark.parametrize("source", [p.name for p in _cu_sources()])
def test_cuda_source_compiles(source: str, compiled_sources):
    result = compiled_sources[source]
    assert result.returncode == 0, f"nvcc failed on {source}:\n{result.stderr[-6000:]}"


def test_every_cuda_api_function_is_defined(compiled_sources, object_dir: Path):
    """Each cuda_* function declared in recon/api.h is defined by some .cu object, so the
    binding links when the extension is built with CUDA."""
    if any(r.returncode != 0 for r in compiled_sources.values()):
        pytest.fail("a CUDA source failed to compile (see test_cuda_source_compiles)")
    nm = shutil.which("nm")
    if nm is None:
        _missing("nm (binutils)")
    declared = set(re.findall(r"\b(cuda_\w+)\s*\(", (CUDA_INCLUDE / "recon" / "api.h").read_text()))
    assert declared, "recon/api.h declares no cuda_* functions"
    objects = sorted(str(p) for p in object_dir.glob("*.o"))
    listing = _run([nm, "-C", "--defined-only", *objects]).stdout
    defined = set(re.findall(r" T recon::(cuda_\w+)\(", listing))
    assert declared <= defined, f"declared in api.h but defined in no .cu: {sorted(declared - defined)}"


def _header_unit(header: Path, tmp_path: Path, suffix: str) -> Path:
    unit = tmp_path / f"use_{header.stem}{suffix}"
    unit.write_text(f'#include "recon/{header.name}"\nint main() {{ return 0; }}\n')
    return unit


@pytest.mark.parametrize("header", [p.name for p in _headers()])
def test_header_compiles_as_host_cpp(header: str, tmp_path: Path):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        _missing("a host C++ compiler (c++/g++/clang++)")
    unit = _header_unit(CUDA_INCLUDE / "recon" / header, tmp_path, ".cpp")
    result = _run([compiler, "-std=c++17", "-fsyntax-only", "-I", str(CUDA_INCLUDE), str(unit)])
    assert result.returncode == 0, f"{header} does not compile as host C++:\n{result.stderr[-6000:]}"


@pytest.mark.parametrize("header", [p.name for p in _headers()])
def test_header_compiles_under_nvcc(header: str, nvcc: str, tmp_path: Path):
    unit = _header_unit(CUDA_INCLUDE / "recon" / header, tmp_path, ".cu")
    # one architecture is enough to check the header parses as device code
    result = _run([nvcc, "-c", "-std=c++17", "-DRECON_WITH_CUDA", "-I", str(CUDA_INCLUDE),
                   "-gencode", "arch=compute_80,code=sm_80", str(unit),
                   "-o", str(tmp_path / "unit.o")])
    assert result.returncode == 0, f"{header} does not compile under nvcc:\n{result.stderr[-6000:]}"
