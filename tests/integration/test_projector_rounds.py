"""Rounds: batches of several partitions projected together, and their crash recovery.

A round is one ClickHouse insert per table and one Postgres transaction for batches of
several partitions. The tests crash a real round between the ClickHouse insert and the
Postgres commit (the checkpoint advance fails), then start the ingest service on the
same stores: it must find the pending round, read its members back from Kafka, insert
them again with the same dedup token (a no-op) and commit, so every point is held once;
also when the broker was replaced meanwhile, and the records are the carried copies.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.embedded.broker import EmbeddedBroker, ensure_topics
from runledger.embedded.rotation import PostgresCheckpoints, gated_broker, rotate
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.ingest import checkpoints
from services.ingest.batch_writer import BatchWriter, assemble, prepare
from services.ingest.checkpoints import Member, PartitionKey
from services.ingest.partition_buffer import PartitionBuffer, round_due, take_round
from services.ingest.range_reader import read_ranges
from tests.support.auth import provision
from tests.support.events import metrics_batch, run_started
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration

RUNS = 8
BATCHES = 3
STEPS = 50
KEYS = ["loss", "acc"]


class _DeadLetters:
    def flush(self) -> None:
        return None

    def reject(self, *args: object) -> None:
        raise AssertionError(f"unexpected dead letter: {args}")


class _Crash(Exception):
    pass


def _cluster_id(bootstrap: str) -> str:
    """The broker incarnation the projector keys its checkpoints by."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        consumer.topics()
        return str(consumer._client.cluster.cluster_id or "static")
    finally:
        consumer.close()


async def _checkpoints(dsn: str, group: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT incarnation, partition, committed, pending_until, pending_round"
            " FROM projector_checkpoints WHERE consumer_group = $1 ORDER BY incarnation, partition",
            group,
        )
    finally:
        await conn.close()


@dataclass
class Workload:
    """What `_produce` sent: the last offset of each partition, the points and their sum."""

    tenant: str
    last: dict[int, int]
    expected_sum: float
    total_points: int = RUNS * BATCHES * STEPS * len(KEYS)


def _produce(bootstrap: str, topic: str, identity: Any, tenant: str) -> Workload:
    """RUNS runs of BATCHES metric batches each, spread over the topic's partitions, sent at
    once (they reach the broker within milliseconds)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_in_flight_requests_per_connection=1
    )
    futures = []
    expected_sum = 0.0
    for i in range(RUNS):
        run_id = f"run-{i}-{uuid.uuid4().hex[:6]}"
        futures.append(producer.send(topic, key=run_id.encode(), value=run_started(identity, "exp", run_id)))
        for b in range(BATCHES):
            raw, cols = metrics_batch(identity, "exp", run_id, KEYS, b * STEPS, STEPS, seed=i * 10 + b)
            futures.append(producer.send(topic, key=run_id.encode(), value=raw))
            expected_sum += float(cols["values"].sum())
    producer.flush(30)
    last: dict[int, int] = {}
    for future in futures:
        md = future.get(30)
        last[md.partition] = max(last.get(md.partition, -1), md.offset)
    producer.close()
    assert len(last) >= 2, "the runs must spread over several partitions for a multi-partition round"
    return Workload(tenant, last, expected_sum)


async def _crash_round(
    bootstrap: str, topic: str, dsn: str, group: str, state: Path, workload: Workload
) -> list[Member]:
    """Write the first half of every partition's records as one round whose checkpoint advance
    fails after ClickHouse took the insert; return its members. (Half, so that a projector
    that did not re-form exactly this round would form other rounds, with other tokens, and
    duplicate points.)"""
    incarnation = await asyncio.to_thread(_cluster_id, bootstrap)
    members = [Member(p, 0, off // 2) for p, off in sorted(workload.last.items())]
    records = await asyncio.to_thread(read_ranges, [bootstrap], topic, members)
    assert {p: len(rs) for p, rs in records.items()} == {m.partition: m.last + 1 for m in members}
    batches = [
        prepare(
            PartitionBuffer(
                key=PartitionKey(group, incarnation, topic, m.partition),
                tp=TopicPartition(topic, m.partition),
                committed=-1,
            ),
            records[m.partition],
            _DeadLetters(),  # type: ignore[arg-type]
        )
        for m in members
    ]
    round_ = assemble(batches)
    assert round_.members == members
    clickhouse = ChdbClickHouse(state / "clickhouse")
    clickhouse.migrate()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)

    async def crash(*args: object) -> None:
        raise _Crash

    original = checkpoints.advance
    checkpoints.advance = crash  # type: ignore[assignment]
    try:
        with pytest.raises(_Crash):
            await BatchWriter(clickhouse, pool, _DeadLetters()).write(round_)  # type: ignore[arg-type]
        held = clickhouse.query_arrow(
            "SELECT count() AS n FROM runledger.metric_points WHERE tenant_id = {t:String}",
            {"t": workload.tenant},
        ).to_pylist()[0]["n"]
    finally:
        checkpoints.advance = original
        clickhouse.close()
        await pool.close()
    assert 0 < held == round_.projection.point_count < workload.total_points  # ClickHouse holds the round
    pending = await _checkpoints(dsn, group)
    assert [(r["partition"], r["committed"], r["pending_until"]) for r in pending] == [
        (m.partition, -1, m.last) for m in members
    ]
    assert {r["pending_round"] for r in pending} == {round_.token}
    return members


def _fresh_names(prefix: str) -> tuple[str, str, dict[str, str], dict[str, int]]:
    """A fresh tenant, consumer group and pair of topics (events, dead letters) with their layout."""
    suffix = uuid.uuid4().hex[:8]
    topics = {"events": f"{prefix}.events.{suffix}", "dlq": f"{prefix}.dlq.{suffix}"}
    return f"{prefix}-{suffix[:6]}", f"projector-{suffix}", topics, {topics["events"]: 4, topics["dlq"]: 1}


def _projector(
    state: Path, bootstrap: str, dsn: str, topics: dict[str, str], group: str, **env: str
) -> ServiceProcess:
    return ServiceProcess(
        "ingest",
        state,
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": topics["events"],
            "RUNLEDGER_DLQ_TOPIC": topics["dlq"],
            "RUNLEDGER_PROJECTOR_GROUP": group,
            **env,
        },
    )


async def _wait_committed(
    dsn: str, group: str, incarnation: str, last: dict[int, int], projector: ServiceProcess
) -> None:
    """Until the projector's checkpoints of `incarnation` reach `last`, nothing pending."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = [r for r in await _checkpoints(dsn, group) if r["incarnation"] == incarnation]
        done = {r["partition"]: r["committed"] for r in rows if r["pending_until"] is None}
        if all(done.get(p, -1) >= off for p, off in last.items()):
            return
        await asyncio.sleep(0.3)
    pytest.fail(f"the projector did not reach {last}: {rows}\n{projector.log_tail()}")


async def _assert_held_once(dsn: str, state: Path, workload: Workload) -> None:
    """Every point, archived event, run and latest value of the workload is held exactly once."""
    tenant = workload.tenant
    clickhouse = ChdbClickHouse(state / "clickhouse")
    try:
        row = clickhouse.query_arrow(
            "SELECT count() AS n, uniqExact(run_id, key, step) AS distinct_points, sum(value) AS total"
            " FROM runledger.metric_points WHERE tenant_id = {t:String}",
            {"t": tenant},
        ).to_pylist()[0]
        archived = clickhouse.query_arrow(
            "SELECT count() AS n FROM runledger.events_archive WHERE tenant_id = {t:String}", {"t": tenant}
        ).to_pylist()[0]["n"]
    finally:
        clickhouse.close()
    assert row["n"] == row["distinct_points"] == workload.total_points
    assert row["total"] == pytest.approx(workload.expected_sum, rel=1e-12)
    assert archived == RUNS * (BATCHES + 1)
    conn = await asyncpg.connect(dsn)
    try:
        runs = await conn.fetchval("SELECT count(*) FROM runs WHERE tenant_id = $1", tenant)
        steps = await conn.fetch("SELECT step FROM latest_metrics WHERE tenant_id = $1", tenant)
    finally:
        await conn.close()
    assert runs == RUNS
    assert len(steps) == RUNS * len(KEYS) and {r["step"] for r in steps} == {BATCHES * STEPS - 1}


async def test_a_round_crashed_after_clickhouse_is_finished_once_by_the_next_projector(
    broker: EmbeddedBroker, topics: dict[str, str], fresh_dsn: str, tmp_path: Path
) -> None:
    tenant = f"rounds-{uuid.uuid4().hex[:6]}"
    identity = await provision(fresh_dsn, tenant)
    group = f"projector-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    workload = await asyncio.to_thread(_produce, broker.bootstrap, topics["events"], identity, tenant)
    await _crash_round(broker.bootstrap, topics["events"], fresh_dsn, group, state, workload)

    projector = _projector(state, broker.bootstrap, fresh_dsn, topics, group)
    projector.start()
    try:
        incarnation = await asyncio.to_thread(_cluster_id, broker.bootstrap)
        await _wait_committed(fresh_dsn, group, incarnation, workload.last, projector)
        log = projector.log_tail(400)
    finally:
        projector.stop()
    assert "finishing round" in log
    await _assert_held_once(fresh_dsn, state, workload)


def test_a_round_left_pending_on_a_replaced_broker_is_finished_from_the_carried_records(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """The projector dies between ClickHouse and PostgreSQL; the broker is replaced before it
    comes back. It must finish the round from the records carried into the new broker, with
    the round's token, instead of projecting them again under the new incarnation's tokens
    (which put them in ClickHouse twice)."""
    tenant, group, topics, layout = _fresh_names("carried")
    state = tmp_path / "state"
    # The brokers are started from this thread: they stop with the thread that started them.
    gate, old = gated_broker(tmp_path / "broker.log")
    running = [old]
    try:
        old.start()
        ensure_topics(gate.bootstrap, layout)
        identity = asyncio.run(provision(fresh_dsn, tenant))
        workload = _produce(gate.bootstrap, topics["events"], identity, tenant)
        members = asyncio.run(
            _crash_round(gate.bootstrap, topics["events"], fresh_dsn, group, state, workload)
        )

        new, report = rotate(
            old,
            gate,
            PostgresCheckpoints(fresh_dsn, group),
            events_topic=topics["events"],
            dlq_topic=topics["dlq"],
            topics=layout,
            max_carry_bytes=64 << 20,
            projection_timeout_s=0.1,  # no projector runs yet
        )
        running.append(new)
        assert report.carried_events == sum(off + 1 for off in workload.last.values())

        projector = _projector(state, gate.bootstrap, fresh_dsn, topics, group)
        projector.start()
        try:
            asyncio.run(_wait_committed(fresh_dsn, group, report.new_incarnation, workload.last, projector))
            log = projector.log_tail(400)
        finally:
            projector.stop()
        assert "left pending on the replaced broker" in log
        old_rows = asyncio.run(_checkpoints(fresh_dsn, group))
        assert [
            (r["partition"], r["committed"], r["pending_until"])
            for r in old_rows
            if r["incarnation"] == report.old_incarnation
        ] == [(m.partition, m.last, None) for m in members]
        asyncio.run(_assert_held_once(fresh_dsn, state, workload))
    finally:
        for broker in running:
            broker.stop()
        gate.stop()


async def _hold_latest_metrics(dsn: str) -> asyncpg.Connection:  # type: ignore[type-arg]
    """A connection holding latest_metrics locked: a round's PostgreSQL write (after its
    ClickHouse insert) waits for it."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN; LOCK TABLE latest_metrics IN ACCESS EXCLUSIVE MODE")
    return conn


async def _waiting_for_latest_metrics(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'latest_metrics'::regclass"
        )
        return count
    finally:
        await conn.close()


def test_a_round_in_flight_when_the_broker_restarts_empty_is_written_not_cut(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """The broker restarts (empty) while a round is between ClickHouse and PostgreSQL. The
    projector must finish the rounds it formed from the old incarnation's records before it
    moves on: cut off, the round stays pending on a broker that no longer holds its records,
    and its events are in ClickHouse but nowhere in PostgreSQL."""
    tenant, group, topics, layout = _fresh_names("inflight")
    state = tmp_path / "state"
    broker = EmbeddedBroker(0, tmp_path / "broker.log")  # its own: it is restarted
    broker.start()
    try:
        ensure_topics(broker.bootstrap, layout)
        identity = asyncio.run(provision(fresh_dsn, tenant))
        old_incarnation = _cluster_id(broker.bootstrap)
        # A round waits up to 2 s for more records: the workload, sent at once, is one round.
        projector = _projector(
            state, broker.bootstrap, fresh_dsn, topics, group, RUNLEDGER_PROJECTOR_MAX_WAIT_MS="2000"
        )
        projector.start()  # healthy: its schema migration is done, the lock cannot block it
        loop = asyncio.new_event_loop()
        lock = loop.run_until_complete(_hold_latest_metrics(fresh_dsn))
        try:
            workload = _produce(broker.bootstrap, topics["events"], identity, tenant)
            deadline = time.monotonic() + 60
            while not asyncio.run(_waiting_for_latest_metrics(fresh_dsn)):
                assert time.monotonic() < deadline, f"no round reached PostgreSQL\n{projector.log_tail()}"
                time.sleep(0.1)
            broker.restart()  # memory storage: the round's records are gone from the broker
            ensure_topics(broker.bootstrap, layout)
            while "writing the rounds formed already" not in projector.log_tail(200):
                assert time.monotonic() < deadline, (
                    f"the projector missed the restart\n{projector.log_tail()}"
                )
                time.sleep(0.1)
            loop.run_until_complete(lock.execute("COMMIT"))  # the round's write goes on
            asyncio.run(_wait_committed(fresh_dsn, group, old_incarnation, workload.last, projector))
        finally:
            loop.run_until_complete(lock.close())
            loop.close()
            projector.stop()
        asyncio.run(_assert_held_once(fresh_dsn, state, workload))
    finally:
        broker.stop()


def _buffer(partition: int, n: int) -> PartitionBuffer:
    state = PartitionBuffer(
        key=PartitionKey("g", "inc", "t", partition), tp=TopicPartition("t", partition), committed=-1
    )
    state.extend([SimpleNamespace(value=b"x" * 10, offset=offset) for offset in range(n)])
    return state


def test_a_round_takes_every_waiting_partition_and_rotates_under_a_backlog() -> None:
    buffers = [_buffer(0, 3), _buffer(1, 0), _buffer(2, 5)]
    # Partial rounds wait while the writer is busy, go when it is free and caught up.
    assert not round_due(buffers, 100, 10.0, caught_up=True, writer_free=False)
    assert round_due(buffers, 100, 10.0, caught_up=True, writer_free=True)
    assert round_due(buffers, 8, 10.0, caught_up=False, writer_free=False)  # 8 waiting = full
    taken = take_round(buffers, 100, start=0)
    assert [(s.key.partition, [r.offset for r in rs]) for s, rs in taken] == [
        (0, [0, 1, 2]),
        (2, [0, 1, 2, 3, 4]),
    ]
    assert not round_due(buffers, 100, 10.0, caught_up=True, writer_free=True)

    # Under a backlog a round holds at most the batch size, and the next starts elsewhere.
    buffers = [_buffer(0, 10), _buffer(1, 10), _buffer(2, 10)]
    first = take_round(buffers, 12, start=0)
    assert [(s.key.partition, len(rs)) for s, rs in first] == [(0, 10), (1, 2)]
    second = take_round(buffers, 12, start=1)
    assert [(s.key.partition, len(rs)) for s, rs in second] == [(1, 8), (2, 4)]
    assert [r.offset for r in second[0][1]] == list(range(2, 10))  # partition order kept


def test_the_dedup_token_of_a_round_depends_only_on_its_members() -> None:
    a = [Member(2, 5, 9), Member(0, 0, 3)]
    b = [Member(0, 0, 3), Member(2, 5, 9)]
    assert checkpoints.round_token("inc", "t", a) == checkpoints.round_token("inc", "t", b)
    assert checkpoints.round_token("inc", "t", a) != checkpoints.round_token("inc", "t", [Member(0, 0, 3)])
    # One partition keeps the per-batch token of earlier versions (pending rows they left).
    assert checkpoints.round_token("inc", "t", [Member(3, 10, 19)]) == "inc.t.3.10.19"
