"""One batch of one partition into both stores, effectively once (see checkpoints.py).

`prepare` is the CPU part (decode, validate, build the columns) and runs while the
previous batch is still being written; `BatchWriter.write` is the I/O part.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from runledger.events.codec import DecodedEvent, InvalidEvent, decode
from runledger.events.models import utc_now
from runledger.stores.clickhouse import ClickHouse
from services.ingest import checkpoints
from services.ingest.dead_letters import DeadLetters, reason_class
from services.ingest.metadata_writer import (
    already_applied,
    apply_projection,
    count_dead_letters,
    record_applied,
)
from services.ingest.partition_buffer import PartitionBuffer
from services.ingest.projection import ArchivedEvent, Projection, build_projection

log = logging.getLogger(__name__)


@dataclass
class PreparedBatch:
    """A decoded batch: its partition, last offset, valid events, their projection, and
    how many of its messages were dead-lettered, by (tenant, reason)."""

    partition: PartitionBuffer
    last_offset: int
    events: list[ArchivedEvent]
    projection: Projection
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)


def prepare(partition: PartitionBuffer, records: list[Any], dead_letters: DeadLetters) -> PreparedBatch:
    """Decode records (bad ones to the DLQ), drop repeats within the batch, build the columns."""
    key = partition.key
    source = f"{key.incarnation}.{key.topic}.{key.partition}"
    events: list[ArchivedEvent] = []
    seen: set[str] = set()
    rejected: Counter[tuple[str, str]] = Counter()
    for record in records:
        try:
            decoded = decode(record.value)
        except InvalidEvent as exc:
            dead_letters.reject(record.value, exc.reason, source, record.offset, record.key)
            rejected["", reason_class(exc.reason)] += 1  # tenant unknown: the event did not parse
            continue
        if decoded.envelope.event_id not in seen:
            seen.add(decoded.envelope.event_id)
            events.append(ArchivedEvent(decoded, source, record.offset))
    projection = build_projection(events, utc_now())
    return PreparedBatch(partition, records[-1].offset, events, projection, rejected)


class BatchWriter:
    """Writes prepared batches: ClickHouse with a dedup token, then Postgres with the checkpoint."""

    def __init__(self, clickhouse: ClickHouse, pool: asyncpg.Pool, dead_letters: DeadLetters) -> None:
        self._clickhouse = clickhouse
        self._pool = pool
        self._dead_letters = dead_letters

    async def write(self, batch: PreparedBatch) -> Projection:
        """Project one batch; returns what was written (re-sent events removed)."""
        state, last = batch.partition, batch.last_offset
        key, first = state.key, state.committed + 1
        token = key.token(first, last)
        async with self._pool.acquire() as conn:
            events, projection = batch.events, batch.projection
            applied = await already_applied(conn, [a.event.envelope.event_id for a in events])
            if applied:  # re-sent events (same id, new offset): rare, so rebuild only then
                events = [a for a in events if a.event.envelope.event_id not in applied]
                projection = build_projection(events, utc_now())
            await asyncio.to_thread(self._dead_letters.flush)  # decode rejects are durable first
            await checkpoints.mark_pending(conn, key, last)
            if projection.points is not None:
                await asyncio.to_thread(
                    self._clickhouse.insert_arrow, "metric_points", projection.points, token + ".p"
                )
            if projection.archive is not None:
                await asyncio.to_thread(
                    self._clickhouse.insert_arrow, "events_archive", projection.archive, token + ".a"
                )
            ids = [a.event.envelope.event_id for a in events]
            try:
                async with conn.transaction():
                    await apply_projection(conn, projection)
                    await record_applied(conn, ids)
                    await count_dead_letters(conn, batch.rejected)
                    await checkpoints.advance(conn, key, state.committed, last)
            except asyncpg.PostgresError as exc:
                log.warning("batch %s refused by Postgres (%s); isolating the bad events", token, exc)
                await self._write_isolating(conn, events, projection, batch.rejected, state, last)
        state.committed = last
        return projection

    async def _write_isolating(
        self,
        conn: Any,
        events: list[ArchivedEvent],
        projection: Projection,
        rejected: Counter[tuple[str, str]],
        state: PartitionBuffer,
        last: int,
    ) -> None:
        """The slow path: each metadata event in a savepoint; refused ones go to the DLQ."""
        offsets = {a.event.envelope.event_id: a.offset for a in events}
        source = f"{state.key.incarnation}.{state.key.topic}.{state.key.partition}"
        dead = self._dead_letters
        counts = Counter(rejected)

        def reject(event: DecodedEvent, reason: str) -> None:
            dead.reject(event.raw, reason, source, offsets[event.envelope.event_id], None)
            counts[event.envelope.tenant_id, reason_class(reason)] += 1

        async with conn.transaction():
            await apply_projection(conn, projection, reject)
            await asyncio.to_thread(dead.flush)  # durable before the batch counts as done
            await record_applied(conn, [a.event.envelope.event_id for a in events])
            await count_dead_letters(conn, counts)
            await checkpoints.advance(conn, state.key, state.committed, last)
