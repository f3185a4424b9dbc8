"""Child-process helpers shared by the embedded services (internal)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1

# Loaded once in the parent: a preexec function runs between fork and exec, where loading
# a library (or anything that takes locks) is unsafe.
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - every glibc/musl Linux has it
        _libc = None


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive `sig` when this process dies (Linux only).

    Without it, a supervisor killed with SIGKILL would leave PostgreSQL, the broker and
    the services running: the next `runledger up` would then find the data dirs locked.
    Linux delivers the signal when the *thread* that forked dies, so start children from
    a thread that lives as long as they should (the supervisor uses the main thread).
    """
    if _libc is None:
        return None
    parent = os.getpid()

    def _preexec() -> None:
        follow_parent(parent, sig)

    return _preexec


def follow_parent(parent: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """In a child of `parent`: receive `sig` when the parent dies (Linux only; else nothing).

    For children a library starts, where there is no preexec_fn: a ProcessPoolExecutor's
    workers take it as their initializer (with the parent's pid as its argument). Such a
    worker holds both ends of its task queue's pipe, so it never sees the parent go and,
    once the parent is killed, would wait for tasks forever.
    """
    if _libc is None:
        return
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    # The parent may have died before prctl: then nobody would send the signal.
    if os.getppid() != parent:
        os.kill(os.getpid(), int(sig))


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> int:
    """Send `sig`, wait up to `timeout` s, then SIGKILL; return the exit status."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def open_log(path: Path) -> int:
    """Open `path` for appending (creating parents) and return the raw fd for a child."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_APPEND so several incarnations of a child (restarts) add to one file.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def write_log_line(path: Path, line: str) -> None:
    """Append one line (a marker such as 'starting incarnation X') to a child's log."""
    fd = open_log(path)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)
