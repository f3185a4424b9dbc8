"""Every route of the OpenAPI schema, probed across tenants and roles.

For each (method, path): no key -> 401; an engineer of another tenant on tenant A's
real resources -> 404 (lists: 200 without any of A's data); a viewer of A on a write
-> 403; nothing ever answers 5xx. Administration routes (tenants, principals, keys,
grants, shares, policies, quotas, audit, admin) need more than engineer: 403 for
viewers and engineers alike (platform routes: for everyone but the superadmin).

Path parameters are filled from SAMPLES by name: a route with a parameter this test
does not know fails loudly, so every route added later is covered or noticed.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from runledger.artifacts import LocalArtifactStore
from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import encode, envelope_dict, experiment_id_for, producer
from runledger.events.models import EventType
from runledger.lineage import dataset_id
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from tests.integration.conftest import create_database
from tests.support.auth import Identity, provision
from tests.unit.test_api_errors import NoClickHouse, RecordingPublisher

pytestmark = pytest.mark.integration

A, B = "routes-a", "routes-b"
EXP = experiment_id_for(A, "confidential")
RUN = "c0ffee" * 5 + "00"
DATASET = dataset_id("secret-data", "v1")
ARTIFACT, ARTIFACT_BYTES = "model/weights.bin", b"confidential weights"
MODEL = "m-" + "5ec7e7" * 5 + "00"  # a logged model of A's run (MLflow 3)
ATTRIBUTION = str(uuid.UUID(int=0xA77))  # an attribution of A's experiment
MARKERS = (A, EXP, RUN, "confidential", "secret-data")  # none may appear in B's answers
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Prefixes of the administration routes (ADMIN of the tenant) and platform routes (superadmin).
PLATFORM_PREFIXES = ("/api/v1/tenants", "/api/v1/admin")
ADMIN_PREFIXES = (
    "/api/v1/principals",
    "/api/v1/users",
    "/api/v1/service-accounts",
    "/api/v1/keys",
    "/api/v1/grants",
    "/api/v1/roles",
    "/api/v1/shares",
    "/api/v1/policies",
    "/api/v1/tagging-policy",
    "/api/v1/quotas",
    "/api/v1/audit",
    "/api/v1/orgs",
    "/api/v1/webhooks",
    "/api/v1/anomaly-settings",
    "/api/v1/retention/",
)
# Tenant-admin writes on paths any member may read.
ADMIN_WRITES = {("PUT", "/api/v1/retention-policy")}
# Any authenticated caller, about itself.
SELF_PATHS = {"/api/v1/whoami"}
MLFLOW = "/api/2.0/mlflow"
# MLflow's searches are POSTs that only read.
MLFLOW_READ_POSTS = {
    f"{MLFLOW}/experiments/search",
    f"{MLFLOW}/runs/search",
    f"{MLFLOW}/logged-models/search",
}
# MLflow routes whose body or query names a resource of A (the rest search, or create in the caller's tenant).
MLFLOW_CREATES = {f"{MLFLOW}/experiments/create"}
# POSTs of RunLedger's own that only read (a body too large for a query string).
READ_POSTS = MLFLOW_READ_POSTS | {"/api/v1/compare"}
MLFLOW_OPEN = {"/api/3.0/mlflow/server-info"}


@dataclass(frozen=True)
class World:
    client: httpx.AsyncClient
    admin: Identity  # admin of A (and platform superadmin: the bootstrap key)
    viewer: Identity  # viewer of A
    engineer: Identity  # engineer of A
    intruder: Identity  # engineer of B


# Sample path-parameter values by name: A's real resources.
def samples(world: World) -> dict[str, str]:
    return {
        "experiment_id": EXP,
        "run_id": RUN,
        "key": "loss",
        "kind": "run",
        "node_id": RUN,
        "tenant_id": A,
        "principal_id": world.viewer.principal_id,
        "key_id": world.viewer.key.key_id,
        "grantee_tenant": B,
        "role": Role.VIEWER.value,
        "model_id": MODEL,
        "tag_key": "mlflow.user",
        "path": ARTIFACT,
        "webhook_id": "wh_" + "0" * 16,
        "attribution_id": ATTRIBUTION,
    }


async def _seed(conn: asyncpg.Connection[Any]) -> None:
    await conn.execute(
        "INSERT INTO experiments (tenant_id, experiment_id, name, creation_time, last_update_time)"
        " VALUES ($1, $2, 'confidential', 1, 1), ($1, '0', 'Default', 1, 1), ($3, '0', 'Default', 1, 1)",
        A,
        EXP,
        B,
    )
    await conn.execute(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, name, status, start_time)"
        " VALUES ($1, $2, $3, 'confidential-run', 'RUNNING', 1)",
        A,
        RUN,
        EXP,
    )
    await conn.execute("INSERT INTO tags VALUES ($1, $2, 'loss', 'x')", A, RUN)
    await conn.execute("INSERT INTO params VALUES ($1, $2, 'lr', '1')", A, RUN)
    model = {"model_id": MODEL, "experiment_id": EXP, "name": "confidential-model", "source_run_id": RUN}
    await conn.execute(
        "INSERT INTO tags VALUES ($1, $2, $3, $4)",
        A,
        RUN,
        f"mlflow.loggedModels/{MODEL}",
        orjson.dumps(model | {"tags": {"mlflow.user": "x"}}).decode(),
    )
    await conn.execute("INSERT INTO latest_metrics VALUES ($1, $2, 'loss', 1.0, 1, 1, 0)", A, RUN)
    await conn.execute(
        "INSERT INTO findings (tenant_id, event_id, run_id, experiment_id, kind, body, occurred_at)"
        " VALUES ($1, $2, $3, $4, 'lint.x', '{}'::jsonb, now())",
        A,
        uuid.uuid4(),
        RUN,
        EXP,
    )
    await conn.execute(
        "INSERT INTO attributions (tenant_id, attribution_id, experiment_id, metric, request, status,"
        " requested_at) VALUES ($1, $2, $3, 'loss', $4::jsonb, 'pending', now())",
        A,
        ATTRIBUTION,
        EXP,
        orjson.dumps({"candidate_run_ids": [RUN], "trigger": {"by": "api"}}).decode(),
    )
    await conn.execute(
        "INSERT INTO lineage_edges (tenant_id, source_kind, source_id, target_kind, target_id, relation)"
        " VALUES ($1, 'dataset', $2, 'run', $3, 'input')",
        A,
        DATASET,
        RUN,
    )
    await conn.execute(
        "INSERT INTO artifacts VALUES ($1, $2, $3, $4, $5, 'application/octet-stream')",
        A,
        RUN,
        ARTIFACT,
        len(ARTIFACT_BYTES),
        "sha256:" + hashlib.sha256(ARTIFACT_BYTES).hexdigest(),
    )


@pytest.fixture(scope="module")
async def world(postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await _seed(conn)
    finally:
        await conn.close()
    key = generate_key()
    blobs = tmp_path_factory.mktemp("route-artifacts")
    await LocalArtifactStore(blobs).put_stream(iter([ARTIFACT_BYTES]))
    settings = Settings(
        postgres_dsn=dsn,
        default_tenant=A,
        bootstrap_api_key=key.token,
        write_wait_timeout_s=0.2,
        artifact_uri=str(blobs),
    )
    app = create_app(settings, NoClickHouse(), publisher=RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        viewer = await provision(dsn, A, Role.VIEWER)
        engineer = await provision(dsn, A, Role.ENGINEER)
        intruder = await provision(dsn, B, Role.ENGINEER)
        await wait_until_known(client, intruder)
        admin = Identity(A, "", key)
        yield World(client, admin, viewer, engineer, intruder)


async def wait_until_known(client: httpx.AsyncClient, identity: Identity) -> None:
    """The API's auth watcher loads new keys within a second."""
    for _ in range(100):
        if (await client.get("/api/v1/whoami", headers=identity.headers)).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"key of {identity.principal_id} never became usable")


def _routes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if path.startswith("/api/")
    )


def _fill(path: str, values: dict[str, str]) -> str:
    filled = path
    for name in [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]:
        if name not in values:
            pytest.fail(f"no sample for path parameter {name!r} of {path}: add one to SAMPLES")
        filled = filled.replace("{" + name + "}", values[name])
    return filled


def _mlflow_query(path: str) -> dict[str, Any] | None:
    """The query string of an MLflow GET, naming A's resources."""
    if not path.startswith(f"{MLFLOW}/"):
        return None
    return {
        "experiment_id": EXP,
        "experiment_name": "confidential",
        "run_id": RUN,
        "run_ids": RUN,
        "metric_key": "loss",
    }


def _mlflow_body(path: str) -> Any:
    """The JSON body of an MLflow write, naming A's run and experiment."""
    if path in MLFLOW_CREATES:
        return {"name": f"n-{uuid.uuid4().hex[:6]}"}
    if path.endswith(("/search", "/experiments/delete", "/experiments/restore")):
        return {"experiment_ids": [EXP], "experiment_id": EXP}
    if path.endswith("/logged-models/{model_id}"):
        return {"status": "LOGGED_MODEL_READY"}
    return {
        "experiment_id": EXP,
        "run_id": RUN,
        "source_run_id": RUN,
        "new_name": f"n-{uuid.uuid4().hex[:6]}",
        "key": "t",
        "value": "1",
        "status": "FINISHED",
        "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}],
        "tags": [{"key": "t", "value": "1"}],
        "datasets": [{"dataset": {"name": "d", "digest": "x"}}],
        "models": [{"model_id": MODEL, "step": 0}],
        "params": [{"key": "p", "value": "1"}],
        "model_json": orjson.dumps(
            {"artifact_path": "m", "flavors": {}, "utc_time_created": "2026-01-01", "run_id": RUN}
        ).decode(),
    }


def _body(method: str, path: str) -> Any:
    """A valid body where the route needs one (B's caller then acts on A's ids)."""
    if method not in WRITE_METHODS:
        return None
    if path.startswith(f"{MLFLOW}/"):
        return _mlflow_body(path)
    if path == "/api/v1/events":
        event = envelope_dict(
            tenant_id=A,
            type=EventType.TAGS_SET,
            run_id=RUN,
            experiment_id=EXP,
            producer=producer("test"),
            payload={"tags": {"x": "1"}},
        )
        return [orjson.loads(encode(event))]
    if path == "/api/v1/runs":
        return {"experiment_id": EXP}
    if path == "/api/v1/attributions":
        return {"experiment_id": EXP, "metric": "loss", "candidate": {"run_ids": [RUN]}}
    if path == "/api/v1/compare":
        return {"runs": [RUN]}
    if path == "/api/v1/anomaly-settings":
        return {"overrides": {"warmup_steps": 5}}
    if path.endswith("/params"):
        return {"params": {"p": "1"}}
    if path.endswith("/metrics"):
        return {"metrics": [{"key": "m", "value": 1.0}]}
    if path.endswith("/tags"):
        return {"tags": {"t": "1"}}
    if path.endswith("/status"):
        return {"status": "FINISHED"}
    if path.startswith("/api/v1/experiments"):
        return {"name": f"n-{uuid.uuid4().hex[:6]}"}
    return {}


def _kind(method: str, path: str) -> str:
    if (method, path) in ADMIN_WRITES:
        return "admin"
    if path in SELF_PATHS:
        return "self"
    if path.startswith(PLATFORM_PREFIXES):
        return "platform"
    if path.startswith(ADMIN_PREFIXES):
        return "admin"
    return "data"


async def _call(world: World, method: str, path: str, identity: Identity | None) -> httpx.Response:
    url = _fill(path, samples(world))
    headers = identity.headers if identity else {}
    body = _body(method, path)
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    if method == "GET" and (query := _mlflow_query(path)) is not None:
        kwargs["params"] = query
    response = await world.client.request(method, url, **kwargs)
    assert response.status_code < 500, (
        f"{method} {path} as {identity}: {response.status_code} {response.text}"
    )
    return response


def _fmt(method: str, path: str, r: httpx.Response) -> str:
    return f"{method} {path}: {r.status_code} {r.text[:300]}"


async def test_every_route_needs_a_key(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    routes = _routes(spec)
    assert len(routes) > 15
    for method, path in routes:
        r = await _call(world, method, path, None)
        assert r.status_code == 401, _fmt(method, path, r)
        assert r.json()["error_code"] == "UNAUTHENTICATED"
        # A malformed body changes nothing: authentication comes first.
        bad = await world.client.request(
            method, _fill(path, samples(world)), content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 401, _fmt(method, path, bad)


async def test_another_tenant_sees_nothing_of_a(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    failures: list[str] = []
    for method, path in _routes(spec):
        r = await _call(world, method, path, world.intruder)
        kind = _kind(method, path)
        if kind == "self":
            ok = r.status_code == 200
        elif kind in ("admin", "platform"):
            ok = r.status_code in (403, 404)
        elif "{" in path:
            ok = r.status_code == 404
        elif path.startswith(f"{MLFLOW}/") and path not in MLFLOW_READ_POSTS | MLFLOW_CREATES:
            ok = r.status_code == 404  # names A's run or experiment, in the query or the body
        elif method == "GET" or path in MLFLOW_READ_POSTS:
            ok = r.status_code == 200
        elif path == "/api/v1/events":
            ok = r.status_code == 403  # an event of A's tenant
        elif path in ("/api/v1/runs", "/api/v1/attributions", "/api/v1/compare"):
            ok = r.status_code == 404  # A's experiment id means nothing in B
        else:
            ok = r.status_code in (200, 201, 202, 400)  # acts inside B
        # Errors may echo the ids the caller sent; a successful answer must hold nothing of A.
        leaked = r.status_code < 300 and kind != "self" and any(m in r.text for m in MARKERS)
        if not ok or leaked:
            failures.append(_fmt(method, path, r))
    assert not failures, "\n".join(failures)


async def test_a_viewer_may_not_write_and_only_admins_administer(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    failures: list[str] = []
    for method, path in _routes(spec):
        kind = _kind(method, path)
        if method in WRITE_METHODS and kind != "self" and path not in READ_POSTS:
            r = await _call(world, method, path, world.viewer)
            if r.status_code != 403:
                failures.append("viewer " + _fmt(method, path, r))
        if kind in ("admin", "platform"):
            r = await _call(world, method, path, world.engineer)
            if r.status_code != 403:
                failures.append("engineer " + _fmt(method, path, r))
        if kind == "platform" and method == "GET":
            r = await _call(world, method, path, world.admin)
            if r.status_code >= 400:
                failures.append("superadmin " + _fmt(method, path, r))
    assert not failures, "\n".join(failures)


async def test_the_owner_reads_its_resources(world: World) -> None:
    """The samples are real: A's admin reads every data route of them (200)."""
    spec = (await world.client.get("/openapi.json")).json()
    failures: list[str] = []
    for method, path in _routes(spec):
        if (
            method != "GET"
            or _kind(method, path) != "data"
            or path.endswith("/history")
            or "get-history" in path
        ):
            # no ClickHouse here
            continue
        if path in ("/api/v1/exports/runs", "/api/v1/exports/metric-points"):
            continue  # metric min/max and points come from ClickHouse (tests/integration/test_exports.py)
        r = await _call(world, method, path, world.admin)
        if r.status_code != 200:
            failures.append(_fmt(method, path, r))
    assert not failures, "\n".join(failures)
