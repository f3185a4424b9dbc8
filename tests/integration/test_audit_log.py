"""The audit log: append-only even for SQL, never editable through the API, read by a tenant's admins."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from runledger.auth.keys import generate_key
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres import directory
from services.api.app import create_app
from tests.support.inprocess import chdb_store, migrated_database

pytestmark = pytest.mark.integration

BOOTSTRAP = generate_key()
ROOT = {"Authorization": f"Bearer {BOOTSTRAP.token}"}


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres)


@pytest.fixture(scope="module")
def settings(broker: EmbeddedBroker, dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    topics = {f"runledger.events.v1.{suffix}": 1, f"runledger.events.dlq.{suffix}": 1}
    broker.ensure_topics(topics)
    events_topic, dlq_topic = list(topics)
    return Settings(
        kafka_bootstrap=broker.bootstrap,
        postgres_dsn=dsn,
        events_topic=events_topic,
        dlq_topic=dlq_topic,
        default_tenant="platform",
        bootstrap_api_key=BOOTSTRAP.token,
        state_dir=tmp_path_factory.mktemp("audit-log"),
    )


@pytest.fixture(scope="module")
def clickhouse(settings: Settings) -> Iterator[ChdbClickHouse]:
    yield from chdb_store(settings)


@pytest.fixture(scope="module")
def app(settings: Settings, clickhouse: ChdbClickHouse) -> FastAPI:
    return create_app(settings, clickhouse)


@pytest.fixture(scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60) as c,
    ):
        yield c


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    return response.json()


async def tenant_with_admin(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    tenant_id = f"audit-{uuid.uuid4().hex[:6]}"
    body = ok(
        await client.post(
            "/api/v1/tenants", json={"tenant_id": tenant_id, "name": "t", "admin_user": "root"}, headers=ROOT
        ),
        201,
    )
    return tenant_id, {"Authorization": f"Bearer {body['api_key']['api_key']}"}


async def test_sql_cannot_update_delete_or_truncate_the_audit_log(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await directory.append_audit(
            conn,
            [directory.AuditEntry("sql-tenant", "u_1", "key.create", "ok", target="k1", details={"a": 1})],
        )
        seq = await conn.fetchval("SELECT max(seq) FROM audit_log WHERE tenant_id = 'sql-tenant'")
        for statement in (
            "UPDATE audit_log SET outcome = 'denied', actor = 'someone-else' WHERE seq = $1",
            "DELETE FROM audit_log WHERE seq = $1",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement, seq)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("TRUNCATE audit_log")
        # Even the table's owner inside an explicit transaction gets nowhere.
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            async with conn.transaction():
                await conn.execute("DELETE FROM audit_log")
        row = await conn.fetchrow(
            "SELECT actor, outcome, target, details::text FROM audit_log WHERE seq = $1", seq
        )
        assert row is not None
        assert dict(row) == {"actor": "u_1", "outcome": "ok", "target": "k1", "details": '{"a": 1}'}
    finally:
        await conn.close()


async def test_no_route_changes_the_audit_log(app: FastAPI, client: httpx.AsyncClient) -> None:
    paths = app.openapi()["paths"]
    audit_paths = {path: set(ops) for path, ops in paths.items() if "audit" in path}
    assert audit_paths == {"/api/v1/audit": {"get"}}
    _, admin = await tenant_with_admin(client)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = await client.request(method, "/api/v1/audit", headers=admin)
        assert response.status_code == 405, response.text
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    response = await client.delete("/api/v1/audit/1", headers=admin)
    assert response.status_code == 404


async def test_audit_reads_page_filter_and_stay_in_their_tenant(client: httpx.AsyncClient) -> None:
    tenant, admin = await tenant_with_admin(client)
    other_tenant, other_admin = await tenant_with_admin(client)
    me = ok(await client.get("/api/v1/whoami", headers=admin))["principal_id"]
    for i in range(7):
        ok(
            await client.post("/api/v1/principals", json={"kind": "user", "name": f"u{i}"}, headers=admin),
            201,
        )
    # A failed change leaves no `ok` entry: the entry commits with the change or not at all.
    dup = await client.post("/api/v1/principals", json={"kind": "user", "name": "u0"}, headers=admin)
    assert dup.status_code == 400
    viewer = ok(
        await client.post("/api/v1/principals", json={"kind": "user", "name": "v"}, headers=admin), 201
    )
    ok(
        await client.post(
            "/api/v1/grants", json={"principal_id": viewer["principal_id"], "role": "viewer"}, headers=admin
        )
    )
    key = ok(
        await client.post(f"/api/v1/principals/{viewer['principal_id']}/keys", json={}, headers=admin), 201
    )
    viewer_headers = {"Authorization": f"Bearer {key['api_key']}"}
    for _ in range(3):
        assert (await client.get("/api/v1/keys", headers=viewer_headers)).status_code == 403
    assert (await client.get("/api/v1/audit", headers=viewer_headers)).status_code == 403

    async def denied() -> list[dict[str, Any]]:
        page = ok(await client.get("/api/v1/audit", params={"outcome": "denied"}, headers=admin))
        entries: list[dict[str, Any]] = page["entries"]
        return entries

    for _ in range(100):  # denials are appended in the background, within a fraction of a second
        if len(await denied()) >= 4:
            break
        await asyncio.sleep(0.05)
    denials = await denied()
    assert [e["action"] for e in denials] == ["GET /api/v1/audit"] + ["GET /api/v1/keys"] * 3
    assert {e["actor"] for e in denials} == {viewer["principal_id"]} and {
        e["tenant_id"] for e in denials
    } == {tenant}

    everything = ok(await client.get("/api/v1/audit", params={"limit": 1000}, headers=admin))
    assert everything["next_cursor"] is None
    entries = everything["entries"]
    created = [e["details"]["name"] for e in entries if e["action"] == "principal.create"]
    assert sorted(created) == sorted([f"u{i}" for i in range(7)] + ["v"])  # no entry for the duplicate

    # Cursor paging walks the same entries, newest first, without gaps or repeats.
    paged: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = ok(await client.get("/api/v1/audit", params=params, headers=admin))
        assert len(page["entries"]) <= 3
        paged += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == entries
    assert [e["seq"] for e in paged] == sorted((e["seq"] for e in paged), reverse=True)
    # A cursor past bigint (found by the fuzzer: a 500) is a 400.
    huge = await client.get(
        "/api/v1/audit", params={"cursor": 52919225737655025893203216821125120}, headers=admin
    )
    assert huge.status_code == 400 and huge.json()["error_code"] == "INVALID_PARAMETER_VALUE", huge.text

    by_action = ok(await client.get("/api/v1/audit", params={"action": "principal."}, headers=admin))[
        "entries"
    ]
    assert len(by_action) == 8 and {e["action"] for e in by_action} == {"principal.create"}
    by_actor = ok(await client.get("/api/v1/audit", params={"actor": me, "outcome": "ok"}, headers=admin))[
        "entries"
    ]
    assert {e["action"] for e in by_actor} == {"principal.create", "grant.add", "key.create"}

    # The other tenant's admin sees none of it, even when asking for it by actor.
    assert ok(await client.get("/api/v1/audit", params={"actor": me}, headers=other_admin))["entries"] == []
    theirs = ok(await client.get("/api/v1/audit", params={"limit": 1000}, headers=other_admin))["entries"]
    assert theirs and {e["tenant_id"] for e in theirs} == {other_tenant}

    for bad in (
        {"cursor": 0},
        {"cursor": "x"},
        {"limit": 0},
        {"limit": 1001},
        {"outcome": "maybe"},
        {"scope": "all"},
    ):
        response = await client.get("/api/v1/audit", params=bad, headers=admin)
        assert response.status_code == 400, (bad, response.text)
    assert (await client.get("/api/v1/audit", params={"scope": "platform"}, headers=admin)).status_code == 403
    platform = ok(
        await client.get("/api/v1/audit", params={"scope": "platform", "action": "tenant."}, headers=ROOT)
    )
    assert {(e["action"], e["target"]) for e in platform["entries"]} >= {
        ("tenant.create", tenant),
        ("tenant.create", other_tenant),
    }
    assert all(e["tenant_id"] is None for e in platform["entries"])


async def test_a_nul_character_in_an_audited_request_is_stored_and_blocks_nothing(dsn: str) -> None:
    # A denial's action is "METHOD path" and the caller picks the path: %00 decodes to NUL,
    # which Postgres text and jsonb refuse. Such an entry once stopped every later one.
    conn = await asyncpg.connect(dsn)
    tenant = f"nul-{uuid.uuid4().hex[:6]}"
    try:
        await directory.append_audit(
            conn,
            [
                directory.AuditEntry(
                    tenant, "u_1", "GET /api/v1/keys/\x00x", "denied", target="\x00", details={"p": "a\x00b"}
                ),
                directory.AuditEntry(tenant, "u_1", "key.create", "ok"),
            ],
        )
        rows = await conn.fetch(
            "SELECT action, target, details->>'p' AS p FROM audit_log WHERE tenant_id = $1 ORDER BY seq",
            tenant,
        )
    finally:
        await conn.close()
    assert [r["action"] for r in rows] == ["GET /api/v1/keys/\ufffdx", "key.create"]
    assert rows[0]["target"] == "\ufffd" and rows[0]["p"] == "a\ufffdb"
