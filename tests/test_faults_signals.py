"""Ctrl-C and SIGTERM on real `recon fit` / `recon view` processes, including under a parent
that ignores SIGINT (the child inherits SIG_IGN through exec, so recon must install its own
handler): the fit finishes its step, saves a checkpoint, prints the resume command and
exits 130/143; a second signal aborts at once; viewers close their port and exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from recon.optimise.checkpoint import checkpoint_iteration, is_complete, list_checkpoints, load_checkpoint

TINY_FIT = ["--views", "3", "--config", "fast", "--no-progress",
            "--set", "threads=1", "--set", "data.width=40", "--set", "data.options.n_views=6",
            "--set", "init.method=random", "--set", "init.random_points=300", "--set", "depth.enabled=false",
            "--set", "pseudo.enabled=false", "--set", "log_every=1", "--set", "checkpoint_every=50"]


# A parent that ignores SIGINT and then execs recon (what `nohup`-like job runners do).
IGNORING_PARENT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.executable, [sys.executable, '-m', 'recon.cli', *sys.argv[1:]])")


class Proc:
    """A `recon` subprocess whose merged output is collected on a thread."""

    def __init__(self, args: list[str], *, ignore_sigint: bool = True) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        launcher = ["-c", IGNORING_PARENT] if ignore_sigint else ["-m", "recon.cli"]
        self.proc = subprocess.Popen([sys.executable, *launcher, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, timeout: float = 240.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {what}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.05)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running {timeout} s after the signal:\n{self.output}") from None
        self._reader.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _logged_iteration(run: Path) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return 0
    its = [json.loads(ln).get("iteration", 0) for ln in lines if ln.strip().endswith("}")]
    return max(its, default=0)


def _start_fit(run: Path, iterations: int = 100_000, extra: tuple[str, ...] = ()) -> Proc:
    return Proc(["fit", "builtin:synthetic", "--out", str(run), *TINY_FIT,
                 "--set", f"optim.iterations={iterations}", *extra])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_after_the_step_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, signum):
    run = tmp_path / "run"
    fit = _start_fit(run)
    try:
        fit.wait_for(lambda: _logged_iteration(run) >= 70, what="iteration 70")
        fit.proc.send_signal(signum)
        rc = fit.wait()
    finally:
        fit.kill()
    assert rc == 128 + signum, fit.output
    out = fit.output
    name = signal.Signals(signum).name
    assert f"{name}: the fit stopped at iteration" in out, out
    reached = int(out.split("the fit stopped at iteration ")[1].split()[0])
    assert reached > 70
    # The checkpoint is the iteration reached, not the last periodic one (50).
    newest = list_checkpoints(run)[-1]
    assert checkpoint_iteration(newest) == reached and is_complete(newest)
    assert load_checkpoint(newest)["iteration"] == reached
    assert f"continue with: recon fit --resume {run}" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and metrics["iterations"] == reached
    if signum == signal.SIGINT:
        # The printed command continues the run (to a nearby end so the test stays short).
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["optim"]["iterations"] = reached + 5
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        resumed = Proc(["fit", "--resume", str(run), "--no-progress"])
        try:
            assert resumed.wait(timeout=240) == 0, resumed.output
        finally:
            resumed.kill()
        assert json.loads((run / "metrics.json").read_text())["iterations"] == reached + 5


def test_second_sigint_aborts_at_once_and_names_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    fit = _start_fit(run)
    try:
        fit.wait_for(lambda: _logged_iteration(run) >= 60, what="iteration 60")
        fit.proc.send_signal(signal.SIGINT)
        fit.wait_for(lambda: "stopping after iteration" in fit.output, timeout=30, what="the first signal")
        fit.proc.send_signal(signal.SIGINT)
        rc = fit.wait(timeout=30)
    finally:
        fit.kill()
    assert rc == 130, fit.output
    assert "SIGINT: aborted at iteration" in fit.output, fit.output
    assert "newest checkpoint:" in fit.output and f"recon fit --resume {run}" in fit.output


def test_signal_while_preparing_aborts_at_once(tmp_path):
    run = tmp_path / "run"
    fit = _start_fit(run, extra=("--set", "data.options.n_views=24", "--set", "data.width=120"))
    try:
        fit.wait_for(lambda: (run / "config.yaml").is_file(), what="the run folder")
        fit.proc.send_signal(signal.SIGTERM)
        rc = fit.wait(timeout=60)
    finally:
        fit.kill()
    assert rc == 143, fit.output
    assert "SIGTERM: aborted before the fit started; no checkpoint had been written" in fit.output


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _viewer_port(proc: Proc) -> int:
    marker = "viewer: open http://127.0.0.1:"
    proc.wait_for(lambda: marker in proc.output, what="the viewer URL")
    return int(proc.output.split(marker)[1].split()[0].rstrip("/").split("/")[0].split("?")[0])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    import torch

    from recon.export.cameras_json import NamedCamera, write_cameras_json
    from recon.export.ply import write_ply
    from recon.geometry import look_at
    from recon.types import Camera, Gaussians

    run = tmp_path_factory.mktemp("view") / "run"
    run.mkdir()
    K = torch.tensor([[40.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]])
    write_cameras_json(run / "cameras.json", [
        NamedCamera(f"v{i}", "train", Camera(K, look_at(torch.tensor([2.0 * i - 2.0, -0.3, -2.0]), torch.zeros(3),
                                                        torch.tensor([0.0, -1.0, 0.0])), 64, 48)) for i in range(3)])
    gen = torch.Generator().manual_seed(0)
    n = 200
    write_ply(run / "point_cloud.ply", Gaussians(
        means=torch.randn(n, 3, generator=gen) * 0.3, log_scales=torch.full((n, 3), -3.0),
        quats=torch.randn(n, 4, generator=gen), opacity_logits=torch.zeros(n), sh=torch.randn(n, 1, 3, generator=gen)))
    return run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_recon_view_stops_cleanly_under_a_parent_that_ignores_sigint(finished_run, signum):
    view = Proc(["view", str(finished_run), "--port", "0"])
    try:
        port = _viewer_port(view)
        assert _port_open(port)
        view.proc.send_signal(signum)
        rc = view.wait(timeout=30)
    finally:
        view.kill()
    assert rc == 0, view.output
    assert "viewer: stopping" in view.output
    assert not _port_open(port)


def test_fit_with_viewer_stops_on_sigint_under_a_parent_that_ignores_it(tmp_path):
    run = tmp_path / "run"
    fit = _start_fit(run, extra=("--view", "--port", "0"))
    try:
        port = _viewer_port(fit)
        fit.wait_for(lambda: _logged_iteration(run) >= 60, what="iteration 60")
        fit.proc.send_signal(signal.SIGINT)
        rc = fit.wait()
    finally:
        fit.kill()
    assert rc == 130, fit.output
    assert "the fit stopped at iteration" in fit.output and "viewer keeps serving" not in fit.output
    assert not _port_open(port)


def test_finished_fit_keeps_serving_until_sigterm_under_a_parent_that_ignores_sigint(tmp_path):
    run = tmp_path / "run"
    fit = _start_fit(run, iterations=20, extra=("--view", "--port", "0"))
    try:
        port = _viewer_port(fit)
        fit.wait_for(lambda: "the viewer keeps serving" in fit.output, what="the end of the fit")
        fit.proc.send_signal(signal.SIGTERM)
        rc = fit.wait(timeout=30)
    finally:
        fit.kill()
    assert rc == 0, fit.output
    assert "viewer: stopping" in fit.output and not _port_open(port)


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid``, once it has exec'd recon, has a handler installed for
    ``signum`` (/proc SigCgt mask; the launcher before its exec has Python's own)."""
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] != [b"-m", b"recon.cli"]:
            return False
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


def test_path_video_is_interrupted_at_once_under_a_parent_that_ignores_sigint(finished_run, tmp_path):
    video = Proc(["view", str(finished_run), "--path-video", str(tmp_path / "path.gif"), "--frames", "100000",
                  "--size", "64"])
    try:
        video.wait_for(lambda: _catches(video.proc.pid, signal.SIGINT), what="the SIGINT handler")
        time.sleep(1.0)
        video.proc.send_signal(signal.SIGINT)
        rc = video.wait(timeout=60)
    finally:
        video.kill()
    assert rc == 130, video.output
    assert "SIGINT: interrupted" in video.output
