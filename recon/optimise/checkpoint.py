"""Checkpoints of a fit: the trainer's full state (parameters, optimiser moments,
densification statistics, random-number streams, history) in ``RUN/checkpoints/``.

Writes are atomic (temporary file, then rename), so a fit killed while saving keeps the
previous checkpoint; at most ``keep`` checkpoints stay on disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from recon.errors import ReconError

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, state: dict, *, keep: int = 2) -> Path:
    """Writes ``state`` (with an int ``iteration``) as checkpoints/step_<iteration>.pt."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{int(state['iteration']):07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    try:
        # Our own files: tensors, dicts, numbers and RNG byte tensors only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which one and what to do
        raise ReconError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to "
            "resume from the one before, or start a new run"
        ) from exc
