"""A token for viewers served off loopback (like Jupyter's): anyone who can reach the port
could otherwise pause or stop a fit.

The page must be opened as ``http://HOST:PORT/?token=T``; that response sets a cookie, and
the viewer's websocket (which the browser opens without the query string) must carry it
(or ``?token=T`` itself, for scripted clients). Anything else gets HTTP 403.

The hook: viser 1.1 serves its page and its websocket from one ``websockets`` server whose
``process_request`` it builds privately inside its server thread. ``guarded_serve`` wraps
``websockets.asyncio.server.serve`` only while ``viser.ViserServer`` starts (its constructor
returns once that call has been made) and puts the token check in front of viser's own
``process_request``. pyproject pins the viser minor version this was checked against.
"""

from __future__ import annotations

import hmac
import http
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_patch_lock = threading.Lock()  # one viewer starting at a time while serve() is wrapped


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def new_token() -> str:
    return secrets.token_urlsafe(18)


def cookie_name(port: int) -> str:
    # Cookies ignore the port: name them per port so two viewers on one host do not clash.
    return f"recon_viewer_token_{port}"


class TokenCheck:
    """``process_request`` in front of viser's: refuses requests without the token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = 0  # set once the server is bound (the cookie name depends on it)
        self.refused = 0

    def _presented(self, request) -> tuple[str | None, bool]:
        """(token from the query or the cookie, whether it came in the query)."""
        query = parse_qs(urlsplit(request.path).query).get("token")
        if query:
            return query[0], True
        for header in request.headers.get_all("Cookie"):
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == cookie_name(self.port):
                    return value, False
        return None, False

    def accepts(self, request) -> bool:
        given, _ = self._presented(request)
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def wrap(self, original):
        def process_request(connection, request):
            if not self.accepts(request):
                self.refused += 1
                return connection.respond(
                    http.HTTPStatus.FORBIDDEN,
                    "This recon viewer needs its access token: open the URL with ?token=... that recon printed.\n")
            response = original(connection, request) if original is not None else None
            _, in_query = self._presented(request)
            if response is not None and in_query:  # the page: let its websocket follow with a cookie
                response.headers["Set-Cookie"] = (f"{cookie_name(self.port)}={self.token}; Path=/; HttpOnly; "
                                                  "SameSite=Strict")
            return response

        return process_request


@contextmanager
def guarded_serve(check: TokenCheck) -> Iterator[None]:
    """While the block runs, ``websockets.asyncio.server.serve`` gets ``check`` in front of
    the ``process_request`` it is given (the first call only: viser's)."""
    import websockets.asyncio.server as ws_server

    with _patch_lock:
        original_serve = ws_server.serve
        used = False

        def serve(*args, **kwargs):
            nonlocal used
            if not used:
                used = True
                kwargs["process_request"] = check.wrap(kwargs.get("process_request"))
            return original_serve(*args, **kwargs)

        ws_server.serve = serve
        try:
            yield
        finally:
            ws_server.serve = original_serve
        if not used:
            raise RuntimeError("viser did not start its server through websockets.asyncio.server.serve; "
                               "the viewer's token check is not in place (viser version changed?)")
