"""The projector: consumes run events and projects them into ClickHouse and Postgres.

decode -> validate (bad ones to the DLQ) -> a round of batches across partitions ->
drop already applied event ids -> one ClickHouse insert per table (dedup token) ->
one Postgres transaction with every member's checkpoint -> Kafka offset commit. See
checkpoints.py for why a crash at any point neither loses nor duplicates an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable
from typing import Any

import asyncpg
import pyarrow.compute as pc
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from runledger.auth.watcher import AuthWatcher
from runledger.config import Settings
from runledger.incarnation import CarryOver
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.postgres import directory
from runledger.stores.postgres.usage import load_usage
from services import observability as metrics
from services.ingest import checkpoints
from services.ingest.batch_writer import BatchWriter, PreparedBatch, PreparedRound, assemble, prepare
from services.ingest.checkpoints import Checkpoint, Member, PartitionKey
from services.ingest.dead_letters import MAX_LETTER_BYTES, DeadLetters
from services.ingest.dedup_horizon import prune_forever
from services.ingest.gate import Gate
from services.ingest.incarnation import metadata_settled
from services.ingest.offset_continuity import OffsetAnomaly
from services.ingest.partition_buffer import PartitionBuffer, round_due, take_round
from services.ingest.projection import Projection
from services.ingest.range_reader import read_ranges

log = logging.getLogger(__name__)

_POLL_RECORDS = 2000
_CONFIRM_TIMEOUT_S = 5.0  # wait this long for the metadata refresh a dropped connection asked for
# Polls after the writer took a queued round before the next round may form: the first returns
# what an earlier fetch brought, the second what arrived since.
_FRESH_POLLS = 2
_TAKEN_WAIT_S = 0.5  # the longest the loop waits for the writer without turning
_DRAIN_TIMEOUT_S = 30.0  # after a broker restart, the longest the rounds formed already may take to write


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
        # time.monotonic() of the consumer loop's last iteration (0.0: none yet); the
        # ingest role's /healthz reports a projector whose loop stopped turning.
        self.heartbeat = 0.0
        self._dead_letters: DeadLetters | None = None
        # Keys, grants, policies and quotas, reloaded when they change (revocations apply
        # within auth_poll_interval_s plus one reload).
        self._auth: AuthWatcher | None = None
        self.gate: Gate | None = None
        # Offsets written rounds reached, for the next Kafka commit (it only feeds lag tools:
        # the checkpoints in Postgres are the truth).
        self._to_commit: dict[TopicPartition, OffsetAndMetadata] = {}
        for kind in OffsetAnomaly:  # every kind exists (at 0) from the start, for alerts and rates
            metrics.PROJECTOR_OFFSET_ANOMALIES.labels(kind=kind.value)

    def _take_commits(self) -> dict[TopicPartition, OffsetAndMetadata]:
        offsets, self._to_commit = self._to_commit, {}
        return offsets

    async def run(self) -> None:
        """Consume and project until stopped."""
        # Not idempotent: kafka-python's idempotent producer never recovers from a
        # broker that restarts empty (UnknownProducerId); a rare duplicate dead letter is fine.
        producer = KafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap.split(","),
            acks="all",
            linger_ms=5,
            enable_idempotence=False,
            max_request_size=MAX_LETTER_BYTES,  # a dead letter is as large as the event it keeps
            batch_size=1 << 20,  # a flood of bad input: few large requests, not one per 16 kB
        )
        self._dead_letters = DeadLetters(producer, self._settings.dlq_topic)
        pruner = asyncio.create_task(
            prune_forever(self._pool, self._settings.projector_dedup_horizon_days, self.stop)
        )
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
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
            if self._auth is not None:
                await self._auth.close()
            await asyncio.to_thread(producer.close, 5)

    async def _consume(self) -> None:
        s = self._settings
        assert self._dead_letters is not None
        if self._auth is None:
            self._auth = await directory.watch(self._pool, s.auth_poll_interval_s)
        auth = self._auth
        gate = Gate(lambda: auth.authorizer, auth.refresh, s.projector_max_clock_skew_s, self._existing_keys)
        async with self._pool.acquire() as conn:
            gate.load_usage(await load_usage(conn))
        self.gate = gate
        writer = BatchWriter(self._clickhouse, self._pool, self._dead_letters)
        self._to_commit = {}  # a previous broker's offsets mean nothing to this one
        consumer = await asyncio.to_thread(KafkaConsumer, **consumer_config(s))
        # Decoding the next round overlaps with writing the previous one (the ClickHouse
        # insert releases the GIL); one writer keeps each partition's batches in order.
        queue: asyncio.Queue[PreparedRound] = asyncio.Queue(maxsize=2)
        round_taken = asyncio.Event()  # set each time the writer takes a round off the queue
        write_loop = asyncio.create_task(self._write_loop(writer, queue, round_taken))
        try:
            rebalance = _Rebalance()
            # Subscribe only once the topic exists (a restarted broker gets it back from the
            # supervisor shortly); the metadata fetch also brings the cluster id.
            while s.events_topic not in await asyncio.to_thread(consumer.topics):
                self.heartbeat = time.monotonic()
                if self.stop.is_set():
                    return
                await asyncio.sleep(0.5)
            if s.projector_assign_all:
                numbers = await asyncio.to_thread(consumer.partitions_for_topic, s.events_topic)
                consumer.assign([TopicPartition(s.events_topic, p) for p in sorted(numbers or ())])
            else:
                consumer.subscribe([s.events_topic], listener=rebalance)
            incarnation = consumer._client.cluster.cluster_id or "static"
            partitions: dict[TopicPartition, PartitionBuffer] = {}
            rounds = 0
            polls_since_taken = _FRESH_POLLS
            caught_up = False
            while not self.stop.is_set():
                self.heartbeat = time.monotonic()
                if caught_up and not queue.empty():
                    # At the log's head with a round already waiting for the writer: what is
                    # fetched now only waits too, and each fetch costs the embedded broker a
                    # listing of every batch it holds (tansu 0.6.0; bench/RESULTS.md, "Fetches
                    # while a round waits"). Fetch again once the writer takes that round.
                    # (Behind, the loop keeps fetching: each poll then brings a full batch.)
                    round_taken.clear()
                    await self._unless_writer_failed(round_taken.wait(), write_loop, _TAKEN_WAIT_S)
                    polls_since_taken = 0
                polled = await asyncio.to_thread(_commit_and_poll, consumer, self._take_commits())
                polls_since_taken += 1
                # After a dropped connection, records can come from a restarted broker before
                # the metadata refresh that changes cluster_id (services/ingest/incarnation.py).
                if (
                    polled
                    and consumer._client.cluster.need_update
                    and not await asyncio.to_thread(
                        metadata_settled, consumer._client.cluster, _CONFIRM_TIMEOUT_S
                    )
                ):
                    raise BrokerRestarted("connection lost and the broker's cluster id is not confirmed")
                if (consumer._client.cluster.cluster_id or "static") != incarnation:
                    raise BrokerRestarted(
                        f"cluster id {incarnation} -> {consumer._client.cluster.cluster_id}"
                    )
                if rebalance.changed:
                    rebalance.changed = False
                    await self._unless_writer_failed(
                        queue.join(), write_loop
                    )  # positions move only with nothing in flight
                    fresh = await self._reassign(consumer, partitions, incarnation, gate, writer)
                    polled = {tp: recs for tp, recs in polled.items() if tp not in fresh}
                total = 0
                for tp, records in polled.items():
                    state = partitions.get(tp)
                    if state is not None and state.extend(records):
                        # A hole: fetch again from it. No poll runs now (the consumer is not
                        # thread-safe); kafka-python drops what it fetched past the new position.
                        consumer.seek(tp, state.offsets.fetched_until + 1)
                    total += len(records)
                caught_up = total < _POLL_RECORDS
                # One round takes every partition's waiting records (up to the batch size),
                # so a round's fixed cost (~60 ms: inserts, commits) is paid once for all
                # partitions instead of once each, and no partition queues behind another's
                # batch (a quiet tenant's write waits for one round, not one per partition).
                buffers = list(partitions.values())
                if round_due(
                    buffers,
                    s.projector_max_batch_events,
                    s.projector_max_wait_ms / 1000,
                    caught_up,
                    # The first poll after a wait returns what was fetched before it; the next
                    # one brings what arrived meanwhile, so the round takes that too.
                    queue.empty() and polls_since_taken >= _FRESH_POLLS,
                ):
                    taken = take_round(buffers, s.projector_max_batch_events, rounds % len(buffers))
                    rounds += 1
                    await gate.refresh_for(r.value for _, records in taken for r in records)
                    batches = [prepare(state, records, self._dead_letters, gate) for state, records in taken]
                    await self._unless_writer_failed(queue.put(assemble(batches)), write_loop)
            await self._unless_writer_failed(queue.join(), write_loop)
        except BrokerRestarted as exc:
            # The rounds formed already hold the old incarnation's records and go to ClickHouse
            # and PostgreSQL only: write them, rather than cut one short between the two stores.
            log.info("broker restarted (%s): writing the rounds formed already first", exc)
            await self._unless_writer_failed(queue.join(), write_loop, _DRAIN_TIMEOUT_S)
            raise
        finally:
            write_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await write_loop
            await asyncio.to_thread(_commit_and_close, consumer, self._take_commits())

    async def _existing_keys(self, key_ids: list[str]) -> set[str]:
        """Which of these key ids the directory holds (the gate reloads only for those)."""
        rows = await self._pool.fetch("SELECT key_id FROM api_keys WHERE key_id = ANY($1::text[])", key_ids)
        return {r["key_id"] for r in rows}

    async def _write_loop(
        self,
        writer: BatchWriter,
        queue: asyncio.Queue[PreparedRound],
        taken: asyncio.Event,
    ) -> None:
        """The write stage: rounds in queue order."""
        while True:
            round_ = await queue.get()
            taken.set()
            try:
                await self._write_round(writer, round_)
                # Committed to Kafka by the polling side: a KafkaConsumer is not thread-safe,
                # and a commit from here would run while a poll runs in its worker thread.
                self._to_commit.update(
                    (b.partition.tp, OffsetAndMetadata(b.partition.committed + 1, "", -1))
                    for b in round_.batches
                )
            finally:
                queue.task_done()

    async def _write_round(self, writer: BatchWriter, round_: PreparedRound) -> None:
        """Write one round under the write lock, and count it."""
        await asyncio.to_thread(self.write_lock.acquire)
        started = time.perf_counter()
        try:
            projection = await writer.write(round_)
        finally:
            self.write_lock.release()
        _observe(round_, projection, time.perf_counter() - started)
        self.projected_points += projection.point_count
        self.projected_events += len(projection.metadata_events) + (0 if projection.points is None else 1)

    @staticmethod
    async def _unless_writer_failed(
        step: Awaitable[Any], write_loop: asyncio.Task[None], timeout_s: float | None = None
    ) -> None:
        """Await `step` (handing a round over, waiting for the queue to drain or for the writer
        to take a round), at most `timeout_s`; a writer that fails meanwhile raises here
        instead of leaving the wait without end."""
        waiting = asyncio.ensure_future(step)
        await asyncio.wait({waiting, write_loop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()  # done already, timed out, or the writer is gone
        if write_loop.done():
            write_loop.result()  # raises the writer's error
            raise RuntimeError("the batch writer stopped")

    async def _reassign(
        self,
        consumer: KafkaConsumer,
        partitions: dict[TopicPartition, PartitionBuffer],
        incarnation: str,
        gate: Gate,
        writer: BatchWriter,
    ) -> set[TopicPartition]:
        """Drop revoked partitions; load checkpoints of new ones, finish a round a crash left
        pending on them, and seek there."""
        assigned = set(consumer.assignment())
        for tp in list(partitions):
            if tp not in assigned:
                del partitions[tp]
                for gauge in (metrics.COMMITTED_OFFSET, metrics.INGEST_LAG_SECONDS):
                    with contextlib.suppress(KeyError):  # no round of it written here yet
                        gauge.remove(tp.topic, str(tp.partition))
        fresh = assigned - set(partitions)
        if fresh and not partitions:  # the first assignment on this incarnation
            await self._finish_predecessor_rounds(incarnation, self._settings.events_topic, gate, writer)
        for tp in sorted(fresh, key=lambda tp: tp.partition):
            key = PartitionKey(self._settings.projector_group, incarnation, tp.topic, tp.partition)
            async with self._pool.acquire() as conn:
                cp: Checkpoint = await checkpoints.load(conn, key)
                if cp.pending_until is not None:
                    await self._finish_pending(conn, key, cp, gate, writer)
                    cp = await checkpoints.load(conn, key)
            partitions[tp] = PartitionBuffer(key=key, tp=tp, committed=cp.committed)
            consumer.seek(tp, cp.committed + 1)
            log.info("partition %s: resuming after offset %d", tp, cp.committed)
        return fresh

    async def _finish_pending(
        self, conn: Any, key: PartitionKey, cp: Checkpoint, gate: Gate, writer: BatchWriter
    ) -> None:
        """Re-form the round a crash interrupted (its members read back from Kafka exactly)
        and write it with its recorded token: ClickHouse drops a repeated insert."""
        members = await checkpoints.pending_members(conn, key, cp)
        if not members:  # finished by another projector meanwhile
            return
        log.info("finishing round %s left pending: %s", cp.pending_round or "(one partition)", members)
        bootstrap = self._settings.kafka_bootstrap.split(",")
        records = await asyncio.to_thread(read_ranges, bootstrap, key.topic, members)
        await self._rewrite_round(key, members, cp.pending_round, records, gate, writer)

    async def _finish_predecessor_rounds(
        self, incarnation: str, topic: str, gate: Gate, writer: BatchWriter
    ) -> None:
        """Finish the rounds left pending on the incarnation a replacement carried into this one.

        Such a round may already be in ClickHouse but not in PostgreSQL (the projector died,
        or its round was cut short when the broker went). Its records are here now, under new
        offsets: read back and written with the round's recorded token, ClickHouse drops them
        as a repeated insert, and PostgreSQL applies them; the carried copies the projector
        reads next are then dropped as already applied, instead of reaching ClickHouse twice.
        """
        group = self._settings.projector_group
        async with self._pool.acquire() as conn:
            carry = await checkpoints.load_carry_over(conn, incarnation, topic)
            if carry is None:
                return
            old_key = PartitionKey(group, carry.predecessor, topic, 0)
            rounds = await checkpoints.pending_rounds(conn, old_key)
        bootstrap = self._settings.kafka_bootstrap.split(",")
        for token, members in rounds:
            here = _carried_members(carry, members)
            if here is None:
                # The rotation carries from the lowest position any consumer still needs, so
                # this means a checkpoint moved backwards: there is nothing to re-form it from.
                log.error(
                    "round %s left pending on %s was not carried over: %s", token, carry.predecessor, members
                )
                continue
            log.info(
                "finishing round %s left pending on the replaced broker %s: %s",
                token,
                carry.predecessor,
                members,
            )
            read = await asyncio.to_thread(read_ranges, bootstrap, topic, here)
            # Back to the offsets they had when the round was formed (its checkpoints, the archive's).
            records = {
                p: [r._replace(offset=r.offset + carry.carried_from.get(p, 0)) for r in rs]
                for p, rs in read.items()
            }
            await self._rewrite_round(old_key, members, token, records, gate, writer)

    async def _rewrite_round(
        self,
        key: PartitionKey,
        members: list[Member],
        token: str | None,
        records: dict[int, list[Any]],
        gate: Gate,
        writer: BatchWriter,
    ) -> None:
        """Write again the pending round of `members` (in `key`'s group, incarnation and topic)
        from its records, with its recorded `token` (None: the one-partition form)."""
        assert self._dead_letters is not None
        await gate.refresh_for(r.value for rs in records.values() for r in rs)
        batches: list[PreparedBatch] = []
        for m in members:
            member_key = PartitionKey(key.group, key.incarnation, key.topic, m.partition)
            state = PartitionBuffer(
                key=member_key, tp=TopicPartition(key.topic, m.partition), committed=m.first - 1
            )
            batches.append(prepare(state, records[m.partition], self._dead_letters, gate))
        round_ = assemble(batches, token or checkpoints.round_token(key.incarnation, key.topic, members))
        await self._write_round(writer, round_)


def _carried_members(carry: CarryOver, members: list[Member]) -> list[Member] | None:
    """The members of a round of `carry`'s predecessor, at their offsets in the carried-into
    incarnation (None: some were not carried)."""
    here = []
    for m in members:
        first, last = carry.new_offset(m.partition, m.first), carry.new_offset(m.partition, m.last)
        if first is None or last is None:
            return None
        here.append(Member(m.partition, first, last))
    return here


def _commit(consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
    if offsets:
        try:
            consumer.commit(offsets)
        except Exception as exc:  # the Postgres checkpoint is the truth; this feeds lag tools
            log.debug("kafka offset commit failed: %s", exc)


def _commit_and_poll(
    consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
) -> dict[TopicPartition, list[Any]]:
    """Commit what the writer finished, then poll: the consumer used by one thread at a time."""
    _commit(consumer, offsets)
    polled: dict[TopicPartition, list[Any]] = consumer.poll(100, _POLL_RECORDS)
    return polled


def _commit_and_close(consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
    _commit(consumer, offsets)
    consumer.close(False)


def _observe(round_: PreparedRound, projection: Projection, seconds: float) -> None:
    """Prometheus metrics of one written round (services/observability.py)."""
    metrics.PROJECTOR_BATCH_SECONDS.observe(seconds)
    metrics.PROJECTOR_BATCH_POINTS.observe(projection.point_count)
    if projection.points is not None:
        counts = pc.value_counts(projection.points.column("tenant_id"))
        for tenant, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            metrics.POINTS_PROJECTED.labels(tenant).inc(n)
    if projection.archive is not None:
        counts = pc.value_counts(projection.archive.column("type"))
        for type_, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            metrics.EVENTS_PROJECTED.labels(type_).inc(n)
    for batch in round_.batches:
        tp = batch.partition.tp
        partition = (tp.topic, str(tp.partition))
        metrics.COMMITTED_OFFSET.labels(*partition).set(batch.partition.committed)
        if batch.events:
            newest = max(a.event.envelope.occurred_at for a in batch.events)
            metrics.INGEST_LAG_SECONDS.labels(*partition).set(max(0.0, time.time() - newest.timestamp()))
