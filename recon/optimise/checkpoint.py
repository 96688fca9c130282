"""Checkpoints of a fit: the trainer's full state (parameters, optimiser moments,
densification statistics, random-number streams, history) in ``RUN/checkpoints/``.

Writes are atomic and durable (temporary file, fsync, then rename), so a fit killed while
saving keeps the previous checkpoint; at most ``keep`` checkpoints stay on disk. A file
that is incomplete anyway (a machine crash on a file system that reorders writes, a copy
cut short) is skipped by ``latest_checkpoint`` with a warning, so ``--resume`` continues
from the one before.

A write that the disk refuses (full, read-only, a file where a folder should be) becomes
a ``RunWriteError`` that says which file, how much space it needed, which checkpoint is
still intact and the command that continues the run (``explain_write_failure``).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import warnings
import zipfile
from pathlib import Path

import torch

from recon.errors import ReconError

_NAME = re.compile(r"^step_(\d+)\.pt$")


class RunWriteError(ReconError):
    """A file of the run folder could not be written (disk full, read-only, not a folder)."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_iteration(path: Path) -> int:
    """The iteration a checkpoint file holds, from its name (step_<iteration>.pt)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not named like a checkpoint (step_<iteration>.pt)")
    return int(m.group(1))


def resume_command(run_dir: Path) -> str:
    """The exact command that continues the run in ``run_dir``."""
    return f"recon fit --resume {shlex.quote(str(run_dir))}"


def save_checkpoint(run_dir: Path, state: dict, *, keep: int = 2) -> Path:
    """Writes ``state`` (with an int ``iteration``) as checkpoints/step_<iteration>.pt."""
    folder = checkpoint_dir(run_dir)
    path = folder / f"step_{int(state['iteration']):07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a short write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise explain_write_failure(exc, path, run_dir, needed_bytes=state_bytes(state)) from exc
    _fsync_dir(folder)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the data itself is synced
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(path: Path) -> bool:
    """True when ``path`` is a whole torch checkpoint: a zip archive whose central directory
    is present and whose entries match their CRCs (a truncated file fails both)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def find_resume_checkpoint(run_dir: Path) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint or None, the newer incomplete ones it skipped). Each
    skipped file is warned about by name; it stays on disk, and the next save replaces it."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        if is_complete(path):
            return path, skipped
        skipped.append(path)
        warnings.warn(f"checkpoint {path} is incomplete or corrupt (truncated?); skipping it and "
                      "resuming from the one before", RuntimeWarning, stacklevel=2)
    return None, skipped


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (newer incomplete ones are skipped with a warning)."""
    return find_resume_checkpoint(run_dir)[0]


def resume_record(path: Path, state: dict, skipped: list[Path], run_dir: Path) -> dict:
    """What metrics.json says about a resumed run. Wall time is accounted per checkpoint:
    ``total_seconds`` and ``fit_seconds`` of a resumed run sum the earlier sessions up to the
    checkpoint it continued from (work after that checkpoint was lost and is not counted)."""
    run_dir = Path(run_dir)
    return {"from_iteration": int(state["iteration"]), "checkpoint": str(Path(path).relative_to(run_dir)),
            "skipped_incomplete": [str(Path(p).relative_to(run_dir)) for p in skipped],
            "session": int(state.get("sessions", 1)) + 1,
            "earlier_total_seconds": round(earlier_total_seconds(state), 2),
            "earlier_fit_seconds": round(float(state.get("seconds", 0.0)), 2)}


def earlier_total_seconds(state: dict) -> float:
    """Wall time of the sessions up to a checkpoint (checkpoints from before this field was
    recorded only know their fit time, a lower bound)."""
    return float(state.get("total_seconds", state.get("seconds", 0.0)))


def load_checkpoint(path: Path) -> dict:
    try:
        # Our own files: tensors, dicts, numbers and RNG byte tensors only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which one and what to do
        raise ReconError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to "
            "resume from the one before, or start a new run"
        ) from exc


# ---- failed writes ----------------------------------------------------------------------


def state_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) state: about the size of its checkpoint file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _first_file(path: Path) -> Path | None:
    """The first component of ``path`` that exists and is not a folder."""
    for part in (*reversed(path.parents), path):
        if part.exists() and not part.is_dir():
            return part
    return None


def explain_write_failure(exc: BaseException, path: Path | str | None, run_dir: Path | str,
                          *, needed_bytes: int | None = None) -> RunWriteError:
    """A ``RunWriteError`` for a write into ``run_dir`` that failed with ``exc``: the file,
    the cause in words, the space needed and free, what survived, and how to continue."""
    run_dir = Path(run_dir)
    path = Path(path) if path else Path(getattr(exc, "filename", None) or run_dir)
    code = getattr(exc, "errno", None)
    blocker = _first_file(path)
    if code in (errno.EEXIST, errno.ENOTDIR) or (blocker is not None and blocker != path):
        target = blocker or path
        return RunWriteError(f"cannot write {path}: {target} is a file, not a folder; pass a folder "
                             "(new or an earlier run folder) with --out")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}[code]
        fix = f"make {run_dir} writable"
    else:
        free = _free_bytes(path.parent)
        # torch's writer turns a short write into a RuntimeError without an errno.
        full = code in (errno.ENOSPC, errno.EDQUOT) or (
            code is None and needed_bytes is not None and free is not None and free < needed_bytes)
        first_line = (str(exc).strip().splitlines() or ["write failed"])[0]
        cause = "no space left on device" if full else f"{type(exc).__name__}: {first_line}"
        sizes = []
        if needed_bytes:
            sizes.append(f"it needed about {_size(needed_bytes)}")
        if free is not None:
            sizes.append(f"{_size(free)} free on that file system")
        if sizes:
            cause += f" ({', '.join(sizes)})"
        fix = "free some space"
    previous = [p for p in list_checkpoints(run_dir) if p != path and is_complete(p)]
    if previous:
        kept = previous[-1]
        return RunWriteError(
            f"cannot write {path}: {cause}. Nothing earlier was lost: checkpoint {kept} (iteration "
            f"{checkpoint_iteration(kept)}) is intact. {fix.capitalize()}, then continue with: "
            f"{resume_command(run_dir)}")
    return RunWriteError(f"cannot write {path}: {cause}. No checkpoint had been written yet, so there is "
                         f"nothing to resume; {fix} or choose another folder with --out, and run the command again")
