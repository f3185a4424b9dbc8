"""A transport that keeps events in memory: for tests of the SDK and of user code."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from runledger_sdk.transport import Outcome, Record, Transport


class InMemoryTransport(Transport):
    """Acknowledges every record and keeps it; `fail` makes sends fail (broker down)."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[Record] = []
        self.sends = 0
        self.fail = False
        # Optional hook deciding per record (e.g. reject one); wins over `fail`.
        self.outcome_for: Callable[[Record], Outcome] | None = None

    def send(self, records: Sequence[Record], timeout: float) -> list[Outcome]:
        """Record the batch and acknowledge it (or fail it, when told to)."""
        with self._lock:
            self.sends += 1
            outcomes: list[Outcome] = []
            for record in records:
                if self.outcome_for is not None:
                    outcome = self.outcome_for(record)
                else:
                    outcome = Outcome.FAILED if self.fail else Outcome.ACKED
                if outcome is Outcome.ACKED:
                    self.records.append(record)
                outcomes.append(outcome)
            return outcomes

    def events(self) -> list[dict[str, Any]]:
        """The acknowledged events, decoded to dicts, in arrival order."""
        with self._lock:
            return [orjson.loads(r.value) for r in self.records]
