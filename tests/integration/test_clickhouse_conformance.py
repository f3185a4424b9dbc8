"""The ClickHouse adapter contract, run against chdb always and against a ClickHouse
server too when RUNLEDGER_TEST_CLICKHOUSE_URL is set (e.g. http://default:@host:8123/rl_test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from runledger.stores.clickhouse import ClickHouse, open_clickhouse
from runledger.stores.clickhouse.tables import ALL_TABLES

pytestmark = pytest.mark.integration

SERVER_URL = os.environ.get("RUNLEDGER_TEST_CLICKHOUSE_URL", "")


@pytest.fixture(
    params=[
        "chdb",
        pytest.param(
            "server", marks=pytest.mark.skipif(not SERVER_URL, reason="RUNLEDGER_TEST_CLICKHOUSE_URL not set")
        ),
    ]
)
def clickhouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouse]:
    store = open_clickhouse(SERVER_URL if request.param == "server" else "", tmp_path / "chdb")
    yield store
    store.close()


def _points(tenant: str, run_id: str, n: int) -> pa.Table:
    steps = np.arange(n, dtype=np.int64)
    return pa.table(
        {
            "tenant_id": pa.array([tenant] * n),
            "experiment_id": pa.array(["e"] * n),
            "run_id": pa.array([run_id] * n),
            "key": pa.array(["loss"] * n),
            "step": steps,
            "timestamp": pa.array(steps + 1_700_000_000_000).cast(pa.timestamp("ms", tz="UTC")),
            "value": np.sqrt(steps.astype(np.float64)),
        }
    )


def test_migration_creates_every_declared_table_and_is_idempotent(clickhouse: ClickHouse) -> None:
    clickhouse.migrate()  # a second time changes nothing
    names = set(
        clickhouse.query_arrow(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": clickhouse.database}
        )
        .column("name")
        .to_pylist()
    )
    assert {t.name for t in ALL_TABLES} <= names


def test_insert_with_a_repeated_dedup_token_is_a_no_op(clickhouse: ClickHouse) -> None:
    tenant, run_id = f"conf-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    data = _points(tenant, run_id, 10_000)
    clickhouse.insert_arrow("metric_points", data, dedup_token=f"{run_id}.batch-1")
    clickhouse.insert_arrow("metric_points", data, dedup_token=f"{run_id}.batch-1")
    got = clickhouse.query_arrow(
        f"SELECT count() AS n, sum(value) AS total FROM {clickhouse.table('metric_points')}"
        " WHERE tenant_id = {t:String} AND run_id = {r:String}",
        {"t": tenant, "r": run_id},
    ).to_pylist()[0]
    assert got["n"] == 10_000
    assert got["total"] == pytest.approx(float(np.sqrt(np.arange(10_000)).sum()))


def test_query_parameters_are_bound_not_interpolated(clickhouse: ClickHouse) -> None:
    hostile = "x' OR 1=1 --"
    got = clickhouse.query_arrow("SELECT {s:String} AS s, {n:Int64} + 1 AS n", {"s": hostile, "n": 41})
    assert got.to_pylist() == [{"s": hostile, "n": 42}]


def test_rollup_view_keeps_min_and_max_per_64_steps(clickhouse: ClickHouse) -> None:
    tenant, run_id = f"conf-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    clickhouse.insert_arrow("metric_points", _points(tenant, run_id, 640))
    rows = clickhouse.query_arrow(
        f"SELECT bucket, min(min_value) AS lo, max(max_value) AS hi FROM {clickhouse.table('metric_rollup')}"
        " WHERE tenant_id = {t:String} AND run_id = {r:String} GROUP BY bucket ORDER BY bucket",
        {"t": tenant, "r": run_id},
    ).to_pylist()
    assert [r["bucket"] for r in rows] == list(range(10))
    assert rows[3]["lo"] == pytest.approx(np.sqrt(192)) and rows[3]["hi"] == pytest.approx(np.sqrt(255))
