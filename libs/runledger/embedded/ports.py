"""Local TCP port helpers for the embedded stack."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free right now (the kernel picks it)."""
    # Binding to port 0 lets the kernel choose; there is a small window in which another
    # process could take it before our child binds, which callers accept for local use.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether `port` on `host` can be bound now (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so that sockets lingering in TIME_WAIT (a server we just stopped)
        # do not count as busy: the real server sets the same option when it binds.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_accepts(host: str, port: int, timeout: float = 0.25) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Block until host:port accepts TCP connections; TimeoutError after `timeout` seconds.

    `alive`, when given, is checked between attempts: once it returns False (the server
    process died) waiting longer is pointless, so RuntimeError is raised at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if port_accepts(host, port):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"the process that should listen on {host}:{port} has exited")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout:.1f}s")
        time.sleep(delay)
        # Back off gently: servers usually come up within tens of milliseconds.
        delay = min(delay * 2, 0.2)
