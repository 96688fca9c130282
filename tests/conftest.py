"""Shared fixtures. Real scenes live in ../shared/data beside the repository: a user's
clone may not have it (tests skip with the reason); under CI=true it must be there, so a
missing path fails instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECON_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_scene(name: str) -> Path:
    """Path of ../shared/data/<name>; skip (or fail under CI) when absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"real scene {path} not found (tests read ../shared/data beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"{SHARED_DATA} not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield
