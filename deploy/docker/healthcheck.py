"""Container health check of the RunLedger image, for every role (stdlib only).

Every service role answers `GET /healthz` on RUNLEDGER_API_PORT, so its health is that
answer: the api role once Postgres, ClickHouse and Kafka answer; the ingest and
analysis roles while their service thread runs and its consumer loop turned in the last
30 s (a wedged or crash-looping one answers 503). Any other command (e.g. `runledger
up`) is healthy while its process is alive and not stopped.

Exit status 0 = healthy, 1 = unhealthy (Docker HEALTHCHECK and Kubernetes exec probes).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0
# /proc/<pid>/stat states of a process that will not make progress.
_DEAD_STATES = frozenset("ZXTt")


def main_process_args(pid: int = 1, proc: Path = Path("/proc")) -> list[str]:
    """argv of the container's main process (PID 1 in its PID namespace)."""
    raw = (proc / str(pid) / "cmdline").read_bytes()
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def role_of(args: list[str]) -> str:
    """The service role in `runledger serve ROLE` / `python -m runledger.serve ROLE`; "" if none."""
    for i, arg in enumerate(args[:-1]):
        if arg in ("serve", "runledger.serve"):
            return args[i + 1]
    return ""


def process_alive(pid: int = 1, proc: Path = Path("/proc")) -> bool:
    """Whether pid exists and is not a zombie, dead or stopped."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may contain spaces.
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    return state not in _DEAD_STATES


def healthz_ok(port: int, host: str = "127.0.0.1") -> bool:
    """Whether the service on host:port answers GET /healthz with 200."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def check(pid: int = 1, proc: Path = Path("/proc")) -> bool:
    """Health of the container whose main process is pid."""
    if role_of(main_process_args(pid, proc)) in ("api", "all", "ingest", "analysis"):
        return healthz_ok(int(os.environ.get("RUNLEDGER_API_PORT", "8765")))
    return process_alive(pid, proc)


if __name__ == "__main__":
    sys.exit(0 if check() else 1)
