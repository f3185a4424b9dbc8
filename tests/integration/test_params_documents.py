"""runs.params_doc: each run's params as one JSON object, read by the runs wide export.

Triggers on params keep the document equal to the run's params rows, whoever writes them:
the projector's metadata writer (several ParamsLogged events per run, params before their
run), replay (which truncates and re-applies the archive), the schema's one-time backfill
of a database from before the column, and plain SQL. The export reads the documents and
must give the bytes the params rows gave.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pyarrow as pa
import pytest

from runledger.auth.keys import ApiKey, generate_key
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import decode, encode, envelope_dict, experiment_id_for, producer
from runledger.events.models import EventType
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres import PgConnection
from runledger.stores.postgres.migrate import migrate
from services.api.exports import service
from services.api.exports.service import RUN_ATTRIBUTES, _assemble_wide
from services.ingest.metadata_writer import apply_projection
from services.ingest.projection import ArchivedEvent, Projection, build_projection
from services.ingest.replay import replay
from tests.integration.conftest import create_database
from tests.support.inprocess import api_client

pytestmark = pytest.mark.integration

T = "docs-tenant"
EXP = experiment_id_for(T, "docs")
NOTE = 'two\nlines, "quoted", \\ and \t, ünïcødé ✓'
_PRODUCER = producer("tests")
_START = datetime(2026, 1, 1, tzinfo=UTC)


def _event(n: int, type: EventType, payload: dict[str, Any], run_id: str | None = None) -> bytes:
    return encode(
        envelope_dict(
            tenant_id=T,
            type=type,
            run_id=run_id,
            experiment_id=EXP,
            producer=_PRODUCER,
            payload=payload,
            occurred_at=_START + timedelta(seconds=n),
        )
    )


def _events() -> list[bytes]:
    """The experiment; run r1 with params in three events (a changed value is ignored: the
    first wins); r2 whose params come before its RunStarted; r3 without params."""
    started = {"start_time": 1_700_000_000_000, "name": "run"}
    return [
        _event(0, EventType.EXPERIMENT_CREATED, {"name": "docs"}),
        _event(1, EventType.RUN_STARTED, started, "r1"),
        _event(2, EventType.PARAMS_LOGGED, {"params": {"lr": "0.1", "optimizer": 'adam, "beta"'}}, "r1"),
        _event(3, EventType.PARAMS_LOGGED, {"params": {"batch size": "32", "note": NOTE}}, "r1"),
        _event(4, EventType.PARAMS_LOGGED, {"params": {"lr": "0.5", "empty": ""}}, "r1"),
        _event(5, EventType.PARAMS_LOGGED, {"params": {"lr": "0.2", "é/x:y": "1"}}, "r2"),
        _event(6, EventType.RUN_STARTED, started | {"start_time": 1_700_000_000_001}, "r2"),
        _event(7, EventType.RUN_STARTED, started | {"start_time": 1_700_000_000_002}, "r3"),
    ]


EXPECTED = {
    "r1": {"lr": "0.1", "optimizer": 'adam, "beta"', "batch size": "32", "note": NOTE, "empty": ""},
    "r2": {"lr": "0.2", "é/x:y": "1"},
    "r3": {},
}


def _projection(raw: list[bytes], ingested_at: datetime | None = None) -> Projection:
    events = [ArchivedEvent(decode(body), "test", offset) for offset, body in enumerate(raw)]
    return build_projection(events, ingested_at, with_archive=ingested_at is not None)


async def _documents(conn: PgConnection) -> dict[str, dict[str, str]]:
    rows = await conn.fetch("SELECT run_id, params_doc FROM runs WHERE tenant_id = $1", T)
    return {r["run_id"]: orjson.loads(r["params_doc"]) for r in rows}


async def _rows(conn: PgConnection) -> dict[str, dict[str, str]]:
    rows = await conn.fetch("SELECT run_id, key, value FROM params WHERE tenant_id = $1", T)
    found: dict[str, dict[str, str]] = {}
    for r in rows:
        found.setdefault(r["run_id"], {})[r["key"]] = r["value"]
    return found


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClickHouse]:
    store = ChdbClickHouse(tmp_path_factory.mktemp("params-docs") / "clickhouse")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    """The events applied as the projector does, one event per batch (transaction)."""
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        for raw in _events():
            async with conn.transaction():
                await apply_projection(conn, _projection([raw]))
    finally:
        await conn.close()
    return dsn


@pytest.fixture(scope="module")
async def client(dsn: str, clickhouse: ChdbClickHouse) -> AsyncIterator[httpx.AsyncClient]:
    key: ApiKey = generate_key()
    async with api_client(dsn, T, key, clickhouse, basic_auth=True) as c:
        yield c


async def test_projector_merges_each_params_event_into_the_document(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await _documents(conn) == EXPECTED
        assert await _rows(conn) == {run: params for run, params in EXPECTED.items() if params}
    finally:
        await conn.close()


async def test_one_batch_of_all_events_gives_the_same_documents(postgres: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(await create_database(postgres))
    try:
        await migrate(conn)
        async with conn.transaction():
            await apply_projection(conn, _projection(_events()))
        assert await _documents(conn) == EXPECTED
    finally:
        await conn.close()


async def test_plain_sql_on_params_keeps_the_document(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    writes = conn.transaction()  # rolled back: the other tests read this database
    await writes.start()
    try:
        await conn.execute("INSERT INTO params VALUES ($1, 'r3', 'k', 'v'), ($1, 'r2', 'k', 'w')", T)
        assert (await _documents(conn))["r3"] == {"k": "v"}
        await conn.execute("UPDATE params SET value = 'u' WHERE tenant_id = $1 AND key = 'k'", T)
        assert (await _documents(conn))["r2"] == EXPECTED["r2"] | {"k": "u"}
        await conn.execute("DELETE FROM params WHERE tenant_id = $1 AND key = 'k'", T)
        assert await _documents(conn) == EXPECTED
        await conn.execute("TRUNCATE params")
        assert await _documents(conn) == {run: {} for run in EXPECTED}
    finally:
        await writes.rollback()
        await conn.close()


async def test_replay_rebuilds_the_documents(postgres: EmbeddedPostgres, clickhouse: ChdbClickHouse) -> None:
    dsn = await create_database(postgres)
    projection = _projection(_events(), datetime.now(UTC))
    assert projection.archive is not None
    clickhouse.insert_arrow("events_archive", projection.archive)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await conn.execute(  # a stale document that replay must not keep
                "INSERT INTO runs (tenant_id, run_id, experiment_id, status, start_time) VALUES ($1, 'r1', $2,"
                " 'RUNNING', 0)",
                T,
                EXP,
            )
            await conn.execute('UPDATE runs SET params_doc = \'{"stale": "1"}\' WHERE tenant_id = $1', T)
        stats = await replay(clickhouse, pool)
        assert stats.events == len(_events())
        async with pool.acquire() as conn:
            assert await _documents(conn) == EXPECTED
    finally:
        await pool.close()


async def test_migration_backfills_the_documents_of_an_earlier_database(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:  # runs and params as they were before params_doc, with rows
        await conn.execute(
            "CREATE TABLE runs (tenant_id text NOT NULL, run_id text NOT NULL, experiment_id text NOT NULL,"
            " parent_run_id text, name text NOT NULL DEFAULT '', user_id text NOT NULL DEFAULT '',"
            " status text NOT NULL, start_time bigint NOT NULL, end_time bigint,"
            " lifecycle_stage text NOT NULL DEFAULT 'active', PRIMARY KEY (tenant_id, run_id))"
        )
        await conn.execute(
            "CREATE TABLE params (tenant_id text NOT NULL, run_id text NOT NULL, key text NOT NULL,"
            " value text NOT NULL, PRIMARY KEY (tenant_id, run_id, key))"
        )
        await conn.execute(
            "INSERT INTO runs (tenant_id, run_id, experiment_id, status, start_time)"
            " SELECT $1, r, $2, 'FINISHED', 0 FROM unnest(ARRAY['r1', 'r2', 'r3']) r",
            T,
            EXP,
        )
        await conn.executemany(
            "INSERT INTO params VALUES ($1, $2, $3, $4)",
            [(T, run, k, v) for run, params in EXPECTED.items() for k, v in params.items()],
        )
        await migrate(conn)
        assert await _documents(conn) == EXPECTED
        await conn.execute("""UPDATE runs SET params_doc = '{"x": "y"}' WHERE run_id = 'r3'""")
        await migrate(conn)  # again: the backfill ran once, with the column, and is not redone
        assert await _documents(conn) == EXPECTED | {"r3": {"x": "y"}}
    finally:
        await conn.close()


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet", "arrow"])
async def test_export_from_documents_gives_the_bytes_of_the_rows(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    async def export(**params: Any) -> bytes:
        r = await client.get("/api/v1/exports/runs", params={"format": fmt, **params})
        assert r.status_code == 200, r.text
        return r.content

    monkeypatch.setattr(service, "RUN_FIRST_PAGE", 1)  # pages of 1 then 2: positions across pages
    monkeypatch.setattr(service, "RUN_PAGE", 2)
    for params in ({}, {"filter": "params.lr = '0.1'"}, {"view_type": "ALL"}):
        monkeypatch.setattr(service, "PARAMS_FROM_DOCUMENTS", True)
        documents = await export(**params)
        monkeypatch.setattr(service, "PARAMS_FROM_DOCUMENTS", False)
        assert documents == await export(**params)
    if fmt == "ndjson":
        rows = {r["run_id"]: r for r in map(orjson.loads, documents.splitlines())}
        assert rows["r1"]["params.note"] == NOTE and rows["r1"]["params.empty"] == ""
        assert rows["r1"]["params.lr"] == "0.1" and rows["r2"]["params.é/x:y"] == "1"
        assert rows["r3"]["params.lr"] is None


def test_documents_pivot_leaves_out_unknown_keys_and_vanished_runs() -> None:
    """As the long rows do: a run gone since its id was read, a key logged since the columns
    were chosen, a run without the key; and the same Arrow IPC bytes as the long rows give."""
    schema = pa.schema([*RUN_ATTRIBUTES, ("params.a", pa.string()), ("params.lr", pa.string())])
    keys = {
        "params": pa.array(["a", "lr"]),
        "tags": pa.array([], pa.string()),
        "metrics": pa.array([], pa.string()),
    }
    attributes = b'2,r2,e,"n",FINISHED,5,,"",,active\n3,r3,e,"m",FINISHED,6,,"",,active\n'
    documents = (
        b'{"i":1,"p":{"lr": "gone"}}\n{"i":3,"p":{}}\n{"i":2,"p":{"lr": "0.1", "new": "y", "a": ""}}\n'
    )
    rows = b'1,lr,"gone"\n2,lr,"0.1"\n2,new,"y"\n2,a,""\n'
    empty = {"params": b"", "tags": b"", "metrics": b""}
    from_documents = _assemble_wide(schema, 3, keys, attributes, empty, None, documents)
    from_rows = _assemble_wide(schema, 3, keys, attributes, empty | {"params": rows}, None)
    assert from_documents.to_pylist() == from_rows.to_pylist()
    assert [(r["params.a"], r["params.lr"]) for r in from_documents.to_pylist()] == [
        ("", "0.1"),
        (None, None),
    ]

    def ipc(batch: pa.RecordBatch) -> bytes:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue()

    assert ipc(from_documents) == ipc(from_rows)
    gone = _assemble_wide(schema, 3, keys, b"", empty, None, b"")  # every run of the page gone
    assert gone.num_rows == 0 and gone.schema == schema
