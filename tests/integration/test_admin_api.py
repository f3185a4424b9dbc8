"""The org-admin API against real Postgres, broker and chdb, as a new operator would use it.

Two API instances share one database, like two processes of a deployment: changes are
made through `api`, and `other` must see them on its own (its auth watcher) within 5 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.serve import ProjectorThread
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.app import create_app
from tests.support.inprocess import chdb_store, migrated_database, module_settings

pytestmark = pytest.mark.integration

BOOTSTRAP = generate_key()
ROOT_TENANT = "platform"
REVOCATION_BOUND_S = 5.0


@dataclass(frozen=True)
class Apis:
    api: httpx.AsyncClient  # where the admin changes are made
    other: httpx.AsyncClient  # a second API instance: learns of changes only through Postgres
    dsn: str


@dataclass(frozen=True)
class Caller:
    """A principal and the headers of one of its keys."""

    principal_id: str
    key_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


ROOT = Caller("", BOOTSTRAP.key_id, BOOTSTRAP.token)


@pytest.fixture(scope="module")
def settings(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return module_settings(
        broker,
        tmp_path_factory.mktemp("admin-api"),
        ROOT_TENANT,
        partitions=2,
        bootstrap_api_key=BOOTSTRAP.token,
    )


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres)


@pytest.fixture(scope="module")
def clickhouse(settings: Settings) -> Iterator[ChdbClickHouse]:
    yield from chdb_store(settings)


@pytest.fixture(scope="module")
async def apis(settings: Settings, dsn: str, clickhouse: ChdbClickHouse) -> AsyncIterator[Apis]:
    live = settings.model_copy(update={"postgres_dsn": dsn})
    projector = ProjectorThread(live, clickhouse)
    projector.start()
    first, second = create_app(live, clickhouse), create_app(live, clickhouse)
    try:
        async with (
            first.router.lifespan_context(first),
            second.router.lifespan_context(second),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=first), base_url="http://api", timeout=60
            ) as a,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=second), base_url="http://b", timeout=60
            ) as b,
        ):
            yield Apis(a, b, dsn)
    finally:
        projector.stop()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    return response.json()


def refused(response: httpx.Response, status: int) -> str:
    """The error code of an expected refusal (always the API's JSON error shape)."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    body = response.json()
    assert set(body) >= {"error_code", "message"}
    return str(body["error_code"])


async def new_tenant(client: httpx.AsyncClient, prefix: str) -> tuple[str, Caller]:
    """A tenant with an admin user, created by the superadmin; its id and the admin's key."""
    tenant_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    body = ok(
        await client.post(
            "/api/v1/tenants",
            json={"tenant_id": tenant_id, "name": f"{prefix} org", "admin_user": "alice"},
            headers=ROOT.headers,
        ),
        201,
    )
    assert body["tenant"] == {**body["tenant"], "tenant_id": tenant_id, "status": "active"}
    assert body["admin"]["name"] == "alice" and body["admin"]["roles"] == [
        {"role": "admin", "experiment_id": None}
    ]
    key = body["api_key"]
    assert key["api_key"].startswith(f"rlk_{key['key_id']}_")
    return tenant_id, Caller(body["admin"]["principal_id"], key["key_id"], key["api_key"])


async def new_member(client: httpx.AsyncClient, admin: Caller, name: str, role: str | None) -> Caller:
    """A user of the admin's tenant with `role` (tenant-wide) and one key."""
    principal = ok(
        await client.post("/api/v1/principals", json={"kind": "user", "name": name}, headers=admin.headers),
        201,
    )
    principal_id = principal["principal_id"]
    if role is not None:
        grant = {"principal_id": principal_id, "role": role}
        assert ok(await client.post("/api/v1/grants", json=grant, headers=admin.headers)) == {"changed": True}
    key = ok(
        await client.post(
            f"/api/v1/principals/{principal_id}/keys", json={"name": f"{name}-laptop"}, headers=admin.headers
        ),
        201,
    )
    return Caller(principal_id, key["key_id"], key["api_key"])


async def within(seconds: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until `check` holds; fails when it does not within `seconds`."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.05)


async def audit_entries(client: httpx.AsyncClient, admin: Caller, **params: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = ok(
        await client.get("/api/v1/audit", params={"limit": 1000, **params}, headers=admin.headers)
    )["entries"]
    return entries


async def eventually_audited(
    client: httpx.AsyncClient, admin: Caller, match: Callable[[dict[str, Any]], bool], **params: Any
) -> dict[str, Any]:
    """The first entry matching (denials are appended in the background, within a fraction of a second)."""
    found: list[dict[str, Any]] = []

    async def present() -> bool:
        found[:] = [e for e in await audit_entries(client, admin, **params) if match(e)]
        return bool(found)

    await within(5.0, present)
    return found[0]


async def known_everywhere(apis: Apis, *callers: Caller) -> None:
    """Wait until every process has loaded these keys (before their events reach the projector).

    The projector's snapshot polls like the other API instance's; one more interval covers it.
    """
    for caller in callers:

        async def known(c: Caller = caller) -> bool:
            return await status_of(apis.other, c) == 200

        await within(REVOCATION_BOUND_S, known)
    await asyncio.sleep(Settings().auth_poll_interval_s + 0.1)


async def status_of(client: httpx.AsyncClient, caller: Caller) -> int:
    return (await client.get("/api/v1/whoami", headers=caller.headers)).status_code


async def test_bootstrap_to_tenants_roles_keys_revocation_suspension_and_audit(apis: Apis) -> None:
    api, other = apis.api, apis.other
    me = ok(await api.get("/api/v1/whoami", headers=ROOT.headers))
    assert me["superadmin"] is True and me["tenant_id"] == ROOT_TENANT
    root = Caller(me["principal_id"], ROOT.key_id, ROOT.token)

    # Two tenants, each with its first admin: its key works here at once, elsewhere within a poll.
    acme, acme_admin = await new_tenant(api, "acme")
    globex, globex_admin = await new_tenant(api, "globex")
    who = ok(await api.get("/api/v1/whoami", headers=acme_admin.headers))
    assert who["tenant_id"] == acme and who["roles"] == [{"role": "admin", "experiment_id": None}]

    async def acme_admin_known_elsewhere() -> bool:
        return await status_of(other, acme_admin) == 200

    await within(REVOCATION_BOUND_S, acme_admin_known_elsewhere)
    listed = ok(await api.get("/api/v1/tenants", headers=ROOT.headers))["tenants"]
    assert {acme, globex, ROOT_TENANT} <= {t["tenant_id"] for t in listed}
    assert refused(
        await api.post("/api/v1/tenants", json={"tenant_id": acme, "name": "x"}, headers=ROOT.headers), 400
    ) == ("RESOURCE_ALREADY_EXISTS")
    for bad in ({"tenant_id": "no/slash", "name": "x"}, {"tenant_id": "a" * 65, "name": "x"}, {"name": "x"}):
        refused(await api.post("/api/v1/tenants", json=bad, headers=ROOT.headers), 400)

    # Users with each role, and a service account.
    viewer = await new_member(api, acme_admin, "vera", "viewer")
    engineer = await new_member(api, acme_admin, "erin", "engineer")
    second_admin = await new_member(api, acme_admin, "adam", "admin")
    nobody = await new_member(api, acme_admin, "nora", None)
    bot = ok(
        await api.post(
            "/api/v1/principals", json={"kind": "service_account", "name": "ci"}, headers=acme_admin.headers
        ),
        201,
    )
    assert bot["principal_id"].startswith("sa_") and bot["roles"] == []
    refused(
        await api.post(
            "/api/v1/principals", json={"kind": "user", "name": "vera"}, headers=acme_admin.headers
        ),
        400,
    )
    refused(
        await api.post("/api/v1/principals", json={"kind": "robot", "name": "x"}, headers=acme_admin.headers),
        400,
    )
    expiring = ok(
        await api.post(
            f"/api/v1/principals/{bot['principal_id']}/keys",
            json={"name": "ci", "expires_in_days": 30},
            headers=acme_admin.headers,
        ),
        201,
    )
    assert expiring["expires_at"] is not None
    assert (
        ok(await api.get("/api/v1/whoami", headers={"Authorization": f"Bearer {expiring['api_key']}"}))[
            "roles"
        ]
        == []
    )

    principals = ok(await api.get("/api/v1/principals", headers=acme_admin.headers))["principals"]
    roles = {p["name"]: [g["role"] for g in p["roles"]] for p in principals}
    assert roles == {
        "alice": ["admin"],
        "vera": ["viewer"],
        "erin": ["engineer"],
        "adam": ["admin"],
        "nora": [],
        "ci": [],
    }
    grants = ok(await api.get("/api/v1/grants", headers=acme_admin.headers))["grants"]
    assert {(g["principal_id"], g["role"]) for g in grants} >= {
        (viewer.principal_id, "viewer"),
        (engineer.principal_id, "engineer"),
    }

    # Key listings never carry a secret.
    keys_response = await api.get("/api/v1/keys", headers=acme_admin.headers)
    keys = ok(keys_response)["keys"]
    assert {viewer.key_id, engineer.key_id, acme_admin.key_id, expiring["key_id"]} <= {
        k["key_id"] for k in keys
    }
    for caller in (viewer, engineer, acme_admin):
        assert caller.token.split("_", 2)[2] not in keys_response.text
    assert all(
        set(k) == {"key_id", "principal_id", "name", "created_at", "expires_at", "revoked_at"} for k in keys
    )
    assert [
        k["key_id"]
        for k in ok(
            await api.get(
                "/api/v1/keys", params={"principal_id": viewer.principal_id}, headers=acme_admin.headers
            )
        )["keys"]
    ] == [viewer.key_id]

    # Non-admins: 403 on every admin route; tenant admins: 403 on platform routes.
    for caller in (viewer, engineer, nobody):
        assert (
            refused(await api.get("/api/v1/principals", headers=caller.headers), 403) == "PERMISSION_DENIED"
        )
        refused(
            await api.post("/api/v1/principals", json={"kind": "user", "name": "x"}, headers=caller.headers),
            403,
        )
        refused(await api.delete(f"/api/v1/keys/{acme_admin.key_id}", headers=caller.headers), 403)
        refused(await api.get("/api/v1/audit", headers=caller.headers), 403)
        refused(await api.get("/api/v1/admin/dead-letters", headers=caller.headers), 403)
    assert ok(await api.get("/api/v1/principals", headers=second_admin.headers))["principals"]
    for caller in (acme_admin, engineer):
        refused(
            await api.post(
                "/api/v1/tenants", json={"tenant_id": "evil", "name": "x"}, headers=caller.headers
            ),
            403,
        )
        refused(await api.get("/api/v1/tenants", headers=caller.headers), 403)
        refused(await api.post(f"/api/v1/tenants/{globex}/suspend", headers=caller.headers), 403)
        refused(
            await api.put(f"/api/v1/tenants/{acme}/quotas", json={"max_points": 1}, headers=caller.headers),
            403,
        )
        refused(await api.post("/api/v1/admin/replay", headers=caller.headers), 403)
        refused(await api.get("/api/v1/audit", params={"scope": "platform"}, headers=caller.headers), 403)
    refused(await api.get("/api/v1/principals"), 401)

    # Another tenant's ids do not exist for globex's admin (and acme is untouched).
    for method, path, body in (
        ("POST", f"/api/v1/principals/{viewer.principal_id}/keys", {"name": "stolen"}),
        ("POST", f"/api/v1/principals/{viewer.principal_id}/disable", None),
        ("DELETE", f"/api/v1/keys/{viewer.key_id}", None),
        ("POST", "/api/v1/grants", {"principal_id": viewer.principal_id, "role": "admin"}),
    ):
        response = await api.request(method, path, json=body, headers=globex_admin.headers)
        assert refused(response, 404) == "RESOURCE_DOES_NOT_EXIST"
    refused(
        await api.delete(
            "/api/v1/grants",
            params={"principal_id": viewer.principal_id, "role": "viewer"},
            headers=globex_admin.headers,
        ),
        404,
    )
    globex_keys = ok(await api.get("/api/v1/keys", headers=globex_admin.headers))["keys"]
    assert [k["key_id"] for k in globex_keys] == [globex_admin.key_id]
    assert (
        ok(
            await api.get(
                "/api/v1/keys", params={"principal_id": viewer.principal_id}, headers=globex_admin.headers
            )
        )["keys"]
        == []
    )
    assert [
        p["name"] for p in ok(await api.get("/api/v1/principals", headers=globex_admin.headers))["principals"]
    ] == ["alice"]
    assert await status_of(api, viewer) == 200

    # Revocation: refused at once here, and by the other instance within 5 s (measured).
    async def engineer_known_elsewhere() -> bool:
        return await status_of(other, engineer) == 200

    await within(REVOCATION_BOUND_S, engineer_known_elsewhere)
    revoked = ok(await api.delete(f"/api/v1/keys/rlk_{engineer.key_id}", headers=acme_admin.headers))
    assert revoked == {"key_id": engineer.key_id, "revoked": True}
    assert await status_of(api, engineer) == 401

    async def engineer_refused_elsewhere() -> bool:
        return await status_of(other, engineer) == 401

    elapsed = await within(REVOCATION_BOUND_S, engineer_refused_elsewhere)
    print(f"revocation reached the other API instance in {elapsed:.3f} s")
    assert (
        ok(await api.delete(f"/api/v1/keys/{engineer.key_id}", headers=acme_admin.headers))["revoked"]
        is False
    )
    assert next(
        k
        for k in ok(await api.get("/api/v1/keys", headers=acme_admin.headers))["keys"]
        if k["key_id"] == engineer.key_id
    )["revoked_at"]
    refused(await api.delete("/api/v1/keys/not-a-key", headers=acme_admin.headers), 404)

    # Disabling a principal stops all of its keys; an admin cannot disable itself.
    assert ok(
        await api.post(f"/api/v1/principals/{nobody.principal_id}/disable", headers=acme_admin.headers)
    ) == {"changed": True}
    assert await status_of(api, nobody) == 401
    refused(
        await api.post(f"/api/v1/principals/{nobody.principal_id}/keys", json={}, headers=acme_admin.headers),
        400,
    )
    refused(
        await api.post(f"/api/v1/principals/{acme_admin.principal_id}/disable", headers=acme_admin.headers),
        400,
    )

    # Suspension: every key of the tenant is refused, in both instances; resuming restores them.
    assert (
        ok(await api.post(f"/api/v1/tenants/{globex}/suspend", headers=ROOT.headers))["status"] == "suspended"
    )
    assert await status_of(api, globex_admin) == 401

    async def globex_refused_elsewhere() -> bool:
        return await status_of(other, globex_admin) == 401

    await within(REVOCATION_BOUND_S, globex_refused_elsewhere)
    assert await status_of(api, acme_admin) == 200
    refused(await api.post(f"/api/v1/tenants/{ROOT_TENANT}/suspend", headers=ROOT.headers), 400)
    refused(await api.post("/api/v1/tenants/no-such-tenant/suspend", headers=ROOT.headers), 404)
    assert ok(await api.post(f"/api/v1/tenants/{globex}/resume", headers=ROOT.headers))["status"] == "active"
    assert await status_of(api, globex_admin) == 200

    # Quotas: set by the superadmin, read by the tenant's admin.
    quota = ok(
        await api.put(
            f"/api/v1/tenants/{acme}/quotas",
            json={
                "events_per_second": 500,
                "max_points": 10**9,
                "max_artifact_bytes": 2**30,
                "points_per_second": 50_000,
            },
            headers=ROOT.headers,
        )
    )
    assert quota == {
        "tenant_id": acme,
        "events_per_second": 500,
        "max_points": 10**9,
        "max_artifact_bytes": 2**30,
        "points_per_second": 50_000,
        "points_used": 0,
        "artifact_bytes_used": 0,
    }
    assert ok(await api.get("/api/v1/quotas", headers=acme_admin.headers)) == quota
    assert ok(await api.get("/api/v1/quotas", headers=globex_admin.headers))["events_per_second"] is None
    refused(
        await api.put(f"/api/v1/tenants/{acme}/quotas", json={"events_per_second": 0}, headers=ROOT.headers),
        400,
    )
    refused(
        await api.put(f"/api/v1/tenants/{acme}/quotas", json={"points_per_second": -1}, headers=ROOT.headers),
        400,
    )
    refused(await api.put("/api/v1/tenants/nope/quotas", json={}, headers=ROOT.headers), 404)
    snapshot = api._transport.app.state.runtime.auth.snapshot  # type: ignore[attr-defined]
    assert snapshot.quota(acme).events_per_second == 500  # this process sees it at once
    assert snapshot.quota(acme).max_artifact_bytes == 2**30
    assert snapshot.quota(acme).points_per_second == 50_000
    ok(await api.put(f"/api/v1/tenants/{acme}/quotas", json={}, headers=ROOT.headers))

    # Grants: removing one takes the role away; an admin keeps its own admin role.
    gone = {"principal_id": second_admin.principal_id, "role": "admin"}
    assert ok(await api.delete("/api/v1/grants", params=gone, headers=acme_admin.headers)) == {
        "changed": True
    }
    refused(await api.get("/api/v1/principals", headers=second_admin.headers), 403)
    refused(await api.delete("/api/v1/grants", params=gone, headers=acme_admin.headers), 404)
    mine = {"principal_id": acme_admin.principal_id, "role": "admin"}
    refused(await api.delete("/api/v1/grants", params=mine, headers=acme_admin.headers), 400)

    # The audit log: each action and each denial, readable by that tenant's admins only.
    acme_log = await audit_entries(api, acme_admin)
    actions = {(e["action"], e["target"]) for e in acme_log if e["outcome"] == "ok"}
    assert {
        ("tenant.create", acme),
        ("principal.create", viewer.principal_id),
        ("grant.add", viewer.principal_id),
        ("key.create", engineer.key_id),
        ("key.revoke", engineer.key_id),
        ("principal.disable", nobody.principal_id),
        ("quota.set", acme),
        ("grant.remove", second_admin.principal_id),
    } <= actions
    assert all(e["tenant_id"] == acme for e in acme_log)
    create = next(e for e in acme_log if e["action"] == "key.create" and e["target"] == engineer.key_id)
    assert (
        create["actor"] == acme_admin.principal_id
        and create["details"]["principal_id"] == engineer.principal_id
    )
    assert create["source"]  # the client address
    seqs = [e["seq"] for e in acme_log]
    assert seqs == sorted(seqs, reverse=True)

    for caller, path in (
        (viewer, "/api/v1/principals"),
        (engineer, "/api/v1/principals"),
        (nobody, "/api/v1/audit"),
    ):
        wanted = (caller.principal_id, f"GET {path}")

        def is_wanted(e: dict[str, Any], w: tuple[str, str] = wanted) -> bool:
            return (e["actor"], e["action"]) == w

        denial = await eventually_audited(api, acme_admin, is_wanted, outcome="denied")
        assert denial["outcome"] == "denied" and denial["details"]["reason"]
    await eventually_audited(
        api,
        acme_admin,
        lambda e: e["action"] == "POST /api/v1/tenants" and e["actor"] == acme_admin.principal_id,
        outcome="denied",
    )
    # Globex's cross-tenant attempts are in globex's log, as denials, and in nobody else's.
    probe = await eventually_audited(
        api,
        globex_admin,
        lambda e: e["action"] == f"DELETE /api/v1/keys/{viewer.key_id}",
        outcome="denied",
    )
    assert probe["tenant_id"] == globex and probe["actor"] == globex_admin.principal_id
    assert not any(e["actor"] == globex_admin.principal_id for e in await audit_entries(api, acme_admin))
    globex_log = await audit_entries(api, globex_admin)
    assert all(e["tenant_id"] == globex for e in globex_log)
    assert {"tenant.suspend", "tenant.resume"} <= {e["action"] for e in globex_log}
    # Revoked and suspended keys used afterwards are denials of their own tenant.
    await eventually_audited(api, acme_admin, lambda e: e["actor"] == engineer.key_id, outcome="denied")

    # Platform scope: the superadmin's actions with tenant NULL.
    platform = await audit_entries(api, root, scope="platform")
    assert {("tenant.create", acme), ("tenant.create", globex), ("tenant.suspend", globex)} <= {
        (e["action"], e["target"]) for e in platform
    }
    assert all(e["tenant_id"] is None for e in platform)


async def test_tagging_policy_and_narrowed_grants(apis: Apis) -> None:
    api = apis.api
    tenant, admin = await new_tenant(api, "tags")
    await known_everywhere(apis, admin)
    refused(await api.get("/api/v1/policies/tagging", headers=admin.headers), 404)
    policy = {
        "required": {"project": [], "stage": ["dev", "prod", "dev"], "owner": []},
        "enforcement": "reject",
    }
    stored = ok(await api.put("/api/v1/policies/tagging", json=policy, headers=admin.headers))
    assert stored == {
        "required": {"project": [], "stage": ["dev", "prod"], "owner": []},
        "enforcement": "reject",
    }
    assert ok(await api.get("/api/v1/policies/tagging", headers=admin.headers)) == stored
    snapshot_policy = api._transport.app.state.runtime.auth.snapshot.tagging[tenant]  # type: ignore[attr-defined]
    assert snapshot_policy.reject and snapshot_policy.violations({"project": "x", "owner": "o"}) == [
        "missing tag 'stage'"
    ]
    bad_policies: list[dict[str, Any]] = [
        {"required": {"stage": []}, "enforcement": "maybe"},
        {"required": {}},
        {"required": {"/abs": []}},
        {"required": {"stage": "dev"}},
    ]
    for bad in bad_policies:
        refused(await api.put("/api/v1/policies/tagging", json=bad, headers=admin.headers), 400)
    viewer = await new_member(api, admin, "vic", "viewer")
    refused(await api.get("/api/v1/policies/tagging", headers=viewer.headers), 403)
    refused(await api.put("/api/v1/policies/tagging", json=policy, headers=viewer.headers), 403)
    assert ok(await api.delete("/api/v1/policies/tagging", headers=admin.headers)) == {"changed": True}
    assert ok(await api.delete("/api/v1/policies/tagging", headers=admin.headers)) == {"changed": False}
    refused(await api.get("/api/v1/policies/tagging", headers=admin.headers), 404)
    logged = [e["action"] for e in await audit_entries(api, admin, action="tagging_policy.")]
    assert logged == ["tagging_policy.clear", "tagging_policy.clear", "tagging_policy.set"]

    # Narrowed grants: only to an experiment of this tenant, never the admin role.
    experiment = ok(
        await api.post("/api/v1/experiments", json={"name": "narrow"}, headers=admin.headers), 201
    )["experiment_id"]
    engineer = await new_member(api, admin, "ed", None)
    grant = {"principal_id": engineer.principal_id, "role": "engineer", "experiment_id": experiment}
    assert ok(await api.post("/api/v1/grants", json=grant, headers=admin.headers)) == {"changed": True}
    assert ok(await api.post("/api/v1/grants", json=grant, headers=admin.headers)) == {"changed": False}
    who = ok(await api.get("/api/v1/whoami", headers=engineer.headers))
    assert who["roles"] == [{"role": "engineer", "experiment_id": experiment}]
    refused(await api.post("/api/v1/grants", json={**grant, "role": "admin"}, headers=admin.headers), 400)
    refused(
        await api.post("/api/v1/grants", json={**grant, "experiment_id": "missing"}, headers=admin.headers),
        404,
    )
    refused(await api.post("/api/v1/grants", json={**grant, "role": "owner"}, headers=admin.headers), 400)
    refused(await api.get("/api/v1/keys", headers=engineer.headers), 403)
    assert ok(await api.delete("/api/v1/grants", params=grant, headers=admin.headers)) == {"changed": True}
    assert ok(await api.get("/api/v1/whoami", headers=engineer.headers))["roles"] == []


async def test_sharing_is_recorded_on_both_sides(apis: Apis) -> None:
    api, other = apis.api, apis.other
    owner_tenant, owner = await new_tenant(api, "owner")
    grantee_tenant, grantee = await new_tenant(api, "grantee")
    await known_everywhere(apis, owner, grantee)
    experiment = ok(
        await api.post("/api/v1/experiments", json={"name": "to-share"}, headers=owner.headers), 201
    )["experiment_id"]
    theirs = ok(await api.post("/api/v1/experiments", json={"name": "theirs"}, headers=grantee.headers), 201)[
        "experiment_id"
    ]

    share = {"experiment_id": experiment, "grantee_tenant": grantee_tenant}
    assert ok(await api.post("/api/v1/shares", json=share, headers=owner.headers), 201) == {"changed": True}
    assert ok(await api.post("/api/v1/shares", json=share, headers=owner.headers), 201) == {"changed": False}
    refused(
        await api.post("/api/v1/shares", json={**share, "experiment_id": "0"}, headers=owner.headers), 400
    )
    refused(
        await api.post(
            "/api/v1/shares", json={**share, "grantee_tenant": owner_tenant}, headers=owner.headers
        ),
        400,
    )
    refused(
        await api.post(
            "/api/v1/shares", json={**share, "grantee_tenant": "nobody-here"}, headers=owner.headers
        ),
        404,
    )
    # Another tenant's experiment cannot be shared by this one (it does not exist here).
    refused(
        await api.post(
            "/api/v1/shares",
            json={"experiment_id": theirs, "grantee_tenant": grantee_tenant},
            headers=owner.headers,
        ),
        404,
    )
    refused(
        await api.post(
            "/api/v1/shares",
            json={"experiment_id": experiment, "grantee_tenant": owner_tenant},
            headers=grantee.headers,
        ),
        404,
    )

    mine = ok(await api.get("/api/v1/shares", headers=owner.headers))
    assert [(s["experiment_id"], s["grantee_tenant"], s["experiment_name"]) for s in mine["outgoing"]] == [
        (experiment, grantee_tenant, "to-share")
    ]
    assert mine["incoming"] == []
    received = ok(await api.get("/api/v1/shares", headers=grantee.headers))
    assert received["outgoing"] == [] and [s["owner_tenant"] for s in received["incoming"]] == [owner_tenant]

    async def other_sees(shared: bool) -> bool:
        snapshot = other._transport.app.state.runtime.auth.snapshot  # type: ignore[attr-defined]
        return (experiment in snapshot.shares_to(grantee_tenant)) is shared

    await within(REVOCATION_BOUND_S, lambda: other_sees(True))

    # The grantee cannot withdraw the owner's share; the owner can, once.
    refused(await api.delete(f"/api/v1/shares/{experiment}/{grantee_tenant}", headers=grantee.headers), 404)
    assert ok(await api.delete(f"/api/v1/shares/{experiment}/{grantee_tenant}", headers=owner.headers)) == {
        "changed": True
    }
    refused(await api.delete(f"/api/v1/shares/{experiment}/{grantee_tenant}", headers=owner.headers), 404)
    elapsed = await within(REVOCATION_BOUND_S, lambda: other_sees(False))
    print(f"unsharing reached the other API instance in {elapsed:.3f} s")

    for admin, tenant in ((owner, owner_tenant), (grantee, grantee_tenant)):
        entries = await audit_entries(api, admin, action="share.", outcome="ok")
        assert [e["action"] for e in entries][:2] == ["share.remove", "share.add"], entries
        assert all(e["tenant_id"] == tenant and e["actor"] == owner.principal_id for e in entries)
        assert entries[0]["details"] == {**share, "owner_tenant": owner_tenant, "changed": True}


async def test_dead_letter_counters_are_scoped_to_the_tenant(apis: Apis) -> None:
    api = apis.api
    mine, admin = await new_tenant(api, "dlq")
    theirs, _ = await new_tenant(api, "dlq")
    conn = await asyncpg.connect(apis.dsn)
    try:
        # Counters as the projector keeps them (one row per tenant and reason).
        await conn.executemany(
            "INSERT INTO dead_letters_count (tenant_id, reason, count) VALUES ($1, $2, $3)",
            [(mine, "bad_signature", 2), (theirs, "wrong_tenant", 5), ("", "unparseable", 1)],
        )
    finally:
        await conn.close()
    assert ok(await api.get("/api/v1/admin/dead-letters", headers=admin.headers))["dead_letters"] == [
        {"tenant_id": mine, "reason": "bad_signature", "count": 2}
    ]
    everything = ok(await api.get("/api/v1/admin/dead-letters", headers=ROOT.headers))["dead_letters"]
    assert {(r["tenant_id"], r["reason"]) for r in everything} >= {
        (mine, "bad_signature"),
        (theirs, "wrong_tenant"),
        ("", "unparseable"),
    }
