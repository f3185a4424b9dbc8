"""Start the real embedded stack (the same Supervisor as `runledger up`) for a benchmark."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runledger.config import Settings
from runledger.embedded.ports import free_port
from runledger.embedded.supervisor import Supervisor


@contextmanager
def embedded_stack(**overrides: Any) -> Iterator[Supervisor]:
    """A running stack in a fresh state directory under /tmp (removed afterwards, unless
    RUNLEDGER_BENCH_KEEP_STATE=1: then its logs and data stay for a look); `overrides` are
    Settings fields (its processes get the Supervisor's settings, these included)."""
    state = Path(tempfile.mkdtemp(prefix="runledger-bench-"))
    state.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    settings = Settings(state_dir=state, api_port=free_port(), **overrides)
    supervisor = Supervisor(settings)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()
        if os.environ.get("RUNLEDGER_BENCH_KEEP_STATE") == "1":
            print(f"state kept in {state}", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)
