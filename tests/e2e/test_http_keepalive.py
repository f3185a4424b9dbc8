"""Idle keep-alive connections outlive clients' own idle expiry (RUNLEDGER_API_KEEPALIVE_S).

uvicorn's default (5 s) equals httpx's idle expiry: a client sending on a connection idle for
5 s raced the server closing it and got "Server disconnected without sending a response".
"""

from __future__ import annotations

import time
from http.client import HTTPConnection
from urllib.parse import urlsplit

from tests.e2e.conftest import Stack

UVICORN_DEFAULT_KEEPALIVE_S = 5.0


def _get_healthz(conn: HTTPConnection) -> int:
    """The status of GET /healthz on `conn` (its body read, so the connection can be reused)."""
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    return response.status


def test_an_idle_connection_is_still_open_after_the_clients_expiry(stack: Stack) -> None:
    url = urlsplit(stack.url)
    assert url.hostname is not None and url.port is not None
    conn = HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        assert _get_healthz(conn) == 200
        first_socket = conn.sock
        time.sleep(UVICORN_DEFAULT_KEEPALIVE_S + 0.5)
        # A connection the server closed fails here (RemoteDisconnected) instead of reconnecting.
        assert _get_healthz(conn) == 200
        assert conn.sock is first_socket, "the server closed an idle connection after 5 s"
    finally:
        conn.close()
