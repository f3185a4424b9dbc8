"""The attribution worker process dies with the analysis process that started it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for an analysis process killed with SIGKILL (a crash, a supervisor restart)
# after its first attribution started the worker.
_KILLED_PARENT = """
import os, signal
from services.analysis.attribution_jobs import attribution_executor

executor = attribution_executor()
print(executor.submit(os.getpid).result(timeout=120), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_the_worker_of_a_killed_analysis_process_does_not_outlive_it() -> None:
    # Not subprocess.run: a worker that outlived it would hold the output pipe open.
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as killed:
        assert killed.stdout is not None
        worker = int(killed.stdout.readline())
        assert killed.wait(timeout=60) == -9
    deadline = time.monotonic() + 10
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(worker):
        psutil.Process(worker).kill()
        pytest.fail(f"worker {worker} outlived the process that started it")
