"""The projector: consumes run events and projects them into ClickHouse and Postgres.

decode -> validate (bad ones to the DLQ) -> batch per partition -> drop already
applied event ids -> ClickHouse insert (dedup token) -> Postgres transaction with
the checkpoint -> Kafka offset commit. See checkpoints.py for why a crash at any
point neither loses nor duplicates an event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from runledger.config import Settings
from runledger.events.codec import DecodedEvent, InvalidEvent, decode
from runledger.events.models import utc_now
from runledger.stores.clickhouse import ClickHouse
from services.ingest import checkpoints
from services.ingest.checkpoints import Checkpoint, PartitionKey
from services.ingest.dead_letters import DeadLetters
from services.ingest.metadata_writer import already_applied, apply_projection, record_applied
from services.ingest.projection import ArchivedEvent, build_projection

log = logging.getLogger(__name__)

_MAX_BATCH_BYTES = 32 * 1024 * 1024
_POLL_RECORDS = 2000


class BrokerRestarted(Exception):
    """The broker's cluster id changed: offsets restarted, positions must be reloaded."""


def consumer_config(settings: Settings) -> dict[str, Any]:
    """kafka-python consumer settings tuned for tansu and low latency (see INFRA_NOTES)."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "group_id": settings.projector_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "fetch_max_wait_ms": 50,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_poll_records": _POLL_RECORDS,
        # A topic re-created after an embedded broker restart must be seen in seconds, not
        # after kafka-python's default 5 minutes.
        "metadata_max_age_ms": 5000,
    }


@dataclass
class _Partition:
    key: PartitionKey
    tp: TopicPartition
    committed: int
    pending_until: int | None
    buffer: list[Any] = field(default_factory=list)
    buffered_bytes: int = 0
    oldest: float = 0.0

    def add(self, record: Any) -> None:
        if record.offset <= self.committed or (self.buffer and record.offset <= self.buffer[-1].offset):
            return  # already projected, or re-fetched after a seek
        if not self.buffer:
            self.oldest = time.monotonic()
        self.buffer.append(record)
        self.buffered_bytes += len(record.value or b"")

    def take_batch(self, max_events: int, max_wait_s: float, caught_up: bool) -> list[Any]:
        """Records to project now, or [] to keep buffering."""
        if not self.buffer:
            return []
        if self.pending_until is not None:
            # Recovery: the unfinished batch must be re-formed exactly.
            if self.buffer[-1].offset < self.pending_until:
                return []
            cut = next(i for i, r in enumerate(self.buffer) if r.offset >= self.pending_until) + 1
        elif (
            len(self.buffer) >= max_events
            or self.buffered_bytes >= _MAX_BATCH_BYTES
            or caught_up
            or time.monotonic() - self.oldest >= max_wait_s
        ):
            cut = min(len(self.buffer), max_events)
        else:
            return []
        batch, self.buffer = self.buffer[:cut], self.buffer[cut:]
        self.buffered_bytes = sum(len(r.value or b"") for r in self.buffer)
        self.oldest = time.monotonic()
        return batch


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.changed = True

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.changed = True

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.changed = True


class Projector:
    """Runs until `stop` is set; restarts its consumer when the broker restarts."""

    def __init__(self, settings: Settings, clickhouse: ClickHouse, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._clickhouse = clickhouse
        self._pool = pool
        self.stop = asyncio.Event()
        # Held while a batch is written; replay takes it to pause projection.
        self.write_lock = threading.Lock()
        self.projected_points = 0
        self.projected_events = 0
        self._dead_letters: DeadLetters | None = None

    @property
    def dead_letter_counts(self) -> dict[str, int]:
        """Rejected events by reason class since start."""
        return dict(self._dead_letters.counts) if self._dead_letters else {}

    async def run(self) -> None:
        """Consume and project until stopped."""
        # Not idempotent: kafka-python's idempotent producer never recovers from a
        # broker that restarts empty (UnknownProducerId); a rare duplicate dead letter is fine.
        producer = KafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap.split(","),
            acks="all",
            linger_ms=5,
            enable_idempotence=False,
        )
        self._dead_letters = DeadLetters(producer, self._settings.dlq_topic)
        try:
            while not self.stop.is_set():
                try:
                    await self._consume()
                except BrokerRestarted as exc:
                    log.warning("broker restarted (%s); reloading positions", exc)
                except Exception:
                    log.exception("projector loop failed; restarting in 1 s")
                    await asyncio.sleep(1)
        finally:
            await asyncio.to_thread(producer.close, 5)

    async def _consume(self) -> None:
        s = self._settings
        consumer = await asyncio.to_thread(KafkaConsumer, **consumer_config(s))
        try:
            rebalance = _Rebalance()
            # Subscribe only once the topic exists (a restarted broker gets it back from the
            # supervisor shortly); the metadata fetch also brings the cluster id.
            while s.events_topic not in await asyncio.to_thread(consumer.topics):
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.5)
            if s.projector_assign_all:
                numbers = await asyncio.to_thread(consumer.partitions_for_topic, s.events_topic)
                consumer.assign([TopicPartition(s.events_topic, p) for p in sorted(numbers or ())])
            else:
                consumer.subscribe([s.events_topic], listener=rebalance)
            incarnation = consumer._client.cluster.cluster_id or "static"
            partitions: dict[TopicPartition, _Partition] = {}
            while not self.stop.is_set():
                polled = await asyncio.to_thread(consumer.poll, 100, _POLL_RECORDS)
                if (consumer._client.cluster.cluster_id or "static") != incarnation:
                    raise BrokerRestarted(
                        f"cluster id {incarnation} -> {consumer._client.cluster.cluster_id}"
                    )
                if rebalance.changed:
                    rebalance.changed = False
                    fresh = await self._reassign(consumer, partitions, incarnation)
                    polled = {tp: recs for tp, recs in polled.items() if tp not in fresh}
                total = 0
                for tp, records in polled.items():
                    state = partitions.get(tp)
                    if state is not None:
                        for record in records:
                            state.add(record)
                    total += len(records)
                caught_up = total < _POLL_RECORDS
                for state in list(partitions.values()):
                    batch = state.take_batch(
                        s.projector_max_batch_events, s.projector_max_wait_ms / 1000, caught_up
                    )
                    if batch:
                        await self._project(consumer, state, batch)
        finally:
            await asyncio.to_thread(consumer.close, False)

    async def _reassign(
        self, consumer: KafkaConsumer, partitions: dict[TopicPartition, _Partition], incarnation: str
    ) -> set[TopicPartition]:
        """Drop revoked partitions; load checkpoints of new ones and seek there."""
        assigned = set(consumer.assignment())
        for tp in list(partitions):
            if tp not in assigned:
                del partitions[tp]
        fresh = assigned - set(partitions)
        async with self._pool.acquire() as conn:
            for tp in fresh:
                key = PartitionKey(self._settings.projector_group, incarnation, tp.topic, tp.partition)
                cp: Checkpoint = await checkpoints.load(conn, key)
                partitions[tp] = _Partition(
                    key=key, tp=tp, committed=cp.committed, pending_until=cp.pending_until
                )
                consumer.seek(tp, cp.committed + 1)
                log.info(
                    "partition %s: resuming after offset %d (pending %s)", tp, cp.committed, cp.pending_until
                )
        return fresh

    async def _project(self, consumer: KafkaConsumer, state: _Partition, batch: list[Any]) -> None:
        await asyncio.to_thread(self.write_lock.acquire)
        try:
            await self._write(state, batch)
        finally:
            self.write_lock.release()
        try:
            consumer.commit({state.tp: OffsetAndMetadata(state.committed + 1, "", -1)})
        except Exception as exc:  # the Postgres checkpoint is the truth; this only feeds lag tools
            log.debug("kafka offset commit failed: %s", exc)

    async def _write(self, state: _Partition, batch: list[Any]) -> None:
        key, first, last = state.key, state.committed + 1, batch[-1].offset
        source = f"{key.incarnation}.{key.topic}.{key.partition}"
        assert self._dead_letters is not None
        events: list[ArchivedEvent] = []
        seen: set[str] = set()
        for record in batch:
            try:
                decoded = decode(record.value)
            except InvalidEvent as exc:
                self._dead_letters.reject(record.value, exc.reason, source, record.offset, record.key)
                continue
            if decoded.envelope.event_id not in seen:
                seen.add(decoded.envelope.event_id)
                events.append(ArchivedEvent(decoded, source, record.offset))
        async with self._pool.acquire() as conn:
            applied = await already_applied(conn, [a.event.envelope.event_id for a in events])
            fresh = [a for a in events if a.event.envelope.event_id not in applied]
            projection = build_projection(fresh, utc_now())
            await asyncio.to_thread(self._dead_letters.flush)  # decode rejects are durable first
            await checkpoints.mark_pending(conn, key, last)
            token = key.token(first, last)
            if projection.points is not None:
                await asyncio.to_thread(
                    self._clickhouse.insert_arrow, "metric_points", projection.points, token + ".p"
                )
            if projection.archive is not None:
                await asyncio.to_thread(
                    self._clickhouse.insert_arrow, "events_archive", projection.archive, token + ".a"
                )
            fresh_ids = [a.event.envelope.event_id for a in fresh]
            try:
                async with conn.transaction():
                    await apply_projection(conn, projection)
                    await record_applied(conn, fresh_ids)
                    await checkpoints.advance(conn, key, state.committed, last)
            except asyncpg.PostgresError as exc:
                log.warning("batch %s refused by Postgres (%s); isolating the bad events", token, exc)
                dead = self._dead_letters

                def reject(event: DecodedEvent, reason: str) -> None:
                    dead.reject(event.raw, reason, source, offsets[event.envelope.event_id], None)

                offsets = {a.event.envelope.event_id: a.offset for a in fresh}
                async with conn.transaction():
                    await apply_projection(conn, projection, reject)
                    await asyncio.to_thread(dead.flush)  # durable before the batch counts as done
                    await record_applied(conn, fresh_ids)
                    await checkpoints.advance(conn, key, state.committed, last)
        state.committed, state.pending_until = last, None
        self.projected_points += projection.point_count
        self.projected_events += len(fresh)
