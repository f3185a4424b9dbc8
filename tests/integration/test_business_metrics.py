"""Business metrics: declarations (who may, audited, per tenant) and the stakeholder report
rolled up by model, version and stage, as JSON and CSV, over real Postgres."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import numpy as np
import pyarrow as pa
import pytest

from runledger.auth.keys import ApiKey, generate_key
from runledger.auth.model import Role
from runledger.embedded.postgres import EmbeddedPostgres
from services.api.business.repository import business_rollup
from services.api.exports.formats import EXTENSIONS
from tests.integration.test_exports import assert_same_frames, read_pandas
from tests.support.auth import Identity, provision
from tests.support.inprocess import api_client, migrated_database
from tests.unit.test_api_errors import NoClickHouse

pytestmark = pytest.mark.integration

T, OTHER = "biz-tenant", "biz-other"
EXP, EXP2 = "e-churn", "e-other"
# model "churn": v1 Staging, v2 and v3 Production; "ranker": v1 Production (another experiment).
VERSIONS = [("churn", 1, "Staging", "r1", EXP), ("churn", 2, "Production", "r2", EXP),
            ("churn", 3, "Production", "r3", EXP), ("ranker", 1, "Production", "r4", EXP2)]  # fmt: skip
LIFT = {"r1": 0.01, "r2": 0.04, "r3": 0.03, "r4": 0.02}
SAVINGS = {"r2": 1200.0, "r3": float("nan")}
REVENUE = {"metric": "biz/revenue_lift", "category": "revenue_lift", "unit": "%", "owner": "growth-team"}
SAVED = {"metric": "biz/cost_savings", "category": "cost_savings", "currency": "USD", "owner": "finops"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def declaration(spec: dict[str, str]) -> dict[str, str]:
    body = dict(spec)
    body["key"] = body.pop("metric")
    return body


async def seed(conn: asyncpg.Connection[Any]) -> None:
    await conn.executemany(
        "INSERT INTO experiments (tenant_id, experiment_id, name, creation_time, last_update_time)"
        " VALUES ($1, $2, $2, 1, 1)",
        [(T, EXP), (T, EXP2), (OTHER, EXP)],
    )
    for model, version, stage, run, exp in VERSIONS:
        await conn.execute(
            "INSERT INTO runs (tenant_id, run_id, experiment_id, status, start_time) VALUES ($1, $2, $3, 'FINISHED', 1)",
            T, run, exp,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO model_versions VALUES ($1, $2, $3, $4, '', $5)", T, model, version, run, stage
        )
    rows = [(T, r, "biz/revenue_lift", v) for r, v in LIFT.items()]
    rows += [(T, r, "biz/cost_savings", v) for r, v in SAVINGS.items()]
    rows += [(T, "r2", "val/acc", 0.9)]  # not a business metric: not in the report
    await conn.execute(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, status, start_time) VALUES ($1, 'o1', $2, 'FINISHED', 1)",
        OTHER, EXP,
    )  # fmt: skip
    await conn.execute("INSERT INTO model_versions VALUES ($1, 'churn', 1, 'o1', '', 'Production')", OTHER)
    rows += [(OTHER, "o1", "biz/revenue_lift", 99.0)]
    await conn.executemany("INSERT INTO latest_metrics VALUES ($1, $2, $3, $4, 0, 0, 0)", rows)


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres, seed)


@pytest.fixture(scope="module")
def admin_key() -> ApiKey:
    return generate_key()


@pytest.fixture(scope="module")
async def client(dsn: str, admin_key: ApiKey) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(dsn, T, admin_key, NoClickHouse()) as c:
        yield c


async def known(client: httpx.AsyncClient, identity: Identity) -> Identity:
    for _ in range(100):
        if (await client.get("/api/v1/whoami", headers=identity.headers)).status_code == 200:
            return identity
        await asyncio.sleep(0.05)
    raise AssertionError("key never became usable")


async def export_rows(
    client: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str] | None = None
) -> pa.Table:
    """GET /exports/business-metrics as Arrow (IPC stream)."""
    r = await client.get(
        "/api/v1/exports/business-metrics", params={"format": "arrow", **params}, headers=headers
    )
    assert r.status_code == 200, r.text
    return pa.ipc.open_stream(r.content).read_all()


def as_report_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Export rows in the JSON report's shape (its `timestamp` is ms since the epoch)."""
    rows = table.to_pylist()
    for row in rows:
        if isinstance(row.get("timestamp"), datetime):
            row["timestamp"] = (row["timestamp"] - EPOCH) // timedelta(milliseconds=1)
    return rows


async def test_declare_list_replace_delete_audited(client: httpx.AsyncClient, dsn: str) -> None:
    r = await client.post("/api/v1/business-metrics", json=declaration(REVENUE))
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "growth-team" and r.json()["unit"] == "%"
    r = await client.post("/api/v1/business-metrics", json=declaration(REVENUE) | {"owner": "cfo"})
    assert r.status_code == 200 and r.json()["owner"] == "cfo"
    assert (await client.post("/api/v1/business-metrics", json=declaration(SAVED))).status_code == 201
    listed = (await client.get("/api/v1/business-metrics")).json()["business_metrics"]
    assert [m["key"] for m in listed] == ["biz/cost_savings", "biz/revenue_lift"]
    assert listed[0]["currency"] == "USD"
    # A key with '/' in the path; then it is gone.
    assert (
        await client.post("/api/v1/business-metrics", json=declaration(SAVED) | {"key": "tmp/x"})
    ).status_code == 201
    assert (await client.delete("/api/v1/business-metrics/tmp/x")).status_code == 204
    assert (await client.delete("/api/v1/business-metrics/tmp/x")).status_code == 404
    conn = await asyncpg.connect(dsn)
    try:
        actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log WHERE tenant_id = $1 AND action LIKE 'business_metric.%' ORDER BY seq", T)]  # fmt: skip
    finally:
        await conn.close()
    assert actions == ["business_metric.create", "business_metric.update", "business_metric.create",
                       "business_metric.create", "business_metric.delete"]  # fmt: skip


async def test_invalid_declarations_are_400(client: httpx.AsyncClient) -> None:
    for body in (
        {"key": "k", "category": "revenue_lift", "owner": "x"},  # neither unit nor currency
        {"key": "k", "category": "vibes", "unit": "%", "owner": "x"},
        {"key": "k", "category": "cost_savings", "currency": "dollars", "owner": "x"},
        {"key": "k", "category": "cost_savings", "currency": "USD"},  # no owner
    ):
        r = await client.post("/api/v1/business-metrics", json=body)
        assert r.status_code == 400, (body, r.text)


async def test_roles_and_tenants(client: httpx.AsyncClient, dsn: str) -> None:
    viewer = await known(client, await provision(dsn, T, Role.VIEWER))
    narrow = await known(client, await provision(dsn, T, Role.ENGINEER, experiment_id=EXP))
    for who in (viewer, narrow):
        r = await client.post("/api/v1/business-metrics", json=declaration(REVENUE), headers=who.headers)
        assert r.status_code == 403
        assert (
            await client.delete("/api/v1/business-metrics/biz/revenue_lift", headers=who.headers)
        ).status_code == 403
    intruder = await known(client, await provision(dsn, OTHER, Role.ENGINEER))
    assert (await client.get("/api/v1/business-metrics", headers=intruder.headers)).json() == {
        "business_metrics": []
    }
    assert (
        await client.delete("/api/v1/business-metrics/biz/revenue_lift", headers=intruder.headers)
    ).status_code == 404
    report = (await client.get("/api/v1/reports/business", headers=intruder.headers)).json()
    assert report["rows"] == []  # OTHER declared nothing; T's declarations do not apply there
    exported = await export_rows(client, {}, intruder.headers)
    assert exported.num_rows == 0 and exported.column_names == report["columns"]
    # The narrow engineer reads only the versions whose runs are in its experiment.
    await client.post("/api/v1/business-metrics", json=declaration(REVENUE))
    rows = (await client.get("/api/v1/reports/business", headers=narrow.headers)).json()["rows"]
    assert {r["model_name"] for r in rows} == {"churn"}
    assert as_report_rows(await export_rows(client, {}, narrow.headers)) == rows  # the export alike


async def test_report_by_version_stage_and_model(client: httpx.AsyncClient, dsn: str) -> None:
    await client.post("/api/v1/business-metrics", json=declaration(REVENUE))
    await client.post("/api/v1/business-metrics", json=declaration(SAVED))
    report = (await client.get("/api/v1/reports/business")).json()
    assert report["level"] == "version"
    got = {(r["model_name"], r["version"], r["metric"]): r for r in report["rows"]}
    expected = {(m, v, "biz/revenue_lift") for m, v, *_ in VERSIONS} | {
        ("churn", 2, "biz/cost_savings"), ("churn", 3, "biz/cost_savings")
    }  # fmt: skip
    assert set(got) == expected
    assert got[("churn", 2, "biz/revenue_lift")]["value"] == LIFT["r2"]
    assert got[("churn", 2, "biz/revenue_lift")]["stage"] == "Production"
    assert got[("churn", 3, "biz/cost_savings")]["value"] is None  # NaN
    assert got[("churn", 2, "biz/cost_savings")]["currency"] == "USD"
    assert got[("churn", 1, "biz/revenue_lift")]["owner"] == "growth-team"

    stage = (await client.get("/api/v1/reports/business", params={"level": "stage", "model": "churn"})).json()
    prod = next(r for r in stage["rows"] if r["stage"] == "Production" and r["metric"] == "biz/revenue_lift")
    values = np.array([LIFT["r2"], LIFT["r3"]])
    assert (prod["versions"], prod["latest_version"], prod["latest_value"]) == (2, 3, LIFT["r3"])
    assert prod["mean"] == pytest.approx(values.mean())
    assert (prod["min"], prod["max"]) == (values.min(), values.max())
    assert (prod["best_version"], prod["best_value"]) == (2, LIFT["r2"])
    savings = next(r for r in stage["rows"] if r["metric"] == "biz/cost_savings")
    assert (savings["versions"], savings["mean"], savings["latest_value"]) == (2, 1200.0, None)

    model = (await client.get("/api/v1/reports/business", params={"level": "model"})).json()
    churn = next(r for r in model["rows"] if r["model_name"] == "churn" and r["metric"] == "biz/revenue_lift")
    assert "stage" not in churn and churn["versions"] == 3
    assert churn["mean"] == pytest.approx(np.mean([LIFT["r1"], LIFT["r2"], LIFT["r3"]]))

    r = await client.get("/api/v1/reports/business", params={"format": "csv", "stage": "Production"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert list(table[0]) == report["columns"]
    assert {(row["model_name"], row["version"]) for row in table} == {
        ("churn", "2"),
        ("churn", "3"),
        ("ranker", "1"),
    }

    # The repository function the OData entity set uses gives the same rows.
    conn = await asyncpg.connect(dsn)
    try:
        direct = await business_rollup(conn, T, readable=None, level="version")
        narrowed = await business_rollup(conn, T, readable=frozenset({EXP2}), level="stage")
    finally:
        await conn.close()
    assert [dict(r) for r in direct] == report["rows"]
    assert {r["model_name"] for r in narrowed} == {"ranker"}


async def test_report_as_an_export_table(client: httpx.AsyncClient) -> None:
    """GET /exports/business-metrics: the report's rows, columns and filters, in every export format."""
    await client.post("/api/v1/business-metrics", json=declaration(REVENUE))
    await client.post("/api/v1/business-metrics", json=declaration(SAVED))
    for params in (
        {},
        {"level": "stage"},
        {"level": "model", "model": "churn", "metric": "biz/cost_savings"},
    ):
        report = (await client.get("/api/v1/reports/business", params=params)).json()
        table = await export_rows(client, params)
        assert table.column_names == report["columns"], params
        assert as_report_rows(table) == report["rows"], params
    table = await export_rows(client, {})
    assert len(table) == 6  # 4 versions' revenue lift, 2 versions' cost savings
    types = {f.name: f.type for f in table.schema}
    assert (types["version"], types["step"], types["value"]) == (pa.int64(), pa.int64(), pa.float64())
    assert types["timestamp"] == pa.timestamp("ms", tz="UTC") and types["model_name"] == pa.string()
    # pandas reads the same frame from every format; NaN cost savings of churn v3: null.
    frames = {}
    for fmt in ("parquet", "arrow", "csv", "ndjson"):
        r = await client.get("/api/v1/exports/business-metrics", params={"format": fmt})
        assert r.status_code == 200
        assert (
            r.headers["content-disposition"] == f'attachment; filename="business_metrics.{EXTENSIONS[fmt]}"'
        )
        frames[fmt] = read_pandas(fmt, r.content, table.schema)
    assert_same_frames(frames, "business-metrics")
    assert frames["parquet"]["value"].isna().sum() == 1
    assert (frames["ndjson"]["currency"] == "").sum() == 4  # text kept as text, "" not null
    bad = await client.get("/api/v1/exports/business-metrics", params={"level": "quarter"})
    assert bad.status_code == 400
