"""Idle keep-alive connections outlive clients' own idle expiry (RUNLEDGER_API_KEEPALIVE_S).

uvicorn's default (5 s) equals httpx's idle expiry: a client sending on a connection idle for
5 s raced the server closing it and got "Server disconnected without sending a response".
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.e2e.conftest import Stack

UVICORN_DEFAULT_KEEPALIVE_S = 5.0


def _get_healthz(conn: socket.socket, host: str) -> bytes:
    """One request on `conn` and its whole response (head and body; b"" if the server closed)."""
    conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    conn.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = conn.recv(4096)
        if not chunk:  # closed by the server
            return reply
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_idle_connection_is_still_open_after_the_clients_expiry(stack: Stack) -> None:
    url = urlsplit(stack.url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        assert _get_healthz(conn, url.netloc).startswith(b"HTTP/1.1 200")
        time.sleep(UVICORN_DEFAULT_KEEPALIVE_S + 0.5)
        second = _get_healthz(conn, url.netloc)
    assert second.startswith(b"HTTP/1.1 200"), "the server closed an idle connection after 5 s"
