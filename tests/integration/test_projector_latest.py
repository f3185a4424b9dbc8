"""The projector's latest_metrics write (COPY + guarded upsert) and its ClickHouse overlap.

- latest = max by (step, timestamp, value), first_step = min, whatever order batches come in;
- a replayed batch rewrites no row (no new tuple versions);
- BatchWriter inserts into ClickHouse while Postgres applies the batch, but the checkpoint
  commits only once ClickHouse holds the batch, and a ClickHouse failure rolls Postgres back.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pytest
from kafka import TopicPartition

from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import decode, encode, envelope_dict, metric_columns, producer
from runledger.events.models import EventType
from services.ingest.batch_writer import BatchWriter, assemble, prepare
from services.ingest.checkpoints import PartitionKey
from services.ingest.latest_writer import upsert_latest
from services.ingest.partition_buffer import PartitionBuffer
from services.ingest.projection import LatestMetrics
from tests.support.inprocess import migrated_database

pytestmark = pytest.mark.integration

TENANT = "latest-t"


@pytest.fixture
async def pool(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Pool]:
    dsn = await migrated_database(postgres)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=3) as pool:
        yield pool


def _latest(rows: list[tuple[str, str, float, int, int, int]]) -> LatestMetrics:
    """(run, key, value, step, timestamp, first_step) rows of one batch."""
    return LatestMetrics(
        tenant_ids=[TENANT] * len(rows),
        run_ids=[r[0] for r in rows],
        keys=[r[1] for r in rows],
        values=np.array([r[2] for r in rows], dtype=np.float64),
        steps=np.array([r[3] for r in rows], dtype=np.int64),
        timestamps=np.array([r[4] for r in rows], dtype=np.int64),
        first_steps=np.array([r[5] for r in rows], dtype=np.int64),
    )


async def _rows(conn: Any) -> dict[tuple[str, str], tuple[float, int, int, int]]:
    found = await conn.fetch(
        "SELECT run_id, key, value, step, timestamp, first_step FROM latest_metrics WHERE tenant_id = $1",
        TENANT,
    )
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in found}


async def _upsert(conn: Any, rows: list[tuple[str, str, float, int, int, int]]) -> int:
    async with conn.transaction():
        return await upsert_latest(conn, _latest(rows))


async def test_latest_is_max_by_step_timestamp_value_and_first_step_min(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await _upsert(conn, [("r1", "loss", 0.5, 10, 1000, 8), ("r1", "acc", 0.1, 10, 1000, 10)]) == 2
        # Older step, earlier first step: only first_step moves.
        assert await _upsert(conn, [("r1", "loss", 9.0, 3, 5000, 2)]) == 1
        # Same step, later timestamp: wins. Same step and timestamp, larger value: wins; smaller: not.
        assert await _upsert(conn, [("r1", "acc", 0.2, 10, 1001, 10)]) == 1
        assert await _upsert(conn, [("r1", "acc", 0.3, 10, 1001, 10)]) == 1
        assert await _upsert(conn, [("r1", "acc", 0.25, 10, 1001, 10)]) == 0
        # NaN ranks above every number (as in Postgres and in the batch's own lexsort).
        assert await _upsert(conn, [("r1", "acc", float("nan"), 10, 1001, 10)]) == 1
        rows = await _rows(conn)
    assert rows[("r1", "loss")] == (0.5, 10, 1000, 2)
    value, step, ts, first = rows[("r1", "acc")]
    assert np.isnan(value) and (step, ts, first) == (10, 1001, 10)


async def test_replayed_batch_rewrites_no_row(pool: asyncpg.Pool) -> None:
    batch = [(f"run{i}", f"k{j}", float(i * j), 7, 7000, 0) for i in range(20) for j in range(10)]
    async with pool.acquire() as conn:
        assert await _upsert(conn, batch) == 200
        before = await conn.fetch("SELECT run_id, key, xmin::text FROM latest_metrics ORDER BY 1, 2")
        assert await _upsert(conn, batch) == 0  # a replay: every row already holds these points
        assert await conn.fetch("SELECT run_id, key, xmin::text FROM latest_metrics ORDER BY 1, 2") == before


async def test_upsert_outside_a_transaction_and_on_two_connections(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as a, pool.acquire() as b:
        # Outside a transaction the staged rows would vanish at the COPY's commit: it opens one.
        assert await upsert_latest(a, _latest([("ra", "x", 1.0, 1, 1, 1)])) == 1
        # Staging tables are per session: interleaved transactions never see each other's rows.
        async with a.transaction(), b.transaction():
            await upsert_latest(a, _latest([("ra", "y", 2.0, 1, 1, 1)]))
            await upsert_latest(b, _latest([("rb", "y", 3.0, 1, 1, 1)]))
        assert set(await _rows(a)) == {("ra", "x"), ("ra", "y"), ("rb", "y")}


class _DeadLetters:
    def flush(self) -> None:
        pass

    def reject(self, *args: Any) -> None:
        raise AssertionError(f"unexpected dead letter {args}")


class _ClickHouse:
    """Stands in for chdb: runs `during` inside the insert (in the writer's thread), then fails or not."""

    def __init__(self, loop: asyncio.AbstractEventLoop, during: Any, fail: bool) -> None:
        self.loop, self.during, self.fail = loop, during, fail
        self.inserted: list[str] = []
        self.thread: int | None = None

    def insert_arrow(self, table: str, data: pa.Table, token: str) -> None:
        self.thread = threading.get_ident()
        asyncio.run_coroutine_threadsafe(self.during(), self.loop).result(30)
        if self.fail:
            raise RuntimeError("clickhouse is down")
        self.inserted.append(table)


def _batch(key: PartitionKey) -> Any:
    raw = encode(
        envelope_dict(
            tenant_id=TENANT,
            type=EventType.METRICS_LOGGED,
            run_id="run-w",
            experiment_id="e1",
            producer=producer("test"),
            payload=metric_columns(
                ["loss"],
                np.zeros(3, dtype=np.int32),
                np.array([3.0, 2.0, 1.0]),
                np.array([0, 1, 2], dtype=np.int64),
                np.array([10, 20, 30], dtype=np.int64),
            ),
        )
    )
    assert decode(raw).envelope.run_id == "run-w"
    record = type("Record", (), {"value": raw, "offset": 0, "key": None, "timestamp": 0})()
    state = PartitionBuffer(key=key, tp=TopicPartition(key.topic, 0), committed=-1)
    return assemble([prepare(state, [record], _DeadLetters())])  # type: ignore[arg-type]


@pytest.mark.parametrize("fail", [False, True])
async def test_checkpoint_commits_only_after_clickhouse_holds_the_batch(
    pool: asyncpg.Pool, fail: bool
) -> None:
    key = PartitionKey("g-" + uuid.uuid4().hex[:6], "static", "events", 0)
    seen: list[tuple[Any, ...]] = []

    async def during() -> None:
        # While ClickHouse inserts, nothing of the batch is visible in Postgres yet.
        async with pool.acquire() as conn:
            seen.append(
                (
                    await conn.fetchval(
                        "SELECT committed FROM projector_checkpoints WHERE consumer_group = $1", key.group
                    ),
                    await conn.fetchval("SELECT count(*) FROM latest_metrics WHERE run_id = 'run-w'"),
                )
            )

    clickhouse = _ClickHouse(asyncio.get_running_loop(), during, fail)
    writer = BatchWriter(clickhouse, pool, _DeadLetters())  # type: ignore[arg-type]
    batch = _batch(key)
    if fail:
        with pytest.raises(RuntimeError, match="clickhouse is down"):
            await writer.write(batch)
    else:
        await writer.write(batch)
    assert seen and all(s == (-1, 0) for s in seen)  # pending, not committed, while ClickHouse ran
    async with pool.acquire() as conn:
        committed = await conn.fetchval(
            "SELECT committed FROM projector_checkpoints WHERE consumer_group = $1", key.group
        )
        latest = await conn.fetchrow(
            "SELECT value, step, first_step FROM latest_metrics WHERE run_id = 'run-w'"
        )
    if fail:
        assert committed == -1 and latest is None and batch.batches[0].partition.committed == -1
    else:
        assert latest is not None
        assert committed == 0 and tuple(latest) == (1.0, 2, 0) and batch.batches[0].partition.committed == 0
        assert clickhouse.inserted == ["metric_points", "events_archive"]
