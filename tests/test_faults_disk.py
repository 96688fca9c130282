"""Faults of the run folder's disk: full (a real tiny tmpfs where we may mount one, and an
injected ENOSPC everywhere), read-only, an --out that is a file, and a truncated newest
checkpoint. Each must end in one clear error (exit 2) that names the file and says what
survived and how to continue; continuing must give the same result as an uninterrupted fit."""

from __future__ import annotations

import errno
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from recon.cli import main
from recon.optimise import checkpoint
from recon.optimise.checkpoint import is_complete, latest_checkpoint, list_checkpoints, save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ITERATIONS = 60
TINY_FIT = ["--views", "3", "--config", "fast", "--no-progress",
            "--set", "threads=1", "--set", "data.width=40", "--set", "data.options.n_views=6",
            "--set", "init.method=random", "--set", "init.random_points=300", "--set", "depth.enabled=false",
            "--set", "pseudo.enabled=false", "--set", f"optim.iterations={ITERATIONS}", "--set", "checkpoint_every=20"]


def fit(out: Path) -> int:
    return main(["fit", "builtin:synthetic", "--out", str(out), *TINY_FIT])


def resume(run: Path) -> int:
    return main(["fit", "--resume", str(run), "--no-progress"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """The PLY of an uninterrupted fit: what every recovered run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert fit(run) == 0
    return (run / "point_cloud.ply").read_bytes()


@contextmanager
def tmpfs(path: Path, *options: str):
    """A real tmpfs at ``path`` (skips where this process may not mount one)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                         check=False, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _failing_save_after(n_ok: int, error: OSError):
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise error
        return real(obj, f, *a, **k)

    return save


# ---- full disk -------------------------------------------------------------------------


def test_injected_enospc_names_the_file_the_space_and_the_intact_checkpoint(tmp_path, monkeypatch, capsys,
                                                                             reference):
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", _failing_save_after(1, OSError(errno.ENOSPC, "No space left")))
    assert fit(run) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run}/checkpoints/step_0000040.pt: no space left on device (it needed about" in err
    assert f"checkpoint {run}/checkpoints/step_0000020.pt (iteration 20) is intact" in err
    assert f"continue with: recon fit --resume {run}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in list_checkpoints(run)] == ["step_0000020.pt"]  # no half-written file left
    assert not list((run / "checkpoints").glob("*.tmp"))
    monkeypatch.undo()  # space was freed
    assert resume(run) == 0
    assert (run / "point_cloud.ply").read_bytes() == reference


def test_real_full_tmpfs_is_a_clear_error_and_resume_after_freeing_space_matches(tmp_path, capsys, reference):
    with tmpfs(tmp_path / "disk", "size=160k") as disk:
        run = disk / "run"
        assert fit(run) == 2
        err = capsys.readouterr().err
        assert f"cannot write {run}/" in err and "no space left on device" in err, err
        assert "Traceback" not in err and "enforce fail" not in err
        kept = latest_checkpoint(run)
        assert kept is not None and f"checkpoint {kept} (iteration" in err
        assert f"continue with: recon fit --resume {run}" in err
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # free space
        assert resume(run) == 0
        assert (run / "point_cloud.ply").read_bytes() == reference


# ---- read-only, not a folder ---------------------------------------------------------


def test_read_only_file_system_is_a_clear_error(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro", "size=1m") as disk:
        assert fit(disk / "run") == 2
    err = capsys.readouterr().err
    assert f"cannot write {disk / 'run'}: the file system is read-only" in err, err
    assert "no checkpoint had been written yet" in err.lower() and "--out" in err


def test_injected_permission_error_on_a_checkpoint_keeps_the_earlier_one(tmp_path, monkeypatch, capsys):
    # Root ignores permission bits, so the refusal is injected (what a non-root user sees).
    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", _failing_save_after(2, PermissionError(errno.EACCES, "denied")))
    assert fit(run) == 2
    err = capsys.readouterr().err
    assert f"cannot write {run}/checkpoints/step_0000060.pt: permission denied" in err
    assert "step_0000040.pt (iteration 40) is intact" in err and f"make {run} writable" in err.lower()


@pytest.mark.parametrize("below", [False, True], ids=["out-is-a-file", "out-under-a-file"])
def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys, below):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = blocker / "run" if below else blocker
    assert fit(out) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "--out" in err, err
    assert blocker.read_text() == "not a folder"


# ---- a truncated newest checkpoint -----------------------------------------------------


def test_latest_checkpoint_skips_a_truncated_one_with_a_warning(tmp_path):
    for it in (10, 20):
        save_checkpoint(tmp_path, {"iteration": it, "x": torch.arange(1000.0)})
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert not is_complete(newest)
    with pytest.warns(RuntimeWarning, match="step_0000020.pt is incomplete or corrupt"):
        assert latest_checkpoint(tmp_path).name == "step_0000010.pt"


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_truncated(tmp_path, reference):
    run = tmp_path / "run"
    assert fit(run) == 0
    newest = list_checkpoints(run)[-1]  # step 60; step 40 is kept too
    newest.write_bytes(newest.read_bytes()[:5000])  # what a machine crash can leave
    with pytest.warns(RuntimeWarning, match="step_0000060.pt is incomplete"):
        assert resume(run) == 0
    assert (run / "point_cloud.ply").read_bytes() == reference
    assert is_complete(list_checkpoints(run)[-1])  # the resumed fit rewrote it


# ---- time accounting across resumes ------------------------------------------------------


class _SlowThenStop:
    """Listener: makes each step slow (a busy machine) and stops the fit at ``stop_at``."""

    def __init__(self, control, stop_at: int, delay: float) -> None:
        self.control, self.stop_at, self.delay = control, stop_at, delay

    def on_start(self, event) -> None:
        pass

    def on_step(self, event) -> None:
        import time

        time.sleep(self.delay)
        if event.iteration >= self.stop_at:
            self.control.stop()

    def on_finish(self, event) -> None:
        pass


def test_resumed_run_accounts_time_across_sessions_and_says_it_was_resumed(tmp_path):
    import json

    from recon.optimise.config import load_config
    from recon.optimise.events import FitControl
    from recon.pipeline import fit_scene

    overrides = [a for a in TINY_FIT[TINY_FIT.index("--set"):] if a != "--set"]
    config = load_config("fast", overrides)
    run = tmp_path / "run"
    control = FitControl()
    # A long first session (0.2 s per step, as on a busy machine), stopped at iteration 50 of 60.
    fit_scene("builtin:synthetic", out_dir=run, config=config, views=3,
              listeners=[_SlowThenStop(control, 50, 0.2)], control=control)
    first = json.loads((run / "metrics.json").read_text())
    assert first["resumed"] is None and first["fit_seconds"] >= 9.8  # 49 sleeps land inside the timed steps (the 50th after its time is taken)
    fit_scene("builtin:synthetic", out_dir=run, resume=True)
    second = json.loads((run / "metrics.json").read_text())
    assert second["iterations"] == ITERATIONS
    resumed = second["resumed"]
    assert resumed["from_iteration"] == 50 and resumed["checkpoint"] == "checkpoints/step_0000050.pt"
    assert resumed["session"] == 2 and resumed["skipped_incomplete"] == []
    # Both clocks include the first session (up to its checkpoint), and fit time <= total time.
    assert resumed["earlier_fit_seconds"] >= 9.8 and resumed["earlier_total_seconds"] >= resumed["earlier_fit_seconds"]
    assert second["fit_seconds"] >= resumed["earlier_fit_seconds"]
    assert second["fit_seconds"] <= second["total_seconds"]
    assert second["total_seconds"] >= first["total_seconds"] - 1.0  # (minus the first session's evaluation)
