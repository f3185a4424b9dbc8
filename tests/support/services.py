"""Real service processes for tests: the embedded stack pieces and `runledger.serve` children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runledger.embedded.ports import free_port

REPO = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """`python -m runledger.serve ROLE` with its own state dir; kill/restart at will."""

    def __init__(self, role: str, state_dir: Path, env: dict[str, str]) -> None:
        self.role = role
        self.state_dir = state_dir
        self.api_port = free_port()
        self.env = {
            **os.environ,
            **env,
            "RUNLEDGER_STATE_DIR": str(state_dir),
            "RUNLEDGER_API_PORT": str(self.api_port),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = state_dir / f"serve-{role}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the process: the API (roles all and api), or /healthz and /metrics (ingest)."""
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        """Start the process and wait for its /healthz (ingest: its projector consumes)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runledger.serve", self.role],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Poll /healthz until 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.role} not healthy in {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait for a clean exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process log, for failure messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
