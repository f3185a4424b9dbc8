"""A round (one batch from each of several partitions) into both stores, effectively once.

`prepare` is the CPU part of one partition's batch (decode, validate) and `assemble`
builds the round's columns; both run while the previous round is still being written.
`BatchWriter.write` is the I/O part: one ClickHouse insert per table and one Postgres
transaction for the whole round (see checkpoints.py for the protocol).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pyarrow.compute as pc

from runledger.events.codec import DecodedEvent, InvalidEvent, decode
from runledger.events.models import EventType, utc_now
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.postgres.usage import add_usage
from services import observability as metrics
from services.ingest import checkpoints
from services.ingest.checkpoints import Member, PartitionKey, round_token
from services.ingest.dead_letters import DeadLetters, reason_class
from services.ingest.gate import Admitted, BatchGate, Gate
from services.ingest.metadata_writer import (
    REFUSED,
    already_applied,
    apply_projection,
    count_dead_letters,
    record_applied,
)
from services.ingest.partition_buffer import PartitionBuffer
from services.ingest.projection import ArchivedEvent, Projection, build_projection
from services.ingest.retention_cache import RetentionDays, with_ingested_at, with_retention

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunCheck:
    """An event of a principal narrowed to some experiments, to check against the
    experiment its run is recorded in (`event_ids`: the event and what it brought along)."""

    tenant_id: str
    run_id: str
    principal_id: str
    event: DecodedEvent
    offset: int
    event_ids: frozenset[str]


@dataclass
class PreparedBatch:
    """One partition's decoded batch: its partition, offsets, valid events, and how many of
    its messages were dead-lettered, by (tenant, reason); `run_checks` and `gate` are what
    the writer still checks against the recorded runs."""

    partition: PartitionBuffer
    last_offset: int
    events: list[ArchivedEvent]
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    run_checks: list[RunCheck] = field(default_factory=list)
    gate: BatchGate | None = None

    @property
    def member(self) -> Member:
        """This batch's place in its round's checkpoint: from the partition's checkpoint as it
        is when the round is written (earlier rounds may still be in flight when it is built)."""
        return Member(self.partition.key.partition, self.partition.committed + 1, self.last_offset)


@dataclass
class PreparedRound:
    """Batches of distinct partitions of one topic and their merged projection; `recorded_token`
    is the dedup token of a pending round being re-formed (else computed when written)."""

    batches: list[PreparedBatch]
    projection: Projection
    recorded_token: str | None = None

    @property
    def key(self) -> PartitionKey:
        """The group, incarnation and topic of the round (from its first batch)."""
        return self.batches[0].partition.key

    @property
    def members(self) -> list[Member]:
        return [b.member for b in self.batches]

    @property
    def events(self) -> list[ArchivedEvent]:
        return [a for b in self.batches for a in b.events]

    @property
    def token(self) -> str:
        """The round's ClickHouse dedup token (checkpoints.round_token of its members)."""
        key = self.key
        return self.recorded_token or round_token(key.incarnation, key.topic, self.members)


def assemble(batches: list[PreparedBatch], token: str | None = None) -> PreparedRound:
    """The round of these batches (one per partition): events kept in each partition's order,
    an event id seen in an earlier batch dropped, one projection built for all.

    `token` is given when a pending round is re-formed (it must match what was recorded).
    """
    if not batches:
        raise ValueError("a round needs at least one batch")
    keys = {(b.partition.key.group, b.partition.key.incarnation, b.partition.key.topic) for b in batches}
    if len(keys) != 1 or len({b.partition.key.partition for b in batches}) != len(batches):
        raise ValueError("a round holds one batch per partition of one group, incarnation and topic")
    if len(batches) > 1:
        seen: set[str] = set()
        for batch in batches:
            kept = [a for a in batch.events if a.event.envelope.event_id not in seen]
            if len(kept) < len(batch.events):
                metrics.REPEATED_EVENTS.labels(where="round").inc(len(batch.events) - len(kept))
            seen.update(a.event.envelope.event_id for a in kept)
            batch.events = kept
    events = [a for b in batches for a in b.events]
    return PreparedRound(batches, build_projection(events, utc_now()), token)


def prepare(
    partition: PartitionBuffer, records: list[Any], dead_letters: DeadLetters, gate: Gate | None = None
) -> PreparedBatch:
    """Decode one partition's records, admit them through `gate` (rejects to the DLQ), drop
    repeats within the batch. Without a gate nothing is verified (tools and tests only)."""
    key = partition.key
    source = f"{key.incarnation}.{key.topic}.{key.partition}"
    events: list[ArchivedEvent] = []
    seen: set[str] = set()
    rejected: Counter[tuple[str, str]] = Counter()
    checks: list[RunCheck] = []
    admission = gate.batch() if gate is not None else None
    for record in records:
        try:
            decoded = decode(record.value)
        except InvalidEvent as exc:
            dead_letters.reject(record.value, exc.reason, source, record.offset, record.key)
            rejected["", reason_class(exc.reason)] += 1  # tenant unknown: the event did not parse
            continue
        env = decoded.envelope
        if env.event_id in seen:
            metrics.REPEATED_EVENTS.labels(where="batch").inc()
            continue
        finding = None
        if admission is not None:
            verdict = admission.admit(decoded, record.timestamp)
            if not isinstance(verdict, Admitted):
                dead_letters.reject(record.value, verdict.reason, source, record.offset, record.key)
                rejected[verdict.tenant_id, reason_class(verdict.reason)] += 1
                continue
            finding = verdict.finding
            if verdict.narrowed and env.run_id is not None:
                ids = {env.event_id} | ({finding.envelope.event_id} if finding else set())
                checks.append(
                    RunCheck(
                        env.tenant_id,
                        env.run_id,
                        verdict.principal_id,
                        decoded,
                        record.offset,
                        frozenset(ids),
                    )
                )
        seen.add(env.event_id)
        events.append(ArchivedEvent(decoded, source, record.offset))
        if finding is not None:
            events.append(ArchivedEvent(finding, source, record.offset))
    return PreparedBatch(partition, records[-1].offset, events, rejected, checks, admission)


def ingestion_time(projection: Projection) -> datetime:
    """When the batch was received: the ingested_at of its archive rows (now without any)."""
    if projection.archive is not None and projection.archive.num_rows:
        at = projection.archive.column("ingested_at")[0].as_py()
        if isinstance(at, datetime):
            return at
    return utc_now()


def points_by_tenant(projection: Projection) -> dict[str, int]:
    """Metric points of a projection per tenant (what tenant_usage advances by)."""
    if projection.points is None:
        return {}
    counts = pc.value_counts(projection.points.column("tenant_id"))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


async def recorded_experiments(conn: Any, runs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The experiment each (tenant, run) is recorded in (absent: no such run yet)."""
    rows = await conn.fetch(
        "SELECT r.tenant_id, r.run_id, r.experiment_id FROM runs r"
        " JOIN unnest($1::text[], $2::text[]) AS q(t, r) ON r.tenant_id = q.t AND r.run_id = q.r",
        [t for t, _ in runs],
        [r for _, r in runs],
    )
    return {(r["tenant_id"], r["run_id"]): r["experiment_id"] for r in rows}


class BatchWriter:
    """Writes prepared rounds: ClickHouse with a dedup token, then Postgres with the checkpoints."""

    def __init__(self, clickhouse: ClickHouse, pool: asyncpg.Pool, dead_letters: DeadLetters) -> None:
        self._clickhouse = clickhouse
        self._pool = pool
        self._dead_letters = dead_letters
        self._retention = RetentionDays(pool)

    async def write(self, round_: PreparedRound) -> Projection:
        """Project one round; returns what was written (re-sent and refused events removed)."""
        key, members, token = round_.key, round_.members, round_.token
        rejected: Counter[tuple[str, str]] = Counter()
        for batch in round_.batches:
            rejected.update(batch.rejected)
        async with self._pool.acquire() as conn:
            events, projection = round_.events, round_.projection
            drop = await self._denied_by_recorded_run(conn, round_.batches, rejected)
            applied = await already_applied(conn, [a.event.envelope.event_id for a in events])
            if applied:
                metrics.REPEATED_EVENTS.labels(where="applied").inc(len(applied))
            drop |= applied
            if drop:  # re-sent events (same id, new offset) or refused ones: rare, so rebuild only then
                events = [a for a in events if a.event.envelope.event_id not in drop]
                projection = build_projection(events, utc_now())
            await asyncio.to_thread(self._dead_letters.flush)  # rejects are durable first
            await checkpoints.mark_pending(conn, key, members, token)
            # ClickHouse inserts (in a thread, off the GIL) while Postgres applies the round:
            # a round then takes the longer of the two instead of their sum (in a fleet,
            # ~140 ms + ~410 ms). The checkpoints still commit only after ClickHouse holds
            # the round, so the protocol of checkpoints.py is unchanged.
            clickhouse = asyncio.ensure_future(self._insert_clickhouse(projection, token))
            ids = [a.event.envelope.event_id for a in events]
            try:
                async with conn.transaction():
                    await apply_projection(conn, projection)
                    await record_applied(conn, ids)
                    await count_dead_letters(conn, rejected)
                    await add_usage(conn, points_by_tenant(projection))
                    await clickhouse
                    await checkpoints.advance(conn, key, members)
            except REFUSED as exc:
                await clickhouse
                log.warning("round %s refused by Postgres (%s); isolating the bad events", token, exc)
                await self._write_isolating(conn, events, projection, rejected, key, members)
            finally:
                # Never leave the insert running past this round (its thread cannot be cancelled):
                # on any failure, wait for it, then let the first error propagate.
                if not clickhouse.done():
                    await asyncio.wait({clickhouse})
                if clickhouse.done() and not clickhouse.cancelled():
                    clickhouse.exception()  # retrieved: a failure already raised above is not logged twice
        for batch in round_.batches:
            batch.partition.committed = batch.last_offset
        if any(e.envelope.type is EventType.RETENTION_POLICY_SET for e in projection.metadata_events):
            self._retention.invalidate()
        return projection

    async def _insert_clickhouse(self, projection: Projection, token: str) -> None:
        """The batch's points and archive rows, with dedup tokens (a repeated batch is a no-op)."""
        if projection.points is not None:
            # Each point carries its tenant's retention and the time it was received, which
            # the table's TTL reads: the batch's archive time, which replay stamps again.
            days = await self._retention.days(projection.tenants)
            points = with_ingested_at(with_retention(projection.points, days), ingestion_time(projection))
            await asyncio.to_thread(self._clickhouse.insert_arrow, "metric_points", points, token + ".p")
        if projection.archive is not None:
            await asyncio.to_thread(
                self._clickhouse.insert_arrow, "events_archive", projection.archive, token + ".a"
            )

    async def _denied_by_recorded_run(
        self, conn: Any, batches: list[PreparedBatch], rejected: Counter[tuple[str, str]]
    ) -> set[str]:
        """Dead-letter the events of narrowed principals whose run is recorded in an experiment
        they may not write (or is not recorded at all); returns the event ids to drop. One
        query for the whole round."""
        checked = [(batch, batch.gate) for batch in batches if batch.run_checks and batch.gate is not None]
        if not checked:
            return set()
        runs = {(c.tenant_id, c.run_id) for batch, _ in checked for c in batch.run_checks}
        recorded = await recorded_experiments(conn, runs)
        started: dict[tuple[str, str], str] = {}  # runs this round records (first RunStarted wins)
        for batch in batches:
            for archived in batch.events:
                env = archived.event.envelope
                if env.type is EventType.RUN_STARTED and env.run_id and env.experiment_id:
                    started.setdefault((env.tenant_id, env.run_id), env.experiment_id)
        denied: set[str] = set()
        for batch, gate in checked:
            key = batch.partition.key
            source = f"{key.incarnation}.{key.topic}.{key.partition}"
            for check in batch.run_checks:
                run = (check.tenant_id, check.run_id)
                experiment = recorded.get(run) or started.get(run)
                if experiment is None:
                    reason = f"permission denied: run {check.run_id} is not recorded"
                elif not gate.may_write_recorded(check.principal_id, check.tenant_id, experiment):
                    reason = (
                        f"permission denied: {check.principal_id} may not write experiment {experiment}"
                        f" (run {check.run_id})"
                    )
                else:
                    continue
                self._dead_letters.reject(check.event.raw, reason, source, check.offset, None)
                rejected[check.tenant_id, reason_class(reason)] += 1
                denied |= check.event_ids
        return denied

    async def _write_isolating(
        self,
        conn: Any,
        events: list[ArchivedEvent],
        projection: Projection,
        rejected: Counter[tuple[str, str]],
        key: PartitionKey,
        members: list[Member],
    ) -> None:
        """The slow path: each metadata event in a savepoint; refused ones go to the DLQ."""
        origin = {a.event.envelope.event_id: (a.source, a.offset) for a in events}
        dead = self._dead_letters
        counts = Counter(rejected)

        def reject(event: DecodedEvent, reason: str) -> None:
            source, offset = origin[event.envelope.event_id]
            dead.reject(event.raw, reason, source, offset, None)
            counts[event.envelope.tenant_id, reason_class(reason)] += 1

        async with conn.transaction():
            await apply_projection(conn, projection, reject)
            await asyncio.to_thread(dead.flush)  # durable before the batch counts as done
            await record_applied(conn, [a.event.envelope.event_id for a in events])
            await count_dead_letters(conn, counts)
            await add_usage(conn, points_by_tenant(projection))
            await checkpoints.advance(conn, key, members)
