"""A thin wrapper around ``viser.ViserServer``: safe defaults (loopback only, an access
token when bound off loopback: ``recon.view.access``), one printed URL, clean shutdown on
Ctrl-C. viser itself serves many browser clients at once; every scene node added through ``server.scene`` is broadcast to all of them and replayed to a
client that connects later."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from recon.errors import ConfigError, MissingDependencyError
from recon.view.access import TokenCheck, guarded_serve, is_loopback, new_token

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def _check_port_free(host: str, port: int) -> None:
    """viser silently moves to the next free port when ``port`` is taken; we would rather
    say so than print a URL nobody asked for, so probe the port first."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the viewer on {host}:{port} ({exc.strerror}); "
                "pass a free port with --port (or --port 0 to pick one)"
            ) from exc


class ViewerServer:
    """Owns one viser server. ``server.viser`` is the underlying ``viser.ViserServer``.

    ``port=0`` asks the OS for a free port (used by tests); ``server.port`` is the port
    actually bound."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        title: str = "recon",
        verbose: bool = False,
        announce: bool = True,
        token: str | None = None,
    ) -> None:
        try:
            import viser
        except ImportError as exc:  # viser is a core dependency; a broken env is still possible
            raise MissingDependencyError(
                "the viewer needs the 'viser' package: pip install viser"
            ) from exc
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"--port {port} is not a TCP port; use 0-65535")
        _check_port_free(host, int(port))
        self.host = host
        # Off loopback anyone who reaches the port could steer a fit: require a token there
        # (generated unless given); on loopback only when one is given.
        if token is None and not is_loopback(host):
            token = new_token()
        self.token = token or None
        self._access = TokenCheck(self.token) if self.token else None
        with guarded_serve(self._access) if self._access else contextlib.nullcontext():
            self.viser = viser.ViserServer(host=host, port=int(port), label=title, verbose=verbose)
        if self._access is not None:
            self._access.port = self.port
        self.viser.gui.set_panel_label(title)
        self._stop_requested = threading.Event()
        self._closed = False
        if announce:
            print(f"viewer: open {self.url} in a browser (Ctrl-C to stop)", flush=True)

    @property
    def port(self) -> int:
        return int(self.viser.get_port())

    @property
    def url(self) -> str:
        # A wildcard bind is reachable from this machine through loopback.
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}" + (f"/?token={self.token}" if self.token else "")

    @property
    def refused(self) -> int:
        """Requests refused for a missing or wrong token."""
        return self._access.refused if self._access is not None else 0

    @property
    def scene(self):
        return self.viser.scene

    @property
    def gui(self):
        return self.viser.gui

    def num_clients(self) -> int:
        return len(self.viser.get_clients())

    def wait_for_clients(self, n: int = 1, timeout: float = 10.0) -> bool:
        """Blocks until at least ``n`` browsers are connected (tests, scripted demos)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.num_clients() >= n:
                return True
            time.sleep(0.02)
        return False

    def serve_forever(self) -> None:
        """Blocks until ``request_stop()`` (a signal handler, another thread) or Ctrl-C,
        then shuts down."""
        try:
            while not self._stop_requested.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            print("viewer: stopping", flush=True)
            self.stop()

    def request_stop(self) -> None:
        """Makes ``serve_forever`` return; safe to call from a signal handler."""
        self._stop_requested.set()

    def stop(self) -> None:
        self._stop_requested.set()
        if self._closed:
            return
        self._closed = True
        self.viser.stop()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
