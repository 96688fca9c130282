"""Shared fixtures. Real scenes live in ../shared/data beside the repository: a user's
clone may not have it (tests skip with the reason); under CI=true it must be there, so a
missing path fails instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECON_SHARED_DATA", REPO.parent / "shared" / "data"))


def _missing(message: str) -> None:
    """Skip on a user's clone; fail under CI=true, where ../shared/data is always there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI=true requires it")
    pytest.skip(message)


def require_extension() -> None:
    """Build/load the C++ extension, or skip (module level allowed) on a user's clone
    without a compiler; under CI=true a broken build fails instead."""
    from recon.errors import ReconError
    from recon.render import _ext

    try:
        _ext.load()
    except ReconError as err:  # pragma: no cover - depends on the machine
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"rasteriser extension unavailable: {err}; CI=true requires it to build", pytrace=False)
        pytest.skip(f"rasteriser extension unavailable: {err}", allow_module_level=True)


def depth_points(view, stride: int = 1):
    """A generated view's exact depth unprojected to world points [M, 3] and their colours [M, 3]
    (every ``stride``-th pixel with depth): a perfect stereo cloud for tests of what comes after it."""
    import torch

    ys, xs = torch.nonzero(view.depth[::stride, ::stride] > 0, as_tuple=True)
    ys, xs = ys * stride, xs * stride
    z = view.depth[ys, xs]
    K, T = view.camera.K, view.camera.T_world_cam
    rays = torch.stack([(xs + 0.5 - K[0, 2]) / K[0, 0], (ys + 0.5 - K[1, 2]) / K[1, 1], torch.ones_like(z)], -1)
    return (rays * z[:, None]) @ T[:3, :3].T + T[:3, 3], view.image[ys, xs]


def shared_scene(name: str) -> Path:
    """Path of ../shared/data/<name>; skip (or fail under CI) when absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        _missing(f"real scene {path} not found (tests read ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        _missing(f"{SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture(scope="module")
def torch_one_thread():
    """Small tensors gain nothing from threads, and on a shared busy machine intra-op
    threads spin against each other (several times slower); restored afterwards.
    Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield
