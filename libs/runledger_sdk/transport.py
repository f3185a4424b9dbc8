"""The transport interface: how formed, encoded events leave the process.

A transport only moves bytes: it never re-encodes an event, so a resend carries the same
event_id and the same bytes, and the projector can drop the duplicate.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Record:
    """One encoded event: `seq` orders it within this process, `key` is the topic key."""

    seq: int
    key: bytes
    value: bytes

    @property
    def size(self) -> int:
        """Bytes this record takes in memory queues and on the spool."""
        return len(self.key) + len(self.value)


class Outcome(Enum):
    """What became of one record handed to a transport."""

    ACKED = "acked"  # the broker/API holds it: done
    REJECTED = "rejected"  # refused for good (logged): retrying would not help
    FAILED = "failed"  # not known to be delivered: spool and resend


class Transport(abc.ABC):
    """Delivers batches of records; called from one background thread only."""

    name: str = "transport"
    # Why the latest send failed, for the outage warning ("" when unknown).
    last_error: str = ""

    @abc.abstractmethod
    def send(self, records: Sequence[Record], timeout: float) -> list[Outcome]:
        """Deliver `records` in order within about `timeout` s; one Outcome per record."""

    def close(self, timeout: float) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections, waiting at most `timeout` s."""
