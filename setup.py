"""Ships the rasteriser's C++/CUDA sources (as recon/_cuda) and the config presets (as
recon/configs) inside the package, so that an installed, non-editable recon can build its
extension and find its presets. Editable installs read the repository's cuda/ and configs/
folders directly.

When a C++ compiler and torch are already installed, the install also builds the extension
into its cache (recon/render/_ext.py), so the first `recon fit` does not compile for a
minute. Without them (or with RECON_BUILD_EXTENSION=0) it is built on first use instead."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel


class BuildPyWithSources(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).parent
        for folder, packaged in (("cuda", "_cuda"), ("configs", "configs")):
            target = Path(self.build_lib) / "recon" / packaged
            if (root / folder).is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(root / folder, target)
        _build_extension(root)


_BUILT: list[Path] = []  # editable installs reach this from two commands: build once


def _build_extension(root: Path) -> None:
    """Best effort: compile the extension now, in a clean interpreter that sees the target
    environment's torch (pip's build isolation hides it from this process)."""
    if root in _BUILT:
        return
    _BUILT.append(root)
    if os.environ.get("RECON_BUILD_EXTENSION", "1") == "0" or shutil.which(os.environ.get("CXX", "c++")) is None:
        return
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    env["PYTHONPATH"] = str(root)
    code = ("import importlib.util, sys\n"
            "if importlib.util.find_spec('torch') is None: sys.exit(3)\n"
            "from recon.render import _ext; _ext.load()\n")
    print("recon: building the rasteriser extension (1-3 min; RECON_BUILD_EXTENSION=0 skips)", file=sys.stderr)
    res = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=root)
    if res.returncode == 3:
        print("recon: torch is not installed yet; the extension will be built on first use", file=sys.stderr)
    elif res.returncode != 0:
        print("recon: building the extension failed; it will be retried on first use", file=sys.stderr)


class EditableWithExtension(editable_wheel):
    """`pip install -e .` (the README's install) builds an editable wheel without running
    build_py, so the extension is built here too."""

    def run(self) -> None:
        super().run()
        _build_extension(Path(__file__).parent)


setup(cmdclass={"build_py": BuildPyWithSources, "editable_wheel": EditableWithExtension})
