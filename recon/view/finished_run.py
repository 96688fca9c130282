"""Browse a finished run folder (``recon fit`` output) or any standard 3DGS PLY."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon.errors import ReconError, SceneError
from recon.export import cameras_json
from recon.types import Gaussians
from recon.view.scene import CameraSet, SceneView
from recon.view.server import DEFAULT_HOST, DEFAULT_PORT, ViewerServer

PlyReader = Callable[[Path], Gaussians]
FINISHED_RUN_RENDER_BUDGET = 0.5


@dataclass(frozen=True)
class RunContents:
    gaussians: Gaussians
    cameras: CameraSet
    ply_path: Path
    run_dir: Path | None  # None when a bare PLY was given
    # the colour the fit rendered behind its Gaussians (metrics.json's render settings; black without a run)
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _default_read_ply(path: Path) -> Gaussians:
    try:
        from recon.export.ply import read_ply
    except ImportError as exc:
        raise ReconError(
            f"cannot read {path}: recon.export.ply is not available in this install; "
            "reinstall recon (pip install -e .)"
        ) from exc
    return read_ply(path)


def read_cameras_json(path: Path) -> CameraSet:
    """cameras.json -> the train and test cameras the viewer shows (other splits hidden)."""
    cams = cameras_json.read_cameras_json(path)
    train = [c for c in cams if c.split == "train"]
    test = [c for c in cams if c.split == "test"]
    return CameraSet(train=tuple(c.camera for c in train), train_names=tuple(c.name for c in train),
                     test=tuple(c.camera for c in test), test_names=tuple(c.name for c in test))


def _thumbnails(run_dir: Path, names: tuple[str, ...]) -> tuple:
    """Train renders saved by the fit stand in for input photos as frustum thumbnails."""
    import imageio.v3 as iio

    thumbs = []
    for name in names:
        png = run_dir / "renders" / "train" / f"{name}.png"
        if not png.is_file():
            return ()
        img = iio.imread(png)[..., :3]
        thumbs.append(torch.from_numpy(np.ascontiguousarray(img)).float() / 255.0)
    return tuple(thumbs)


def load_run(path: str | Path, *, read_ply: PlyReader | None = None) -> RunContents:
    """A run folder (point_cloud.ply + cameras.json) or a bare .ply file."""
    path = Path(path)
    reader = read_ply or _default_read_ply
    if path.is_file():
        if path.suffix.lower() != ".ply":
            raise SceneError(f"{path}: expected a run folder or a .ply file")
        sibling = path.parent / "cameras.json"
        cams = read_cameras_json(sibling) if sibling.is_file() else CameraSet()
        return RunContents(reader(path), cams, path, None)
    if not path.is_dir():
        raise SceneError(f"{path}: no such run folder or PLY file")
    ply = path / "point_cloud.ply"
    if not ply.is_file():
        raise SceneError(f"{path}: no point_cloud.ply; is this a finished `recon fit` run folder?")
    cams_json = path / "cameras.json"
    cams = read_cameras_json(cams_json) if cams_json.is_file() else CameraSet()
    thumbs = _thumbnails(path, cams.train_names) if cams.train else ()
    cams = CameraSet(cams.train, cams.train_names, cams.test, cams.test_names, thumbs)
    return RunContents(reader(ply), cams, ply, path, _fit_background(path))


def _fit_background(run_dir: Path) -> tuple[float, float, float]:
    """The background the fit was trained and scored on (Blender's white, an LLFF fit's mean
    colour): the viewer must draw the same, or regions no Gaussian covers look unlike the renders."""
    import json

    try:
        settings = json.loads((run_dir / "metrics.json").read_text())["protocol"]["render_settings"]
        r, g, b = (float(c) for c in settings["background"])
    except (OSError, ValueError, KeyError, TypeError):
        return (0.0, 0.0, 0.0)  # a run folder from before render settings were recorded
    return (r, g, b)


class RunViewer:
    """Serves one finished run. ``RunViewer(...).serve_forever()`` blocks until Ctrl-C."""

    def __init__(self, contents: RunContents, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 *, render_fn=None, announce: bool = True, token: str | None = None) -> None:
        self.contents = contents
        title = f"recon: {(contents.run_dir or contents.ply_path).name}"
        self.server = ViewerServer(host, port, title=title, announce=announce, token=token)
        # No fit to protect here: server renders may use half the wall time.
        self.scene = SceneView(self.server, render_fn=render_fn, render_budget=FINISHED_RUN_RENDER_BUDGET,
                               background=contents.background)
        with self.server.gui.add_folder("Run", order=0):
            self.server.gui.add_markdown(
                f"`{contents.ply_path}`  \n{len(contents.gaussians):,} Gaussians, "
                f"SH degree {contents.gaussians.sh_degree}, {len(contents.cameras.train)} train / "
                f"{len(contents.cameras.test)} test cameras")
        self.scene.set_gaussians(contents.gaussians)
        if contents.cameras.train or contents.cameras.test:
            self.scene.set_cameras(contents.cameras)

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        self.scene.close()
        self.server.stop()
