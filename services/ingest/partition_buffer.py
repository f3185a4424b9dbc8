"""Per-partition buffering, and when the buffered records of all partitions become a round."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from services.ingest.checkpoints import PartitionKey

MAX_BATCH_BYTES = 32 * 1024 * 1024


class OffsetAnomaly(enum.Enum):
    """A polled record that does not follow the one before it."""

    # At or before an offset already fetched: a re-fetch after a seek (dropped, as expected).
    REPEAT = "repeat"
    # Past the next offset: the records between did not come. A plain topic's offsets have no
    # holes (no transactions, no compaction here), so the record is not taken and the caller
    # fetches again from the next offset. Seen under a fleet on the embedded broker: one hole
    # in a few 10-minute runs, an acknowledged event each time that was never projected.
    GAP_REFETCH = "gap_refetch"
    # The records of a hole arrived on a later fetch.
    GAP_FILLED = "gap_filled"
    # The same hole after GAP_REFETCHES fetches over at least GAP_WAIT_S: taken as it is. The
    # records are gone (the broker lost them, or its retention deleted them unread).
    GAP_ACCEPTED = "gap_accepted"


GAP_REFETCHES = 5
GAP_WAIT_S = 2.0


@dataclass
class PartitionBuffer:
    """Records of one partition between the poll and the round that projects them.

    `committed` is the checkpoint (moved by the writer); `fetched_until` is the last
    offset handed to a round or the buffer, so a re-fetch after a seek is ignored even
    while earlier rounds are still being written.
    """

    key: PartitionKey
    tp: TopicPartition
    committed: int
    fetched_until: int = -1
    buffer: list[Any] = field(default_factory=list)
    buffered_bytes: int = 0
    oldest: float = 0.0
    hole_at: int = -1  # the first offset of a hole being fetched again (-1: none)
    # The first offset of the hole the last GAP_* anomaly was about, and its fetches so far.
    last_hole: int = field(default=-1, init=False)
    hole_fetches: int = field(default=0, init=False)
    _hole_since: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.fetched_until = self.committed

    def add(self, record: Any) -> OffsetAnomaly | None:
        """Buffer a polled record unless it was taken already or a hole before it may still
        fill (then GAP_REFETCH: fetch again from `fetched_until + 1`); say how its offset
        departs from the next one expected, if it does."""
        if record.offset <= self.fetched_until:
            return OffsetAnomaly.REPEAT
        expected = self.fetched_until + 1
        anomaly = None
        if record.offset > expected:
            now = time.monotonic()
            if self.hole_at != expected:
                self.hole_at, self.hole_fetches, self._hole_since = expected, 0, now
            self.last_hole = expected
            self.hole_fetches += 1
            if self.hole_fetches < GAP_REFETCHES or now - self._hole_since < GAP_WAIT_S:
                return OffsetAnomaly.GAP_REFETCH
            anomaly, self.hole_at = OffsetAnomaly.GAP_ACCEPTED, -1
        elif self.hole_at == expected:
            anomaly, self.last_hole, self.hole_at = OffsetAnomaly.GAP_FILLED, expected, -1
        if not self.buffer:
            self.oldest = time.monotonic()
        self.buffer.append(record)
        self.buffered_bytes += len(record.value or b"")
        self.fetched_until = record.offset
        return anomaly

    def take(self, max_events: int, max_bytes: int = MAX_BATCH_BYTES) -> list[Any]:
        """The oldest buffered records, up to `max_events` and about `max_bytes` (at least one)."""
        cut, size = 0, 0
        for record in self.buffer[:max_events]:
            if cut and size + len(record.value or b"") > max_bytes:
                break
            size += len(record.value or b"")
            cut += 1
        taken, self.buffer = self.buffer[:cut], self.buffer[cut:]
        self.buffered_bytes = sum(len(r.value or b"") for r in self.buffer) if self.buffer else 0
        self.oldest = time.monotonic()
        return taken


def round_due(
    buffers: Sequence[PartitionBuffer], max_events: int, max_wait_s: float, caught_up: bool, writer_free: bool
) -> bool:
    """Whether the buffered records should go to the writer now.

    A full round goes at once; a partial one only when the writer has nothing queued (so
    rounds grow while it is busy: fewer, larger writes under load) and the consumer has
    caught up or the oldest record waited `max_wait_s`.
    """
    waiting = [b for b in buffers if b.buffer]
    if not waiting:
        return False
    if sum(len(b.buffer) for b in waiting) >= max_events:
        return True
    if sum(b.buffered_bytes for b in waiting) >= MAX_BATCH_BYTES:
        return True
    if not writer_free:
        return False
    return caught_up or time.monotonic() - min(b.oldest for b in waiting) >= max_wait_s


def take_round(
    buffers: Sequence[PartitionBuffer], max_events: int, start: int
) -> list[tuple[PartitionBuffer, list[Any]]]:
    """Up to `max_events` records (and about MAX_BATCH_BYTES) across partitions, one batch
    per partition.

    Partitions are visited from `start` (the caller rotates it every round), so under a
    backlog no partition waits behind the others for long.
    """
    taken: list[tuple[PartitionBuffer, list[Any]]] = []
    budget, bytes_budget = max_events, MAX_BATCH_BYTES
    n = len(buffers)
    for i in range(n):
        if budget <= 0 or bytes_budget <= 0:
            break
        state = buffers[(start + i) % n]
        if state.buffer:
            records = state.take(budget, bytes_budget)
            budget -= len(records)
            bytes_budget -= sum(len(r.value or b"") for r in records)
            taken.append((state, records))
    return taken
