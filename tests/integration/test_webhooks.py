"""Alert routing by webhooks, against real Postgres and a real HTTP receiver on 127.0.0.1.

The API (admin routes) runs in-process over a real database; findings are projected
through the projector's own metadata writer (apply_projection), which enqueues the
deliveries; WebhookDispatcher delivers them over real HTTP to a ThreadingHTTPServer.

The receiver listens on loopback, which the destination policy refuses by default: the
API and the dispatchers here allow 127.0.0.1/32 (RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS), and
a second API with the default settings shows what a deployment refuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from runledger.analysis.webhook_policy import DestinationPolicy
from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.auth.sealing import SecretBox
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import decode, encode, envelope_dict, experiment_id_for, producer
from runledger.events.models import EventType
from runledger.stores.postgres.migrate import migrate
from services.analysis.webhooks import WebhookDispatcher
from services.api.app import create_app
from services.api.webhooks.repository import reseal_secrets
from services.ingest.metadata_writer import apply_projection
from services.ingest.projection import ArchivedEvent, build_projection
from tests.integration.conftest import create_database
from tests.integration.test_route_authorization import wait_until_known
from tests.support.auth import Identity, provision
from tests.unit.test_api_errors import NoClickHouse, RecordingPublisher

pytestmark = pytest.mark.integration

A, B = "hooks-a", "hooks-b"
# Where the receiver listens: allowed explicitly, as an operator would allow an internal receiver.
RECEIVER_NETWORKS = ["127.0.0.1/32"]
# The deployment's sealing key (RUNLEDGER_SECRETS_KEY): the API seals with it, dispatchers open.
SECRETS_KEY = Fernet.generate_key().decode()
EXP = experiment_id_for(A, "training")
RUN = "ab12" * 8


# --- a real HTTP receiver ----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers POSTs per path from a script of (status, headers), then 200; records every request."""

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answer(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests.append(Received(path, headers, body))
            queue = self.script.get(path)
            return queue.pop(0) if queue else (200, {})


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra = state.answer(self.path, body, headers)
            extra = dict(extra)
            time.sleep(float(extra.pop("delay", "0")))  # a slow receiver
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


# --- the API over a real database ----------------------------------------------------------------


@dataclass(frozen=True)
class World:
    client: httpx.AsyncClient
    pool: asyncpg.Pool[Any]
    admin: Identity  # admin of A
    engineer: Identity  # engineer of A
    viewer: Identity  # viewer of A
    other_admin: Identity  # admin of B
    dsn: str


@pytest.fixture(scope="module")
async def world(postgres: EmbeddedPostgres) -> AsyncIterator[World]:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    settings = Settings(
        postgres_dsn=dsn,
        default_tenant=A,
        bootstrap_api_key=generate_key().token,
        write_wait_timeout_s=0.2,
        webhook_allowed_networks=RECEIVER_NETWORKS,
        secrets_key=SECRETS_KEY,
    )
    app = create_app(settings, NoClickHouse(), publisher=RecordingPublisher())
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
    assert pool is not None
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        admin = await provision(dsn, A, Role.ADMIN)
        engineer = await provision(dsn, A, Role.ENGINEER)
        viewer = await provision(dsn, A, Role.VIEWER)
        other_admin = await provision(dsn, B, Role.ADMIN)
        await wait_until_known(client, other_admin)
        yield World(client, pool, admin, engineer, viewer, other_admin, dsn)
    await pool.close()


def dispatcher(world: World, **overrides: Any) -> WebhookDispatcher:
    """Small backoffs, so retries happen within the test."""
    options: dict[str, Any] = {
        "http_timeout_s": 2.0,
        "max_attempts": 8,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "concurrency": 4,
        "policy": DestinationPolicy.of(RECEIVER_NETWORKS),
        "secrets": SecretBox.from_text(SECRETS_KEY),
    }
    return WebhookDispatcher(world.pool, **(options | overrides))


async def create_hook(world: World, url: str, **fields: Any) -> dict[str, Any]:
    r = await world.client.post("/api/v1/webhooks", json={"url": url, **fields}, headers=world.admin.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def finding_event(kind: str, *, tenant: str = A, occurred_at: datetime | None = None) -> bytes:
    event = envelope_dict(
        tenant_id=tenant,
        type=EventType.ANOMALY_DETECTED,
        run_id=RUN,
        experiment_id=EXP,
        producer=producer("analysis"),
        occurred_at=occurred_at,
        payload={
            "key": "loss",
            "step": 42,
            "kind": kind,
            "severity": 0.9,
            "evidence": {"message": f"{kind} in loss at step 42"},
        },
    )
    return encode(event)


async def project(world: World, raw: bytes) -> str:
    """Apply the event as the projector does (its metadata writer, in one transaction); its id."""
    event = decode(raw)
    projection = build_projection([ArchivedEvent(event, "test", 0)], None, with_archive=False)
    async with world.pool.acquire() as conn, conn.transaction():
        await apply_projection(conn, projection)
    return str(event.envelope.event_id)


async def deliveries_of(world: World, webhook_id: str) -> list[dict[str, Any]]:
    r = await world.client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=world.admin.headers)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["deliveries"]
    return rows


async def drain(
    d: WebhookDispatcher, world: World, webhook_id: str, until: set[str], limit_s: float = 10
) -> None:
    """Dispatcher rounds until every delivery of the webhook is in a status of `until`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await d.deliver_due()
        rows = await deliveries_of(world, webhook_id)
        if rows and all(r["status"] in until for r in rows):
            return
        await asyncio.sleep(0.03)
    raise AssertionError(f"deliveries of {webhook_id} never reached {until}: {rows}")


# --- the API --------------------------------------------------------------------------------------


async def test_admin_creates_lists_updates_and_deletes(world: World, receiver: Receiver) -> None:
    c, h = world.client, world.admin.headers
    created = await create_hook(world, f"{receiver.base_url}/crud", kinds=["spike", "spike", "divergence"])
    hook_id = created["webhook_id"]
    assert created["kinds"] == ["divergence", "spike"] and created["enabled"] is True
    assert len(created["secret"]) >= 43  # 32 random bytes, urlsafe base64
    listed = (await c.get("/api/v1/webhooks", headers=h)).json()["webhooks"]
    assert [w["webhook_id"] for w in listed] == [hook_id]
    assert "secret" not in listed[0]
    got = await c.get(f"/api/v1/webhooks/{hook_id}", headers=h)
    assert got.status_code == 200 and "secret" not in got.json()
    patched = await c.patch(f"/api/v1/webhooks/{hook_id}", json={"enabled": False, "kinds": []}, headers=h)
    assert patched.status_code == 200, patched.text
    assert patched.json()["enabled"] is False and patched.json()["kinds"] == []
    assert patched.json()["url"] == f"{receiver.base_url}/crud"
    assert (await c.delete(f"/api/v1/webhooks/{hook_id}", headers=h)).status_code == 200
    gone = await c.get(f"/api/v1/webhooks/{hook_id}", headers=h)
    assert gone.status_code == 404 and gone.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    async with world.pool.acquire() as conn:
        actions = await conn.fetch(
            "SELECT action, details FROM audit_log WHERE tenant_id = $1 AND target = $2 ORDER BY seq",
            A,
            hook_id,
        )
    assert [a["action"] for a in actions] == ["webhook.create", "webhook.update", "webhook.delete"]
    assert created["secret"] not in str([a["details"] for a in actions])


async def stored_secret(world: World, webhook_id: str) -> str:
    async with world.pool.acquire() as conn:
        value: str = await conn.fetchval("SELECT secret FROM webhooks WHERE webhook_id = $1", webhook_id)
    return value


async def test_the_secret_is_stored_sealed(world: World, receiver: Receiver) -> None:
    created = await create_hook(world, f"{receiver.base_url}/sealed")
    stored = await stored_secret(world, created["webhook_id"])
    assert stored.startswith("fernet:") and created["secret"] not in stored
    assert SecretBox.from_text(SECRETS_KEY).open(stored) == created["secret"]
    await world.client.delete(f"/api/v1/webhooks/{created['webhook_id']}", headers=world.admin.headers)


async def test_a_new_secret_signs_the_next_delivery(world: World, receiver: Receiver) -> None:
    hook = await create_hook(world, f"{receiver.base_url}/renewed")
    hook_id, old_secret = hook["webhook_id"], hook["secret"]
    for who in (world.engineer, world.other_admin):  # not an admin of A: 403; another tenant: 404
        refused = await world.client.post(f"/api/v1/webhooks/{hook_id}/secret", headers=who.headers)
        assert refused.status_code in (403, 404), refused.text
    missing = await world.client.post(
        "/api/v1/webhooks/wh_0000000000000000/secret", headers=world.admin.headers
    )
    assert missing.status_code == 404
    renewed = await world.client.post(f"/api/v1/webhooks/{hook_id}/secret", headers=world.admin.headers)
    assert renewed.status_code == 200, renewed.text
    new_secret = renewed.json()["secret"]
    assert new_secret != old_secret and renewed.json()["webhook_id"] == hook_id
    assert (
        "secret"
        not in (await world.client.get(f"/api/v1/webhooks/{hook_id}", headers=world.admin.headers)).json()
    )

    event_id = await project(world, finding_event("renewed"))
    d = dispatcher(world)
    try:
        await drain(d, world, hook_id, {"delivered"})
    finally:
        await d.aclose()
    [request] = receiver.at("/renewed")
    assert request.headers["x-runledger-event-id"] == event_id
    signed = request.headers["x-runledger-signature"]
    assert signed == "sha256=" + hmac.new(new_secret.encode(), request.body, hashlib.sha256).hexdigest()
    async with world.pool.acquire() as conn:
        actions = await conn.fetch(
            "SELECT action, details::text FROM audit_log WHERE target = $1 ORDER BY seq", hook_id
        )
    assert [a["action"] for a in actions] == ["webhook.create", "webhook.new_secret"]
    assert new_secret not in str([a["details"] for a in actions])
    await world.client.delete(f"/api/v1/webhooks/{hook_id}", headers=world.admin.headers)


async def test_plaintext_and_old_key_secrets_are_sealed_again_and_still_sign(
    world: World, receiver: Receiver
) -> None:
    """Rows from before sealing (plaintext) and rows sealed under a key being rotated out are
    sealed under the first key at start (reseal_secrets); their deliveries sign as before."""
    plain = await create_hook(world, f"{receiver.base_url}/was-plain")
    rotated = await create_hook(world, f"{receiver.base_url}/was-old-key")
    old_key = Fernet.generate_key().decode()
    async with world.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhooks SET secret = $2 WHERE webhook_id = $1", plain["webhook_id"], "legacy-plain"
        )
        await conn.execute(
            "UPDATE webhooks SET secret = $2 WHERE webhook_id = $1",
            rotated["webhook_id"],
            SecretBox.from_text(old_key).seal("sealed-under-old-key"),
        )
    box = SecretBox.from_text(f"{SECRETS_KEY},{old_key}")  # the new key first, the old one still listed
    assert await reseal_secrets(world.pool, box) == 2
    assert await reseal_secrets(world.pool, box) == 0  # idempotent
    only_new = SecretBox.from_text(SECRETS_KEY)
    assert only_new.open(await stored_secret(world, plain["webhook_id"])) == "legacy-plain"
    assert only_new.open(await stored_secret(world, rotated["webhook_id"])) == "sealed-under-old-key"

    await project(world, finding_event("resealed"))
    d = dispatcher(world)  # holds only the new key
    try:
        for hook in (plain, rotated):
            await drain(d, world, hook["webhook_id"], {"delivered"})
    finally:
        await d.aclose()
    for path, secret in (("/was-plain", "legacy-plain"), ("/was-old-key", "sealed-under-old-key")):
        [request] = receiver.at(path)
        expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-runledger-signature"] == expected
    for hook in (plain, rotated):
        await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_a_secret_no_key_opens_is_retried_then_fails_with_the_reason(
    world: World, receiver: Receiver
) -> None:
    hook = await create_hook(world, f"{receiver.base_url}/unreadable")
    await project(world, finding_event("unreadable"))
    # This process lacks the key (a rotation half rolled out): retried, then given up.
    d = dispatcher(world, max_attempts=3, secrets=SecretBox.from_text(Fernet.generate_key().decode()))
    try:
        await drain(d, world, hook["webhook_id"], {"failed"})
    finally:
        await d.aclose()
    [row] = await deliveries_of(world, hook["webhook_id"])
    assert row["attempts"] == 3 and "signing secret cannot be opened" in row["last_error"]
    assert receiver.at("/unreadable") == []
    await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_only_the_tenants_admins_reach_its_webhooks(world: World, receiver: Receiver) -> None:
    c = world.client
    hook_id = (await create_hook(world, f"{receiver.base_url}/private"))["webhook_id"]
    for who in (world.engineer, world.viewer):
        for method, path in (
            ("POST", "/api/v1/webhooks"),
            ("GET", "/api/v1/webhooks"),
            ("GET", f"/api/v1/webhooks/{hook_id}"),
            ("PATCH", f"/api/v1/webhooks/{hook_id}"),
            ("DELETE", f"/api/v1/webhooks/{hook_id}"),
            ("GET", f"/api/v1/webhooks/{hook_id}/deliveries"),
        ):
            body = {"url": "http://example.com"} if method in ("POST", "PATCH") else None
            r = await c.request(method, path, json=body, headers=who.headers)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error_code"] == "PERMISSION_DENIED"
    # Another tenant's admin: the id does not exist there, and its list is empty.
    other = world.other_admin.headers
    for method, path in (
        ("GET", f"/api/v1/webhooks/{hook_id}"),
        ("PATCH", f"/api/v1/webhooks/{hook_id}"),
        ("DELETE", f"/api/v1/webhooks/{hook_id}"),
        ("GET", f"/api/v1/webhooks/{hook_id}/deliveries"),
    ):
        r = await c.request(
            method, path, json={"enabled": False} if method == "PATCH" else None, headers=other
        )
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert (await c.get("/api/v1/webhooks", headers=other)).json() == {"webhooks": []}
    still = await c.get(f"/api/v1/webhooks/{hook_id}", headers=world.admin.headers)
    assert still.status_code == 200 and still.json()["enabled"] is True
    await c.delete(f"/api/v1/webhooks/{hook_id}", headers=world.admin.headers)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "http://",
        "https:///path-only",
        "example.com/no-scheme",
        "http://exa mple.com/",
        "http://example.com/\x00",
        "http://example.com:99999/",
        "http://example.com:port/",
        "https://example.com/" + "a" * 2048,
    ],
)
async def test_invalid_urls_are_400(world: World, url: str) -> None:
    r = await world.client.post("/api/v1/webhooks", json={"url": url}, headers=world.admin.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE" and "url" in r.json()["message"]


async def test_other_bad_input_is_400_never_5xx(world: World, receiver: Receiver) -> None:
    c, h = world.client, world.admin.headers
    hook_id = (await create_hook(world, f"{receiver.base_url}/bad-input"))["webhook_id"]
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/webhooks", {"url": "http://example.com", "kinds": ["a\x00b"]}),
        ("POST", "/api/v1/webhooks", {"url": "http://example.com", "kinds": [""]}),
        ("POST", "/api/v1/webhooks", {"url": "http://example.com", "secret": "mine"}),
        ("POST", "/api/v1/webhooks", {"url": 42}),
        ("PATCH", f"/api/v1/webhooks/{hook_id}", {"url": "gopher://example.com"}),
        ("GET", f"/api/v1/webhooks/{hook_id}/deliveries?status=lost", None),
        ("GET", f"/api/v1/webhooks/{hook_id}/deliveries?page_token=%%%", None),
        ("GET", f"/api/v1/webhooks/{hook_id}/deliveries?page_size=0", None),
    ]
    for method, path, body in cases:
        r = await c.request(method, path, json=body, headers=h)
        assert r.status_code == 400, (method, path, r.text)
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    for odd in ("nope", "wh_" + "0" * 16, "%00", "x" * 5000):
        r = await c.get(f"/api/v1/webhooks/{odd}", headers=h)
        assert r.status_code == 404, (odd, r.text)
    # The 404s are audited as denials; the NUL of "%00" must not make the audit batch unwritable.
    for _ in range(100):
        async with world.pool.acquire() as conn:
            reasons = await conn.fetch(
                "SELECT details->>'reason' AS reason FROM audit_log"
                " WHERE tenant_id = $1 AND outcome = 'denied' AND details->>'reason' LIKE 'not found: webhook%'",
                A,
            )
        if len(reasons) >= 4:
            break
        await asyncio.sleep(0.05)
    assert any("\\x00" in r["reason"] for r in reasons), reasons
    await c.delete(f"/api/v1/webhooks/{hook_id}", headers=h)


# --- enqueue and delivery ---------------------------------------------------------------------------


async def test_a_finding_is_enqueued_once_per_matching_webhook_and_delivered_signed(
    world: World, receiver: Receiver
) -> None:
    every = await create_hook(world, f"{receiver.base_url}/every")
    spikes = await create_hook(world, f"{receiver.base_url}/spikes", kinds=["spike"])
    other_kind = await create_hook(world, f"{receiver.base_url}/divergence", kinds=["divergence"])
    disabled = await create_hook(world, f"{receiver.base_url}/disabled", enabled=False)
    other_tenant = (
        await world.client.post(
            "/api/v1/webhooks",
            json={"url": f"{receiver.base_url}/tenant-b"},
            headers=world.other_admin.headers,
        )
    ).json()
    raw = finding_event("spike")
    event_id = await project(world, raw)
    await project(world, raw)  # applied again (a redelivered event): no second delivery
    async with world.pool.acquire() as conn:
        queued = await conn.fetch(
            "SELECT webhook_id, status, attempts FROM webhook_deliveries WHERE event_id = $1",
            uuid.UUID(event_id),
        )
    assert sorted(r["webhook_id"] for r in queued) == sorted([every["webhook_id"], spikes["webhook_id"]])
    assert {(r["status"], r["attempts"]) for r in queued} == {("pending", 0)}

    d = dispatcher(world)
    try:
        await drain(d, world, every["webhook_id"], {"delivered"})
        await drain(d, world, spikes["webhook_id"], {"delivered"})
        assert await d.deliver_due() == 0
    finally:
        await d.aclose()
    for hook, path in ((every, "/every"), (spikes, "/spikes")):
        [request] = receiver.at(path)
        expected = "sha256=" + hmac.new(hook["secret"].encode(), request.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["x-runledger-signature"], expected)
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-runledger-event-id"] == event_id
        assert abs(int(request.headers["x-runledger-timestamp"]) - time.time()) < 60
        body = orjson.loads(request.body)
        assert body["event_id"] == event_id and body["webhook_id"] == hook["webhook_id"]
        assert body["tenant_id"] == A and body["run_id"] == RUN and body["experiment_id"] == EXP
        assert body["kind"] == "spike" and body["severity"] == 0.9 and body["attempt"] == 1
        assert body["message"] == "spike in loss at step 42" and body["body"]["step"] == 42
        assert isinstance(body["occurred_at"], int) and body["occurred_at"] > 1_600_000_000_000
        [row] = await deliveries_of(world, hook["webhook_id"])
        assert row["event_id"] == event_id and row["attempts"] == 1 and row["last_status_code"] == 200
        assert row["delivered_at"] is not None and row["next_attempt_at"] is None
    assert receiver.at("/divergence") == [] and receiver.at("/disabled") == []
    assert receiver.at("/tenant-b") == []
    assert await deliveries_of(world, other_kind["webhook_id"]) == []
    assert await deliveries_of(world, disabled["webhook_id"]) == []
    for hook in (every, spikes, other_kind, disabled):
        await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)
    await world.client.delete(
        f"/api/v1/webhooks/{other_tenant['webhook_id']}", headers=world.other_admin.headers
    )


async def test_5xx_is_retried_until_delivered(world: World, receiver: Receiver) -> None:
    hook = await create_hook(world, f"{receiver.base_url}/flaky")
    receiver.script["/flaky"] = [(503, {}), (503, {"Retry-After": "0"})]
    event_id = await project(world, finding_event("divergence"))
    d = dispatcher(world)
    try:
        await drain(d, world, hook["webhook_id"], {"delivered"})
    finally:
        await d.aclose()
    [row] = await deliveries_of(world, hook["webhook_id"])
    assert row["event_id"] == event_id and row["attempts"] == 3 and row["last_status_code"] == 200
    sent = receiver.at("/flaky")
    assert [orjson.loads(r.body)["attempt"] for r in sent] == [1, 2, 3]
    assert {r.headers["x-runledger-event-id"] for r in sent} == {event_id}
    await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_4xx_fails_without_retry(world: World, receiver: Receiver) -> None:
    hook = await create_hook(world, f"{receiver.base_url}/refuses")
    receiver.script["/refuses"] = [(400, {})] * 5
    await project(world, finding_event("spike"))
    d = dispatcher(world)
    try:
        await drain(d, world, hook["webhook_id"], {"failed"})
        for _ in range(3):
            await d.deliver_due()
    finally:
        await d.aclose()
    [row] = await deliveries_of(world, hook["webhook_id"])
    assert row["status"] == "failed" and row["attempts"] == 1 and row["last_status_code"] == 400
    assert "HTTP 400" in row["last_error"]
    assert len(receiver.at("/refuses")) == 1
    failed = await world.client.get(
        f"/api/v1/webhooks/{hook['webhook_id']}/deliveries?status=failed", headers=world.admin.headers
    )
    assert len(failed.json()["deliveries"]) == 1
    await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_gives_up_after_max_attempts_and_records_connection_errors(
    world: World, receiver: Receiver
) -> None:
    down = await create_hook(world, f"{receiver.base_url}/down")
    receiver.script["/down"] = [(500, {})] * 10
    # A port nobody listens on: connection refused, retried like a 5xx.
    closed = await create_hook(world, "http://127.0.0.1:9/closed")
    await project(world, finding_event("spike"))
    d = dispatcher(world, max_attempts=3)
    try:
        await drain(d, world, down["webhook_id"], {"failed"})
        await drain(d, world, closed["webhook_id"], {"failed"})
    finally:
        await d.aclose()
    [row] = await deliveries_of(world, down["webhook_id"])
    assert row["attempts"] == 3 and row["last_status_code"] == 500 and "gave up" in row["last_error"]
    assert len(receiver.at("/down")) == 3
    [row] = await deliveries_of(world, closed["webhook_id"])
    assert row["attempts"] == 3 and row["last_status_code"] is None and "Connect" in row["last_error"]
    for hook in (down, closed):
        await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_the_run_loop_delivers_and_deleted_webhooks_get_nothing(
    world: World, receiver: Receiver
) -> None:
    kept = await create_hook(world, f"{receiver.base_url}/loop")
    dropped = await create_hook(world, f"{receiver.base_url}/dropped")
    event_id = await project(world, finding_event("lint.metric_myopia"))
    r = await world.client.delete(f"/api/v1/webhooks/{dropped['webhook_id']}", headers=world.admin.headers)
    assert r.status_code == 200
    async with world.pool.acquire() as conn:
        left = await conn.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1", dropped["webhook_id"]
        )
    assert left == 0
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(world, poll_interval_s=0.05).run(stop))
    try:
        for _ in range(200):
            if receiver.at("/loop"):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    [request] = receiver.at("/loop")
    assert orjson.loads(request.body)["event_id"] == event_id
    assert receiver.at("/dropped") == []
    [row] = await deliveries_of(world, kept["webhook_id"])
    assert row["status"] == "delivered"
    await world.client.delete(f"/api/v1/webhooks/{kept['webhook_id']}", headers=world.admin.headers)


async def test_findings_older_than_the_webhook_are_not_sent(world: World, receiver: Receiver) -> None:
    """A replay re-inserts every finding: a webhook made later must not get that backlog."""
    hook = await create_hook(world, f"{receiver.base_url}/late")
    await project(world, finding_event("spike", occurred_at=datetime.now(UTC) - timedelta(hours=1)))
    assert await deliveries_of(world, hook["webhook_id"]) == []
    await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_deliveries_are_paged_newest_first(world: World, receiver: Receiver) -> None:
    hook = await create_hook(world, f"{receiver.base_url}/paged")
    ids = [await project(world, finding_event("spike")) for _ in range(5)]
    seen: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"page_size": 2} | ({"page_token": token} if token else {})
        r = await world.client.get(
            f"/api/v1/webhooks/{hook['webhook_id']}/deliveries", params=params, headers=world.admin.headers
        )
        assert r.status_code == 200, r.text
        seen += [d["event_id"] for d in r.json()["deliveries"]]
        token = r.json()["next_page_token"]
        if token is None:
            break
    assert seen == ids[::-1]
    await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


async def test_a_slow_receiver_times_out_and_is_retried(world: World, receiver: Receiver) -> None:
    hook = await create_hook(world, f"{receiver.base_url}/slow")
    receiver.script["/slow"] = [(200, {"delay": "1.5"})]
    await project(world, finding_event("spike"))
    d = dispatcher(world, http_timeout_s=0.3, max_attempts=2)
    try:
        await drain(d, world, hook["webhook_id"], {"delivered", "failed"})
    finally:
        await d.aclose()
    [row] = await deliveries_of(world, hook["webhook_id"])
    # Attempt 1 timed out (recorded, then retried), attempt 2 got through (last_error cleared).
    assert row["status"] == "delivered" and row["attempts"] == 2 and row["last_error"] is None
    assert len(receiver.at("/slow")) == 2
    await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=world.admin.headers)


# --- destinations (SSRF) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def strict_client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """The API of a deployment with the default destination policy (nothing non-public allowed)."""
    settings = Settings(postgres_dsn=world.dsn, default_tenant=A, write_wait_timeout_s=0.2)
    assert settings.webhook_allowed_networks == [] and not settings.webhook_allow_private_networks
    app = create_app(settings, NoClickHouse(), publisher=RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        await wait_until_known(client, world.admin)
        yield client


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8123/", "127.0.0.1 is a loopback address"),  # ClickHouse's HTTP port
        ("http://169.254.169.254/latest", "169.254.169.254 is a link-local address"),  # cloud metadata
        ("http://[::ffff:10.0.0.5]/hook", "::ffff:a00:5 (10.0.0.5) is a private address"),
        ("http://127.1:8765/api/v1/keys", "resolves to 127.0.0.1"),  # a numeric form resolved, not parsed
        ("http://localhost:8123/", "localhost resolves to"),
        ("http://user:pw@example.com/", "credentials"),
        ("ftp://example.com/hook", "http:// or https://"),
    ],
)
async def test_registration_refuses_forbidden_destinations(
    world: World, strict_client: httpx.AsyncClient, url: str, reason: str
) -> None:
    r = await strict_client.post("/api/v1/webhooks", json={"url": url}, headers=world.admin.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE" and reason in r.json()["message"]
    if "address" in reason or "resolves" in reason:
        assert "RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS" in r.json()["message"]


async def test_an_update_to_a_forbidden_destination_is_refused(
    world: World, strict_client: httpx.AsyncClient
) -> None:
    h = world.admin.headers
    # example.com does not resolve in every test environment: accepted either way (delivery judges it).
    created = await strict_client.post(
        "/api/v1/webhooks", json={"url": "https://example.com/hook"}, headers=h
    )
    assert created.status_code == 201, created.text
    hook_id = created.json()["webhook_id"]
    r = await strict_client.patch(f"/api/v1/webhooks/{hook_id}", json={"url": "http://10.0.0.5/"}, headers=h)
    assert r.status_code == 400 and "10.0.0.5 is a private address" in r.json()["message"], r.text
    got = await strict_client.get(f"/api/v1/webhooks/{hook_id}", headers=h)
    assert got.json()["url"] == "https://example.com/hook"
    await strict_client.delete(f"/api/v1/webhooks/{hook_id}", headers=h)


async def test_delivery_refuses_a_name_resolving_to_loopback_unless_allowed(
    world: World, receiver: Receiver
) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    h = world.admin.headers
    refused = await create_hook(world, f"http://localhost:{port}/refused")
    # A row the API would refuse now (registered before the policy, or by SQL): judged at delivery too.
    legacy = await create_hook(world, f"{receiver.base_url}/legacy")
    async with world.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhooks SET url = 'http://169.254.169.254/latest' WHERE tenant_id = $1 AND webhook_id = $2",
            A,
            legacy["webhook_id"],
        )
    await project(world, finding_event("spike"))
    strict = dispatcher(world, policy=DestinationPolicy())
    try:
        await drain(strict, world, refused["webhook_id"], {"failed"})
        await drain(strict, world, legacy["webhook_id"], {"failed"})
    finally:
        await strict.aclose()
    [row] = await deliveries_of(world, refused["webhook_id"])
    # Failed at the first attempt (not retried: the answer would not change), nothing sent.
    assert row["attempts"] == 1 and row["last_status_code"] is None
    assert "localhost resolves to" in row["last_error"] and "is a loopback address" in row["last_error"]
    [row] = await deliveries_of(world, legacy["webhook_id"])
    assert row["attempts"] == 1 and "169.254.169.254 is a link-local address" in row["last_error"]
    assert receiver.at("/refused") == [] and receiver.at("/legacy") == []
    for hook in (refused, legacy):
        await world.client.delete(f"/api/v1/webhooks/{hook['webhook_id']}", headers=h)

    # The same name, where the operator allows private networks (e.g. a single-user machine).
    allowed = await create_hook(world, f"http://localhost:{port}/allowed")
    await project(world, finding_event("spike"))
    lax = dispatcher(world, policy=DestinationPolicy(allow_private_networks=True))
    try:
        await drain(lax, world, allowed["webhook_id"], {"delivered"})
    finally:
        await lax.aclose()
    assert len(receiver.at("/allowed")) == 1
    await world.client.delete(f"/api/v1/webhooks/{allowed['webhook_id']}", headers=h)
