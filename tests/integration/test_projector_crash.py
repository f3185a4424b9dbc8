"""SIGKILL the projector in the middle of a 200,000-point stream: no loss, no duplicates."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from kafka import KafkaProducer

from runledger.embedded.broker import EmbeddedBroker
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from tests.support.auth import Identity, provision
from tests.support.events import metrics_batch, run_started
from tests.support.services import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = 8
BATCHES_PER_RUN = 25
STEPS_PER_BATCH = 500
KEYS = ["loss", "acc"]  # 8 runs x 25 batches x 500 steps x 2 keys = 200,000 points


async def _committed(dsn: str, group: str) -> dict[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT partition, committed FROM projector_checkpoints WHERE consumer_group = $1", group
        )
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {r["partition"]: r["committed"] for r in rows}


async def test_projector_killed_mid_stream_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, topics: dict[str, str], fresh_dsn: str, tmp_path: Path
) -> None:
    tenant, experiment = f"crash-{uuid.uuid4().hex[:6]}", "exp-crash"
    group = f"projector-{uuid.uuid4().hex[:6]}"
    env = {
        "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
        "RUNLEDGER_POSTGRES_DSN": fresh_dsn,
        "RUNLEDGER_EVENTS_TOPIC": topics["events"],
        "RUNLEDGER_DLQ_TOPIC": topics["dlq"],
        "RUNLEDGER_PROJECTOR_GROUP": group,
        "RUNLEDGER_PROJECTOR_MAX_BATCH_EVENTS": "20",
    }
    identity = await provision(fresh_dsn, tenant)
    projector = ServiceProcess("ingest", tmp_path / "state", env)
    projector.start()
    try:
        await _stream_with_kills(projector, broker, topics, fresh_dsn, group, identity, experiment, tmp_path)
    finally:
        projector.kill()


async def _stream_with_kills(
    projector: ServiceProcess,
    broker: EmbeddedBroker,
    topics: dict[str, str],
    fresh_dsn: str,
    group: str,
    identity: Identity,
    experiment: str,
    tmp_path: Path,
) -> None:
    tenant = identity.tenant_id

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    run_ids = [uuid.uuid4().hex for _ in range(RUNS)]
    expected_sum = 0.0
    last_offset: dict[int, int] = {}
    lock = threading.Lock()

    def produce() -> None:
        nonlocal expected_sum
        for run_id in run_ids:
            md = producer.send(
                topics["events"], key=run_id.encode(), value=run_started(identity, experiment, run_id)
            ).get(30)
            with lock:
                last_offset[md.partition] = max(last_offset.get(md.partition, -1), md.offset)
        for batch in range(BATCHES_PER_RUN):
            for i, run_id in enumerate(run_ids):
                raw, cols = metrics_batch(
                    identity,
                    experiment,
                    run_id,
                    KEYS,
                    batch * STEPS_PER_BATCH,
                    STEPS_PER_BATCH,
                    seed=batch * 100 + i,
                )
                md = producer.send(topics["events"], key=run_id.encode(), value=raw).get(30)
                with lock:
                    expected_sum += float(cols["values"].sum())
                    last_offset[md.partition] = max(last_offset.get(md.partition, -1), md.offset)
            time.sleep(0.4)  # a stream, not one burst: the kills land in the middle of it

    writer = threading.Thread(target=produce)
    writer.start()
    kills = 0
    while writer.is_alive() and not await _committed(fresh_dsn, group):
        await asyncio.sleep(0.1)
    rng = random.Random(7)
    while writer.is_alive() and kills < 3:
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        projector.kill()
        kills += 1
        projector.start()
    writer.join()
    producer.close()
    assert kills >= 1, "the stream ended before the projector could be killed"

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        committed = await _committed(fresh_dsn, group)
        if all(committed.get(p, -1) >= off for p, off in last_offset.items()):
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail(f"projector did not catch up: {committed} vs {last_offset}\n{projector.log_tail()}")
    projector.stop()

    clickhouse = ChdbClickHouse(tmp_path / "state" / "clickhouse")
    try:
        row = clickhouse.query_arrow(
            "SELECT count() AS n, uniqExact(run_id, key, step) AS distinct_points, sum(value) AS total"
            " FROM runledger.metric_points WHERE tenant_id = {t:String}",
            {"t": tenant},
        ).to_pylist()[0]
        archived = clickhouse.query_arrow(
            "SELECT count() AS n, uniqExact(event_id) AS distinct_events FROM runledger.events_archive"
            " WHERE tenant_id = {t:String}",
            {"t": tenant},
        ).to_pylist()[0]
    finally:
        clickhouse.close()
    total_points = RUNS * BATCHES_PER_RUN * STEPS_PER_BATCH * len(KEYS)
    assert row["n"] == total_points, f"{row['n'] - total_points:+d} points after {kills} kills"
    assert row["distinct_points"] == total_points
    assert row["total"] == pytest.approx(expected_sum, rel=1e-12)
    assert archived["n"] == archived["distinct_events"] == RUNS * (BATCHES_PER_RUN + 1)

    conn = await asyncpg.connect(fresh_dsn)
    try:
        runs = await conn.fetchval("SELECT count(*) FROM runs WHERE tenant_id = $1", tenant)
        latest = await conn.fetch("SELECT step FROM latest_metrics WHERE tenant_id = $1", tenant)
        applied = await conn.fetchval("SELECT count(*) FROM applied_events")
    finally:
        await conn.close()
    assert runs == RUNS
    assert len(latest) == RUNS * len(KEYS)
    assert {r["step"] for r in latest} == {BATCHES_PER_RUN * STEPS_PER_BATCH - 1}
    assert applied == RUNS * (BATCHES_PER_RUN + 1)
