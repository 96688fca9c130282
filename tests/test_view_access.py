"""The viewer off loopback: a token is required for the page and the websocket; a client
without it is refused (HTTP 403), one with it (query or the cookie the page sets) is served.
On loopback (the default) nothing changes unless a token is given."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
import viser

from recon.view.access import cookie_name
from recon.view.server import ViewerServer

websockets = pytest.importorskip("websockets")  # a dev dependency


def _get(url: str, cookie: str | None = None) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, dict(res.headers), res.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode(errors="replace")


async def _websocket(port: int, query: str = "", cookie: str | None = None) -> str:
    """'accepted' once the handshake succeeds and the server sends its first window, else
    the refusal's status code."""
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/{query}", max_size=None,
                                      subprotocols=[f"viser-v{viser.__version__}"],
                                      additional_headers={"Cookie": cookie} if cookie else None) as ws:
            await asyncio.wait_for(ws.recv(), 20)
            return "accepted"
    except websockets.exceptions.InvalidStatus as exc:
        return str(exc.response.status_code)


@pytest.fixture
def open_server():
    server = ViewerServer(host="0.0.0.0", port=0, announce=False)
    yield server
    server.stop()


def test_off_loopback_the_page_and_websocket_need_the_token(open_server):
    server, port = open_server, open_server.port
    token = server.token
    assert token and len(token) >= 20
    assert server.url == f"http://127.0.0.1:{port}/?token={token}"
    base = f"http://127.0.0.1:{port}/"
    status, _, body = _get(base)
    assert status == 403 and "token" in body
    assert _get(base + "?token=wrong")[0] == 403
    status, headers, body = _get(server.url)
    assert status == 200 and "<html" in body.lower()
    assert f"{cookie_name(port)}={token}" in headers.get("Set-Cookie", "")
    assert asyncio.run(_websocket(port)) == "403"
    assert asyncio.run(_websocket(port, cookie=f"{cookie_name(port)}=wrong")) == "403"
    # The browser opens the websocket without the query string: the page's cookie admits it.
    assert asyncio.run(_websocket(port, cookie=f"{cookie_name(port)}={token}")) == "accepted"
    assert asyncio.run(_websocket(port, query=f"?token={token}")) == "accepted"
    assert server.refused == 4


def test_loopback_needs_no_token_unless_one_is_given():
    server = ViewerServer(port=0, announce=False)
    try:
        assert server.token is None and "token" not in server.url
        assert _get(server.url)[0] == 200
        assert asyncio.run(_websocket(server.port)) == "accepted"
    finally:
        server.stop()
    server = ViewerServer(port=0, announce=False, token="s3cret-token")
    try:
        assert _get(f"http://127.0.0.1:{server.port}/")[0] == 403
        assert _get(server.url)[0] == 200 and server.url.endswith("?token=s3cret-token")
    finally:
        server.stop()


def test_recon_view_help_documents_the_token(capsys):
    from recon.cli import main

    with pytest.raises(SystemExit):
        main(["view", "--help"])
    assert "--token" in capsys.readouterr().out
