"""Per-partition buffering, and when the buffered records of all partitions become a round."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from services import observability as metrics
from services.ingest.checkpoints import PartitionKey
from services.ingest.offset_continuity import OffsetAnomaly, OffsetContinuity

MAX_BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class PartitionBuffer:
    """Records of one partition between the poll and the round that projects them.

    `committed` is the checkpoint (moved by the writer); `offsets.fetched_until` is the last
    offset handed to a round or the buffer, so a re-fetch after a seek is ignored even
    while earlier rounds are still being written.
    """

    key: PartitionKey
    tp: TopicPartition
    committed: int
    buffer: list[Any] = field(default_factory=list)
    buffered_bytes: int = 0
    oldest: float = 0.0
    offsets: OffsetContinuity = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = OffsetContinuity(
            self.committed, f"projector, partition {self.tp.topic}-{self.tp.partition}", _count_anomaly
        )

    def extend(self, records: Sequence[Any]) -> bool:
        """Buffer the polled records that follow the ones taken; True when a hole came before
        some of them: fetch again from `offsets.fetched_until + 1`."""
        taken, refetch = self.offsets.screen(records)
        if taken:
            if not self.buffer:
                self.oldest = time.monotonic()
            self.buffer.extend(taken)
            self.buffered_bytes += sum(len(r.value or b"") for r in taken)
        return refetch

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


def _count_anomaly(anomaly: OffsetAnomaly) -> None:
    metrics.PROJECTOR_OFFSET_ANOMALIES.labels(kind=anomaly.value).inc()
