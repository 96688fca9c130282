"""Ships the rasteriser's C++/CUDA sources (as recon/_cuda) and the config presets (as
recon/configs) inside the package, so that an installed, non-editable recon can build its
extension on first use and find its presets. Editable installs read the repository's
cuda/ and configs/ folders directly."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSources(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).parent
        for folder, packaged in (("cuda", "_cuda"), ("configs", "configs")):
            target = Path(self.build_lib) / "recon" / packaged
            if (root / folder).is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(root / folder, target)


setup(cmdclass={"build_py": BuildPyWithSources})
