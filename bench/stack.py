"""Start the real embedded stack (the same Supervisor as `runledger up`) for a benchmark."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from runledger.config import Settings
from runledger.embedded.ports import free_port
from runledger.embedded.supervisor import Supervisor


@contextmanager
def embedded_stack(**overrides: Any) -> Iterator[Supervisor]:
    """A running stack in a fresh state directory under /tmp (removed afterwards, unless
    RUNLEDGER_BENCH_KEEP_STATE=1: then its logs and data stay for a look); `overrides` are
    Settings fields (its processes get the Supervisor's settings, these included).

    It is supervised as `runledger up` supervises it (a thread runs the monitor: restarts,
    broker replacements), so that a long benchmark meets what a long-running stack does.
    """
    state = Path(tempfile.mkdtemp(prefix="runledger-bench-"))
    state.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    settings = Settings(state_dir=state, api_port=free_port(), **overrides)
    supervisor = Supervisor(settings)
    supervisor.start()
    stop = threading.Event()
    # Children started from this thread (a replaced broker) die with it, so it lives until
    # the stack stops (PR_SET_PDEATHSIG is per thread: runledger/embedded/_proc.py).
    monitor = threading.Thread(target=_supervise, args=(supervisor, stop), name="supervisor-monitor")
    monitor.start()
    try:
        yield supervisor
    finally:
        stop.set()
        monitor.join()
        supervisor.stop()
        if os.environ.get("RUNLEDGER_BENCH_KEEP_STATE") == "1":
            print(f"state kept in {state}", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)


def _supervise(supervisor: Supervisor, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            supervisor.monitor_once()
        except Exception:
            logging.getLogger(__name__).exception("supervisor check failed")


def process_tree(pid: int | None) -> list[psutil.Process]:
    """A process and its descendants ([] when it is gone); the root first."""
    if pid is None:
        return []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    """User + system CPU seconds the processes used so far (the ones gone count 0)."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def stack_processes(stack: Supervisor) -> dict[str, list[psutil.Process]]:
    """The processes of each part of a running stack: the services (the main process first,
    then its children: the analysis shards), the broker, PostgreSQL (postmaster and backends)."""
    broker = stack.broker.pid if stack.broker is not None else None
    postgres = stack.postgres.pid if stack.postgres is not None else None
    return {
        "services": process_tree(stack.services_pid),
        "broker": process_tree(broker),
        "postgres": process_tree(postgres),
    }
