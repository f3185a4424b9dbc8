"""The analysis routes over a real Postgres: detector settings (tenant admin, validated,
audited, tenant-scoped) and attribution requests that are the caller's mistake (4xx)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from tests.integration.conftest import create_database
from tests.support.auth import Identity, provision
from tests.unit.test_api_errors import NoClickHouse, RecordingPublisher

pytestmark = pytest.mark.integration

TENANT, OTHER = "settings-a", "settings-b"


@dataclass(frozen=True)
class World:
    client: httpx.AsyncClient
    dsn: str
    admin: Identity
    engineer: Identity
    other_admin: Identity


@pytest.fixture(scope="module")
async def world(postgres: EmbeddedPostgres) -> AsyncIterator[World]:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO experiments (tenant_id, experiment_id, name, creation_time, last_update_time)"
            " VALUES ($1, 'e1', 'e1', 1, 1)",
            TENANT,
        )
    finally:
        await conn.close()
    settings = Settings(postgres_dsn=dsn, default_tenant=TENANT, bootstrap_api_key=generate_key().token)
    app = create_app(settings, NoClickHouse(), publisher=RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        admin = await provision(dsn, TENANT, Role.ADMIN)
        engineer = await provision(dsn, TENANT, Role.ENGINEER)
        other_admin = await provision(dsn, OTHER, Role.ADMIN)
        for identity in (admin, engineer, other_admin):
            for _ in range(100):
                if (await client.get("/api/v1/whoami", headers=identity.headers)).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        yield World(client, dsn, admin, engineer, other_admin)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.status_code} {response.text}"
    return response.json() if response.content else None


async def test_detector_settings_are_validated_scoped_and_audited(world: World) -> None:
    c, admin = world.client, world.admin.headers
    defaults = ok(await c.get("/api/v1/anomaly-settings", headers=admin))
    assert defaults["settings"] == [] and defaults["defaults"]["warmup_steps"] >= 1
    ok(await c.put("/api/v1/anomaly-settings", json={"overrides": {"warmup_steps": 50}}, headers=admin))
    narrow = {
        "experiment_id": "e1",
        "key": "val/*",
        "overrides": {"direction": "max", "disabled_kinds": ["plateau"]},
    }
    ok(await c.put("/api/v1/anomaly-settings", json=narrow, headers=admin))
    listed = ok(await c.get("/api/v1/anomaly-settings", headers=admin))["settings"]
    assert {(s["experiment_id"], s["key"]) for s in listed} == {("", ""), ("e1", "val/*")}
    # Replacing a scope keeps one row for it.
    ok(await c.put("/api/v1/anomaly-settings", json={"overrides": {"warmup_steps": 40}}, headers=admin))
    listed = ok(await c.get("/api/v1/anomaly-settings", headers=admin))["settings"]
    assert [s["overrides"] for s in listed if s["key"] == ""] == [{"warmup_steps": 40}]
    # Bad overrides are the caller's mistake, with the reason.
    for bad in (
        {"no_such_field": 1},
        {"warmup_steps": "many"},
        {"direction": "sideways"},
        {"disabled_kinds": ["x"]},
    ):
        r = await c.put("/api/v1/anomaly-settings", json={"overrides": bad}, headers=admin)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE" and r.json()["message"]
    # Engineers may not tune; another tenant's admin sees none of it.
    assert (await c.get("/api/v1/anomaly-settings", headers=world.engineer.headers)).status_code == 403
    assert ok(await c.get("/api/v1/anomaly-settings", headers=world.other_admin.headers))["settings"] == []
    r = await c.delete(
        "/api/v1/anomaly-settings",
        params={"experiment_id": "e1", "key": "val/*"},
        headers=world.other_admin.headers,
    )
    assert r.status_code == 404
    ok(
        await c.delete(
            "/api/v1/anomaly-settings", params={"experiment_id": "e1", "key": "val/*"}, headers=admin
        ),
        204,
    )
    assert (
        await c.delete(
            "/api/v1/anomaly-settings", params={"experiment_id": "e1", "key": "val/*"}, headers=admin
        )
    ).status_code == 404
    conn = await asyncpg.connect(world.dsn)
    try:
        actions = [
            r["action"] for r in await conn.fetch("SELECT action FROM audit_log WHERE tenant_id = $1", TENANT)
        ]
    finally:
        await conn.close()
    assert actions.count("anomaly_settings.put") == 3 and actions.count("anomaly_settings.delete") == 1


async def test_attribution_requests_that_cannot_run_are_refused_with_a_reason(world: World) -> None:
    c, engineer = world.client, world.engineer.headers
    body: dict[str, Any] = {"experiment_id": "e1", "metric": "loss", "candidate": {"run_ids": ["ghost"]}}
    r = await c.post("/api/v1/attributions", json=body, headers=engineer)
    assert r.status_code == 400 and "ghost" in r.json()["message"]
    r = await c.post(
        "/api/v1/attributions", json={**body, "candidate": {"filter": "params.x = "}}, headers=engineer
    )
    assert r.status_code == 400 and r.json()["message"].startswith("candidate.filter")
    r = await c.post("/api/v1/attributions", json={**body, "candidate": {"recent": 5}}, headers=engineer)
    assert r.status_code == 400
    r = await c.post(
        "/api/v1/attributions", json={**body, "candidate": {"filter": "params.x = 'y'"}}, headers=engineer
    )
    assert r.status_code == 400 and "no run" in r.json()["message"]
    r = await c.post(
        "/api/v1/attributions", json={**body, "experiment_id": "e1"}, headers=world.other_admin.headers
    )
    assert r.status_code == 404  # another tenant's experiment does not exist for the caller
    r = await c.post("/api/v1/attributions", json={**body, "surprise": 1}, headers=engineer)
    assert r.status_code == 400
    r = await c.get("/api/v1/anomalies", params={"kind": "lint.metric_myopia"}, headers=engineer)
    assert r.status_code == 400 and "unknown anomaly kind" in r.json()["message"]
