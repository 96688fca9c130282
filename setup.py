"""Ships the rasteriser's C++/CUDA sources inside the package (as recon/_cuda) so that an
installed, non-editable recon can build its extension on first use. Editable installs
read them straight from the repository's cuda/ folder."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSources(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).parent / "cuda"
        target = Path(self.build_lib) / "recon" / "_cuda"
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildPyWithSources})
