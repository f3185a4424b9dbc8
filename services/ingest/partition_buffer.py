"""Per-partition buffering: when the records of one partition become a batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from services.ingest.checkpoints import PartitionKey

MAX_BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class PartitionBuffer:
    """Records of one partition between the poll and the batch that projects them.

    `committed` is the checkpoint (moved by the writer); `fetched_until` is the last
    offset handed to a batch or the buffer, so a re-fetch after a seek is ignored even
    while earlier batches are still being written.
    """

    key: PartitionKey
    tp: TopicPartition
    committed: int
    pending_until: int | None
    fetched_until: int = -1
    buffer: list[Any] = field(default_factory=list)
    buffered_bytes: int = 0
    oldest: float = 0.0

    def __post_init__(self) -> None:
        self.fetched_until = self.committed

    def add(self, record: Any) -> None:
        """Buffer a polled record unless it is older than what was already taken."""
        if record.offset <= self.fetched_until:
            return
        if not self.buffer:
            self.oldest = time.monotonic()
        self.buffer.append(record)
        self.buffered_bytes += len(record.value or b"")
        self.fetched_until = record.offset

    def take_batch(self, max_events: int, max_wait_s: float, caught_up: bool, writer_free: bool) -> list[Any]:
        """Records to project now, or [] to keep buffering.

        A full batch goes at once; a partial one only when the writer has nothing queued
        (so batches grow while it is busy: fewer, larger ClickHouse inserts under load)
        and the consumer has caught up or the oldest record waited `max_wait_s`.
        """
        if not self.buffer:
            return []
        if self.pending_until is not None:
            # Recovery: the batch a crash interrupted must be re-formed exactly.
            if self.buffer[-1].offset < self.pending_until:
                return []
            cut = next(i for i, r in enumerate(self.buffer) if r.offset >= self.pending_until) + 1
            self.pending_until = None
        elif (
            len(self.buffer) >= max_events
            or self.buffered_bytes >= MAX_BATCH_BYTES
            or (writer_free and (caught_up or time.monotonic() - self.oldest >= max_wait_s))
        ):
            cut = min(len(self.buffer), max_events)
        else:
            return []
        batch, self.buffer = self.buffer[:cut], self.buffer[cut:]
        self.buffered_bytes = sum(len(r.value or b"") for r in self.buffer)
        self.oldest = time.monotonic()
        return batch
