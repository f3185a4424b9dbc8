"""Exports (GET /api/v1/exports/...) against real Postgres and ClickHouse (chdb).

Rows are seeded as the projector writes them; two tenants hold look-alike data and only
the caller's may show. Every format is read back with pyarrow and pandas.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from runledger.auth.keys import ApiKey, generate_key
from runledger.auth.model import Role
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import experiment_id_for
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.exports.service import FINDING_SCHEMA, POINT_SCHEMA
from tests.support.auth import Identity, provision
from tests.support.inprocess import api_client, migrated_database

pytestmark = pytest.mark.integration

T, OTHER = "bi-tenant", "bi-other"
ALPHA, BETA = experiment_id_for(T, "alpha"), experiment_id_for(T, "beta")
SECRET = experiment_id_for(OTHER, "secret")
ALPHA_RUNS = [f"alpha{i:02d}" for i in range(30)]
BETA_RUNS = [f"beta{i:02d}" for i in range(5)]
POINT_RUNS = ALPHA_RUNS[:3] + BETA_RUNS[:1]
STEPS = 100
LEAK = "leak-marker"  # in every row of OTHER: must never appear in T's answers
NOTE = 'two\nlines, "quoted", \\ and \t'  # CSV from COPY must give it back unchanged


def loss_at(run: str, step: int) -> float:
    return 1.0 / (step + 1) + (sum(map(ord, run)) % 7) / 100


async def seed_postgres(conn: asyncpg.Connection[Any]) -> None:
    await conn.executemany(
        "INSERT INTO experiments (tenant_id, experiment_id, name, lifecycle_stage, creation_time, last_update_time)"
        " VALUES ($1, $2, $3, 'active', $4, $4)",
        [(T, ALPHA, "alpha", 1000), (T, BETA, "beta-vision", 2000), (OTHER, SECRET, LEAK, 3000)],
    )
    await conn.execute(
        "INSERT INTO experiment_tags VALUES ($1, $2, 'team', 'vision'), ($3, $4, 'team', $5)",
        T,
        BETA,
        OTHER,
        SECRET,
        LEAK,
    )
    runs: list[tuple[Any, ...]] = []
    for i, run in enumerate(ALPHA_RUNS):
        runs.append((T, run, ALPHA, None, f"a{i}", "FINISHED" if i % 2 else "RUNNING", 10_000 + i, None))
    for i, run in enumerate(BETA_RUNS):
        runs.append((T, run, BETA, ALPHA_RUNS[0], f"b{i}", "FAILED", 20_000 + i, 30_000 + i))
    runs.append((OTHER, "theirs", SECRET, None, LEAK, "RUNNING", 1, None))
    await conn.executemany(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, parent_run_id, name, status, start_time, end_time)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        runs,
    )
    await conn.execute(
        "UPDATE runs SET lifecycle_stage = 'deleted' WHERE tenant_id = $1 AND run_id = 'alpha29'", T
    )
    params = [(T, r, "lr", str(i % 3)) for i, r in enumerate(ALPHA_RUNS + BETA_RUNS)]
    params += [(T, r, "optimizer", 'adam, "beta"') for r in BETA_RUNS]
    params += [(OTHER, "theirs", "lr", LEAK), (OTHER, "theirs", LEAK, "1")]
    await conn.executemany("INSERT INTO params VALUES ($1, $2, $3, $4)", params)
    tags = [(T, r, "mode", "fast" if i % 2 else "slow") for i, r in enumerate(ALPHA_RUNS)]
    tags += [(OTHER, "theirs", "mode", LEAK)]
    await conn.executemany("INSERT INTO tags VALUES ($1, $2, $3, $4)", tags)
    latest = [
        (T, r, "loss", loss_at(r, STEPS - 1), STEPS - 1, 1_700_000_000_000 + STEPS - 1, 0) for r in POINT_RUNS
    ]
    latest += [(T, ALPHA_RUNS[0], "acc", math.nan, 0, 1_700_000_000_000, 0)]
    latest += [(OTHER, "theirs", "loss", 1e9, 0, 0, 0)]
    await conn.executemany("INSERT INTO latest_metrics VALUES ($1, $2, $3, $4, $5, $6, $7)", latest)
    findings = [
        (T, uuid.UUID(int=i + 1), ALPHA_RUNS[i], ALPHA, "spike", {"key": "loss", "severity": 0.5 + i / 10}, i)
        for i in range(3)
    ]
    findings += [
        (T, uuid.UUID(int=10), BETA_RUNS[0], BETA, "lint.metric_myopia", {"evidence": {"message": "m"}}, 5)
    ]
    findings += [(OTHER, uuid.UUID(int=99), "theirs", SECRET, LEAK, {"key": LEAK}, 1)]
    await conn.executemany(
        "INSERT INTO findings (tenant_id, event_id, run_id, experiment_id, kind, body, occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, to_timestamp(1700000000 + $7))",
        [(t, e, r, x, k, orjson.dumps(b).decode(), s) for t, e, r, x, k, b, s in findings],
    )


def points(tenant: str, run: str, experiment: str, key: str, n: int) -> pa.Table:
    steps = np.arange(n, dtype=np.int64)
    values = np.array([loss_at(run, int(s)) for s in steps]) if tenant == T else np.full(n, 1e9)
    return pa.table(
        {
            "tenant_id": [tenant] * n,
            "experiment_id": [experiment] * n,
            "run_id": [run] * n,
            "key": [key] * n,
            "step": steps,
            "timestamp": pa.array(1_700_000_000_000 + steps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "value": values,
        }
    )


def seed_clickhouse(store: ChdbClickHouse) -> None:
    for run in POINT_RUNS:
        experiment = BETA if run.startswith("beta") else ALPHA
        store.insert_arrow("metric_points", points(T, run, experiment, "loss", STEPS))
    store.insert_arrow("metric_points", points(OTHER, "theirs", SECRET, "loss", 10))
    store.insert_arrow("metric_points", points(OTHER, ALPHA_RUNS[0], SECRET, "loss", 10))  # same run id


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClickHouse]:
    store = ChdbClickHouse(tmp_path_factory.mktemp("exports") / "clickhouse")
    store.migrate()
    seed_clickhouse(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres, seed_postgres)


@pytest.fixture(scope="module")
def admin_key() -> ApiKey:
    return generate_key()


@pytest.fixture(scope="module")
async def client(dsn: str, clickhouse: ChdbClickHouse, admin_key: ApiKey) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(dsn, T, admin_key, clickhouse, basic_auth=True) as c:
        yield c


async def wait_until_known(client: httpx.AsyncClient, identity: Identity) -> None:
    import asyncio

    for _ in range(100):
        if (await client.get("/api/v1/whoami", headers=identity.headers, auth=None)).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("key never became usable")


async def export(client: httpx.AsyncClient, table: str, fmt: str = "csv", **params: Any) -> httpx.Response:
    r = await client.get(f"/api/v1/exports/{table}", params={"format": fmt, **params})
    assert r.status_code == 200, r.text
    assert LEAK not in r.text if fmt in ("csv", "ndjson") else LEAK.encode() not in r.content
    return r


def read(fmt: str, content: bytes) -> pa.Table:
    if fmt == "csv":
        return pacsv.read_csv(io.BytesIO(content))
    if fmt == "ndjson":
        return pa.Table.from_pylist([orjson.loads(line) for line in content.splitlines()])
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(content))
    return pa.ipc.open_stream(content).read_all()


def read_pandas(fmt: str, content: bytes, schema: pa.Schema) -> pd.DataFrame:
    """An export as pandas opens it, each format with its own pandas reader.

    CSV and NDJSON carry no types: as an analyst would, text columns are named as text (else
    pandas makes an experiment id of digits a number) and time columns are parsed after reading.
    """
    text = {f.name: "str" for f in schema if pa.types.is_string(f.type)}
    if fmt == "parquet":
        frame = pd.read_parquet(io.BytesIO(content))
    elif fmt == "arrow":
        frame = pa.ipc.open_stream(content).read_all().to_pandas()
    elif fmt == "csv":
        frame = pd.read_csv(io.BytesIO(content), dtype=text)
    else:  # precise_float: pandas' default JSON float parser is off by an ulp at times
        frame = pd.read_json(io.BytesIO(content), lines=True, dtype=text, precise_float=True)
    for f in schema:
        if pa.types.is_timestamp(f.type):
            frame[f.name] = pd.to_datetime(frame[f.name], utc=True).astype(f"datetime64[{f.type.unit}, UTC]")
    return frame


def assert_same_frames(frames: dict[str, pd.DataFrame], name: str) -> None:
    """Every format's frame equals the Parquet one.

    CSV keeps an empty string ("", quoted) apart from null (an empty field), but pandas' CSV
    reader makes both NaN: against CSV, empty strings count as NaN.
    """
    reference = frames["parquet"]
    for fmt, frame in frames.items():
        expected = reference.replace({"": np.nan}) if fmt == "csv" else reference
        pd.testing.assert_frame_equal(frame, expected, obj=f"{name} as {fmt}")


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet", "arrow"])
async def test_runs_wide_table_in_every_format(client: httpx.AsyncClient, fmt: str) -> None:
    r = await export(client, "runs", fmt)
    table = read(fmt, r.content)
    expected_columns = [
        "run_id", "experiment_id", "name", "status", "start_time", "end_time", "user_id", "parent_run_id",
        "lifecycle_stage", "params.lr", "params.optimizer", "tags.mode",
        "metrics.acc.latest", "metrics.acc.min", "metrics.acc.max",
        "metrics.loss.latest", "metrics.loss.min", "metrics.loss.max",
    ]  # fmt: skip
    if fmt in ("parquet", "arrow"):
        assert table.column_names == expected_columns
        assert table.schema.field("start_time").type == pa.timestamp("ms", tz="UTC")
        assert table.schema.field("metrics.loss.min").type == pa.float64()
        assert table.schema.field("params.lr").type == pa.string()
    else:
        assert set(table.column_names) <= set(expected_columns)
    rows = {row["run_id"]: row for row in table.to_pylist()}
    assert len(rows) == 34  # active runs of T only (alpha29 is deleted)
    assert "alpha29" not in rows
    first = rows[ALPHA_RUNS[0]]
    assert first["metrics.loss.latest"] == pytest.approx(loss_at(ALPHA_RUNS[0], STEPS - 1))
    assert first["metrics.loss.min"] == pytest.approx(min(loss_at(ALPHA_RUNS[0], s) for s in range(STEPS)))
    assert first["metrics.loss.max"] == pytest.approx(loss_at(ALPHA_RUNS[0], 0))  # not OTHER's 1e9
    assert first["tags.mode"] == "slow"
    assert rows[BETA_RUNS[1]]["params.optimizer"] == 'adam, "beta"'
    assert rows[BETA_RUNS[1]]["parent_run_id"] == ALPHA_RUNS[0]
    assert rows[ALPHA_RUNS[5]].get("metrics.loss.latest") is None
    if fmt != "csv":
        assert str(rows[ALPHA_RUNS[1]]["params.lr"]) == "1"
    # pandas opens the same bytes
    if fmt == "parquet":
        frame = pd.read_parquet(io.BytesIO(r.content))
        assert len(frame) == 34 and "metrics.loss.max" in frame.columns
    if fmt == "csv":
        frame = pd.read_csv(io.BytesIO(r.content))
        assert list(frame.columns) == expected_columns
    assert r.headers["content-disposition"].startswith("attachment")


async def test_runs_export_filtered_with_the_run_search_grammar(client: httpx.AsyncClient) -> None:
    r = await export(client, "runs", "arrow", filter="params.lr = '1' and attributes.status = 'FINISHED'")
    ids = read("arrow", r.content).column("run_id").to_pylist()
    expected = [run for i, run in enumerate(ALPHA_RUNS[:29]) if i % 3 == 1 and i % 2 == 1]
    assert sorted(ids) == sorted(expected)
    r = await export(client, "runs", "arrow", filter="metrics.loss < 0.5", experiment_id=BETA)
    assert read("arrow", r.content).column("run_id").to_pylist() == [BETA_RUNS[0]]
    deleted = await export(client, "runs", "arrow", view_type="DELETED_ONLY")
    assert read("arrow", deleted.content).column("run_id").to_pylist() == ["alpha29"]
    bad = await client.get("/api/v1/exports/runs", params={"filter": "metrics.loss <"})
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert (await client.get("/api/v1/exports/runs", params={"format": "xlsx"})).status_code == 400


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_metric_points_long_table(client: httpx.AsyncClient, fmt: str) -> None:
    r = await export(client, "metric-points", fmt)
    table = read(fmt, r.content)
    assert table.column_names == ["run_id", "experiment_id", "key", "step", "timestamp", "value"]
    assert table.num_rows == len(POINT_RUNS) * STEPS
    assert max(table.column("value").to_pylist()) < 1e9
    frame = table.to_pandas()
    one = frame[frame.run_id == ALPHA_RUNS[0]].sort_values("step")
    assert one.value.tolist() == pytest.approx([loss_at(ALPHA_RUNS[0], s) for s in range(STEPS)])
    filtered = read("parquet", (await export(client, "metric-points", "parquet", experiment_id=BETA)).content)
    assert set(filtered.column("run_id").to_pylist()) == {BETA_RUNS[0]}


@pytest.mark.parametrize(
    ("table", "schema"),
    [("metric-points", POINT_SCHEMA), ("findings", FINDING_SCHEMA)],  # findings: nulls, JSON text
    ids=["metric-points", "findings"],
)
async def test_pandas_reads_the_same_frame_from_every_format(
    client: httpx.AsyncClient, table: str, schema: pa.Schema
) -> None:
    frames = {
        fmt: read_pandas(fmt, (await export(client, table, fmt)).content, schema)
        for fmt in ("parquet", "arrow", "csv", "ndjson")
    }
    reference = frames["parquet"]
    assert list(reference.columns) == schema.names and len(reference) > 0
    if table == "findings":  # the lint finding has neither metric key nor severity
        assert reference["metric_key"].isna().sum() == reference["severity"].isna().sum() == 1
    assert_same_frames(frames, table)


async def test_metric_points_stream_in_chunks(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.api.exports import service

    monkeypatch.setattr(service, "POINT_CHUNK", 7)
    monkeypatch.setattr(service, "POINT_RUN_PAGE", 2)
    table = read("arrow", (await export(client, "metric-points", "arrow")).content)
    keys = list(zip(table.column("run_id").to_pylist(), table.column("step").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == len(POINT_RUNS) * STEPS


async def test_experiments_and_findings(client: httpx.AsyncClient) -> None:
    experiments = read("ndjson", (await export(client, "experiments", "ndjson")).content).to_pylist()
    assert {e["name"] for e in experiments} == {"alpha", "beta-vision"}
    assert next(e for e in experiments if e["name"] == "beta-vision")["tags.team"] == "vision"
    named = read("csv", (await export(client, "experiments", filter="name LIKE 'beta%'")).content)
    assert named.column("name").to_pylist() == ["beta-vision"]
    findings = read("parquet", (await export(client, "findings", "parquet")).content)
    assert findings.num_rows == 4
    assert findings.column("occurred_at").to_pylist()[0] > findings.column("occurred_at").to_pylist()[-1]
    spikes = read(
        "arrow", (await export(client, "findings", "arrow", kind="spike", filter="params.lr = '0'")).content
    )
    assert spikes.column("run_id").to_pylist() == [ALPHA_RUNS[0]]
    assert spikes.column("metric_key").to_pylist() == ["loss"]


async def test_cross_tenant_and_narrowed_grants(client: httpx.AsyncClient, dsn: str) -> None:
    intruder = await provision(dsn, OTHER, Role.VIEWER)
    narrowed = await provision(dsn, T, Role.VIEWER, experiment_id=BETA)
    await wait_until_known(client, narrowed)
    for table in ("runs", "experiments", "metric-points", "findings"):
        r = await client.get(
            f"/api/v1/exports/{table}", params={"format": "ndjson"}, headers=intruder.headers, auth=None
        )
        assert r.status_code == 200
        assert not any(marker in r.text for marker in (ALPHA, BETA, "alpha0", "beta-vision"))
        # naming T's experiment changes nothing
        r = await client.get(
            f"/api/v1/exports/{table}", params={"experiment_id": ALPHA}, headers=intruder.headers, auth=None
        )
        assert r.status_code == 200 and "alpha0" not in r.text
    r = await client.get(
        "/api/v1/exports/runs", params={"format": "arrow"}, headers=narrowed.headers, auth=None
    )
    table = read("arrow", r.content)
    assert set(table.column("experiment_id").to_pylist()) == {BETA}
    assert "tags.mode" not in table.column_names  # only alpha's runs have that tag: no key leaks
    anonymous = await client.get("/api/v1/exports/runs", auth=None, headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_empty_export_has_a_header(client: httpx.AsyncClient) -> None:
    r = await export(client, "runs", "csv", filter="params.lr = 'nope'")
    assert r.text.splitlines()[0].startswith('"run_id","experiment_id"')
    assert len(r.text.splitlines()) == 1
    empty = read("parquet", (await export(client, "runs", "parquet", filter="params.lr = 'nope'")).content)
    assert empty.num_rows == 0 and "params.lr" in empty.column_names


async def test_runs_wide_table_values_survive_the_pivot(client: httpx.AsyncClient, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:  # seeded here and removed after: test_odata counts the shared seed's rows
        notes = [(T, ALPHA_RUNS[2], "note", ""), (T, ALPHA_RUNS[4], "note", NOTE)]  # empty is not null
        await conn.executemany("INSERT INTO params VALUES ($1, $2, $3, $4)", notes)
        table = read("arrow", (await export(client, "runs", "arrow")).content)
    finally:
        await conn.execute("DELETE FROM params WHERE tenant_id = $1 AND key = 'note'", T)
        await conn.close()
    rows = {r["run_id"]: r for r in table.to_pylist()}
    assert rows[ALPHA_RUNS[4]]["params.note"] == NOTE
    assert rows[ALPHA_RUNS[2]]["params.note"] == ""  # an empty value is not a missing one
    assert rows[ALPHA_RUNS[3]]["params.note"] is None
    first = rows[ALPHA_RUNS[0]]
    assert math.isnan(first["metrics.acc.latest"])  # the last logged value was NaN
    assert first["metrics.acc.min"] is None and first["metrics.acc.max"] is None  # no finite point
    assert rows[BETA_RUNS[0]]["end_time"] is not None and rows[ALPHA_RUNS[0]]["end_time"] is None
    assert rows[ALPHA_RUNS[0]]["user_id"] == ""


def comparable(table: pa.Table) -> tuple[pa.Schema, list[tuple[Any, ...]]]:
    """Schema and rows, NaN as a string (Table.equals finds NaN unequal to itself)."""
    nan = "NaN"
    rows = [
        tuple(nan if isinstance(v, float) and math.isnan(v) else v for v in row.values())
        for row in table.to_pylist()
    ]
    return table.schema, rows


async def test_runs_wide_table_pages_and_key_plans_agree(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small pages (a first page, then growing ones) and either key discovery plan: the same table."""
    from services.api.exports import repository, service

    whole = read("arrow", (await export(client, "runs", "arrow")).content)
    starts = whole.column("start_time").cast(pa.int64()).to_pylist()
    assert starts == sorted(starts, reverse=True)  # start time descending, across pages
    monkeypatch.setattr(service, "RUN_FIRST_PAGE", 2)
    monkeypatch.setattr(service, "RUN_PAGE", 7)
    monkeypatch.setattr(service, "RUN_ID_PAGE", 20)
    for by_run_max in (0, 10_000):  # 0: probe each distinct key; 10,000: read the runs' keys
        monkeypatch.setattr(repository, "KEYS_BY_RUN_MAX", by_run_max)
        paged = pa.ipc.open_stream((await export(client, "runs", "arrow")).content)
        batches = list(paged)
        assert [b.num_rows for b in batches] == [2, 7, 7, 6, 7, 5]  # ids: 2, then 20 and 12
        assert comparable(pa.Table.from_batches(batches)) == comparable(whole)
        deleted = read("arrow", (await export(client, "runs", "arrow", view_type="DELETED_ONLY")).content)
        assert deleted.column("run_id").to_pylist() == ["alpha29"]
        assert "params.optimizer" not in deleted.column_names  # keys of the deleted run only
        beta = read("arrow", (await export(client, "runs", "arrow", experiment_id=BETA)).content)
        assert "tags.mode" not in beta.column_names and "params.optimizer" in beta.column_names


async def test_read_ahead_reads_one_item_ahead_and_passes_errors_on() -> None:
    import asyncio

    from services.api.exports.service import read_ahead

    produced: list[int] = []

    async def items(fail_at: int | None) -> AsyncIterator[int]:
        for i in range(4):
            if i == fail_at:
                raise ValueError("page failed")
            produced.append(i)
            yield i

    seen = []
    async for item in read_ahead(items(None)):
        await asyncio.sleep(0.01)  # the next item is read meanwhile, never more than one ahead
        assert produced[-1] <= item + 1
        seen.append(item)
    assert seen == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="page failed"):
        async for _ in read_ahead(items(2)):
            pass


def test_wide_page_leaves_out_unknown_keys_and_vanished_runs() -> None:
    """A run deleted after its id was read, and keys logged after the columns were chosen."""
    from services.api.exports.service import RUN_ATTRIBUTES, _assemble_wide

    metric_fields = [(f"metrics.loss.{s}", pa.float64()) for s in ("latest", "min", "max")]
    schema = pa.schema([*RUN_ATTRIBUTES, ("params.lr", pa.string()), *metric_fields])
    keys = {"params": pa.array(["lr"]), "tags": pa.array([], pa.string()), "metrics": pa.array(["loss"])}
    values = {
        "params": b'1,lr,"gone"\n2,lr,"0.1"\n2,new_key,"y"\n',  # run 1 vanished; new_key: no column
        "tags": b"",
        "metrics": b"2,loss,NaN\n2,other,1\n",
    }
    ranges = pa.table({"run_id": ["r2", "r1"], "key": ["loss", "loss"], "lo": [0.5, 9.0], "hi": [2.0, 9.0]})
    attributes = b'2,r2,e,"n",FINISHED,5,,"",,active\n'
    (row,) = _assemble_wide(schema, 2, keys, attributes, values, ranges).to_pylist()
    assert math.isnan(row.pop("metrics.loss.latest"))
    assert row == {
        "run_id": "r2",
        "experiment_id": "e",
        "name": "n",
        "status": "FINISHED",
        "start_time": pd.Timestamp(5, unit="ms", tz="UTC").to_pydatetime(),
        "end_time": None,
        "user_id": "",
        "parent_run_id": None,
        "lifecycle_stage": "active",
        "params.lr": "0.1",
        "metrics.loss.min": 0.5,
        "metrics.loss.max": 2.0,
    }
