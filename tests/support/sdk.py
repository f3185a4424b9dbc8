"""The SDK against an in-memory transport, for unit tests that count what a run emits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import runledger_sdk as rl

# Everything a run records by itself is off unless a test turns it on, so a test sees
# only the events it caused.
QUIET: dict[str, Any] = {
    "batch_interval_ms": 20,
    "system_metrics_interval_s": 0,
    "capture_code_state": False,
    "capture_environment": False,
    "lint_runs": False,
}


@contextmanager
def memory_sdk(tmp_path: Path, **settings: Any) -> Iterator[rl.InMemoryTransport]:
    """rl.init with an InMemoryTransport and QUIET defaults (overridable); shut down after."""
    memory = rl.InMemoryTransport()
    rl.init(transport=memory, **{"spool_dir": tmp_path / "spool", **QUIET, **settings})
    try:
        yield memory
    finally:
        rl.shutdown(5)
