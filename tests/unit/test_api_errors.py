"""Error shapes and validation of the API, through FastAPI's TestClient, without services.

The runtime holds fakes: nothing here reaches Postgres, ClickHouse or Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any, cast

import orjson
import pyarrow as pa
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runledger.auth import signing
from runledger.auth.keys import ApiKey, generate_key
from runledger.auth.model import AuthSnapshot, Grant, KeyRecord, Role, TenantStatus
from runledger.auth.sealing import SecretBox
from runledger.auth.watcher import AuthWatcher
from runledger.config import Settings
from runledger.events.codec import envelope_dict, producer
from runledger.events.models import EventType
from runledger.stores.clickhouse import ClickHouse
from services.api.app import create_app
from services.api.audit import AuditSink
from services.api.consistency import ConsistencyToken, ProjectionWaiter
from services.api.deps import Runtime
from services.api.publisher import OutgoingEvent, PublishResult
from services.api.writes import EventWriter
from services.ingest.checkpoints import PartitionKey, notification

TENANT = "unit-tenant"
KEY = generate_key()
VIEWER_KEY = generate_key()


def snapshot(*keys: tuple[ApiKey, Role]) -> AuthSnapshot:
    """A control plane holding these keys, each of its own principal of TENANT with the role."""
    records = {
        k.key_id: KeyRecord(k.key_id, TENANT, f"p-{k.key_id}", k.secret_hash, k.signing_key) for k, _ in keys
    }
    grants = tuple(Grant(TENANT, f"p-{k.key_id}", role) for k, role in keys)
    return AuthSnapshot(generation=1, tenants={TENANT: TenantStatus.ACTIVE}, keys=records, grants=grants)


def static_auth(snap: AuthSnapshot) -> AuthWatcher:
    """A watcher over a fixed snapshot (never polled)."""

    async def load() -> AuthSnapshot:
        return snap

    async def generation() -> int:
        return snap.generation

    watcher = AuthWatcher(load, generation)
    asyncio.run(watcher.refresh())
    return watcher


class NoRows:
    """A pool whose lookups find nothing (no run or experiment exists yet)."""

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return []


class NoClickHouse(ClickHouse):
    """Fails loudly if a test reaches ClickHouse."""

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise AssertionError("ClickHouse must not be reached")

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None) -> None:
        raise AssertionError("ClickHouse must not be reached")

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        raise AssertionError("ClickHouse must not be reached")

    def close(self) -> None:
        pass


class RecordingPublisher:
    """An in-memory log; optionally tells the waiter the projector caught up at once."""

    topic = "events"
    incarnation = "unit"

    def __init__(self) -> None:
        self.events: list[OutgoingEvent] = []
        self.waiter: ProjectionWaiter | None = None

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
        positions = []
        for event in events:
            self.events.append(event)
            positions.append((len(event.key) % 4, len(self.events) - 1))
        if self.waiter is not None:
            for partition, offset in positions:
                self.waiter._on_notify(
                    None, 0, "", notification(PartitionKey("g", "unit", "events", partition), offset)
                )
        return PublishResult(self.incarnation, self.topic, tuple(positions))

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def _app(publisher: RecordingPublisher, timeout_s: float = 0.05) -> FastAPI:
    settings = Settings(default_tenant=TENANT, postgres_dsn="postgresql://unused")
    app = create_app(settings, NoClickHouse(), publisher=publisher)
    waiter = ProjectionWaiter("postgresql://unused", cast(Any, None), "g")
    writer = EventWriter(publisher, waiter, timeout_s)
    app.state.runtime = Runtime(
        settings=settings,
        clickhouse=NoClickHouse(),
        pool=cast(Any, NoRows()),
        writer=writer,
        auth=static_auth(snapshot((KEY, Role.ENGINEER), (VIEWER_KEY, Role.VIEWER))),
        audit=AuditSink(cast(Any, None)),  # never started: denials queue in memory
        secrets=SecretBox([Fernet.generate_key()]),
    )
    return app


def _headers(key: ApiKey = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def client(publisher: RecordingPublisher) -> Iterator[TestClient]:
    # Not entered as a context manager: the lifespan (real connections) never runs.
    yield TestClient(_app(publisher), raise_server_exceptions=False, headers=_headers())


def _event(tenant: str = TENANT, **overrides: Any) -> dict[str, Any]:
    env = envelope_dict(
        tenant_id=tenant,
        type=EventType.PARAMS_LOGGED,
        run_id="r1",
        experiment_id="e1",
        producer=producer("test"),
        payload={"params": {"lr": "0.1"}},
    )
    env.update(overrides)
    return env


def test_unknown_route_is_json_endpoint_not_found(client: TestClient) -> None:
    r = client.get("/api/v1/nope")
    assert r.status_code == 404
    assert r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert "/api/v1/nope" in r.json()["message"]


def test_wrong_method_keeps_405_with_the_same_code(client: TestClient) -> None:
    r = client.put("/api/v1/experiments")
    assert r.status_code == 405
    assert r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert r.headers["allow"] == "GET, POST"  # every method of the path (RFC 9110), not the first route's


@pytest.mark.parametrize(
    ("method", "url", "body", "fragment"),
    [
        ("get", "/api/v1/experiments?page_size=5000", None, "page_size"),
        ("get", "/api/v1/runs?lifecycle_stage=gone", None, "lifecycle_stage"),
        ("get", "/api/v1/runs/r1/metrics/loss/history?max_points=1", None, "max_points"),
        ("get", "/api/v1/runs/r1/metrics/loss/history?method=fancy", None, "method"),
        ("get", "/api/v1/runs/r1/metrics/loss/history?start_step=x", None, "start_step"),
        ("post", "/api/v1/experiments", {"name": ""}, "name"),
        ("post", "/api/v1/experiments", {"name": "x", "bogus": 1}, "bogus"),
        ("post", "/api/v1/runs", {"experiment_id": "1", "experiment_name": "x"}, "not both"),
        ("post", "/api/v1/runs/r1/params", {"params": {"../x": "1"}}, "relative path"),
        ("post", "/api/v1/runs/r1/params", {"params": {}}, "params"),
        ("post", "/api/v1/runs/r1/metrics", {"metrics": [{"key": "a", "value": "high"}]}, "value"),
        ("post", "/api/v1/runs/r1/metrics", {"metrics": [{"key": "a", "value": 1, "step": 2**64}]}, "step"),
        ("post", "/api/v1/runs/r1/status", {"status": "DONE"}, "status"),
    ],
)
def test_bad_input_is_400_invalid_parameter_value(
    client: TestClient, method: str, url: str, body: Any, fragment: str
) -> None:
    r = client.request(method.upper(), url, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert fragment in r.json()["message"]


def test_malformed_json_body_is_400(client: TestClient) -> None:
    r = client.post("/api/v1/experiments", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_bad_consistency_token_is_400(client: TestClient) -> None:
    r = client.get("/api/v1/experiments?consistency_token=garbage")
    assert r.status_code == 400
    assert r.json()["message"] == "invalid consistency_token"


def test_not_started_app_answers_503_json() -> None:
    app = create_app(Settings(postgres_dsn="postgresql://unused"), NoClickHouse())
    r = TestClient(app, raise_server_exceptions=False).get("/api/v1/experiments")
    assert r.status_code == 503
    assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert TestClient(app).get("/healthz").status_code == 503


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/runs/{run_id}/metrics/{key}/history" in spec["paths"]
    assert not [p for p, ops in spec["paths"].items() for op in ops.values() if "422" in op["responses"]]
    assert client.get("/docs").status_code == 200


# --- POST /events ---------------------------------------------------------------------------


def test_events_all_or_nothing_with_reasons_per_index(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    bad_payload = _event(payload={"params": {"../x": "1"}})
    no_tenant = {k: v for k, v in _event().items() if k != "tenant_id"}
    r = client.post("/api/v1/events", json=[_event(), bad_payload, no_tenant, "nope"])
    assert r.status_code == 400
    body = r.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert [d["index"] for d in body["details"]] == [1, 2, 3]
    assert "relative path" in body["details"][0]["reason"]
    assert "tenant_id" in body["details"][1]["reason"]
    assert publisher.events == []  # nothing produced


def test_events_of_another_tenant_are_403(client: TestClient, publisher: RecordingPublisher) -> None:
    r = client.post("/api/v1/events", json=[_event(), _event(tenant="intruder")])
    assert r.status_code == 403
    assert r.json()["error_code"] == "PERMISSION_DENIED"
    assert r.json()["details"][0]["index"] == 1
    assert publisher.events == []


def test_events_body_must_be_an_array(client: TestClient) -> None:
    assert client.post("/api/v1/events", json={"a": 1}).status_code == 400
    assert (
        client.post("/api/v1/events", content=b"[", headers={"content-type": "application/json"}).status_code
        == 400
    )


def test_events_pending_projection_answers_202_with_a_token(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    events = [_event(), _event(run_id="r2")]
    r = client.post("/api/v1/events", json=events)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["projected"] is False
    token = ConsistencyToken.decode(body["consistency_token"])
    assert token.incarnation == "unit" and token.topic == "events"
    # Produced with the same event ids, keyed by run for per-run ordering, re-signed by the caller.
    assert [e.event_id for e in publisher.events] == [e["event_id"] for e in events]
    assert [e.key for e in publisher.events] == [b"r1", b"r2"]
    produced = orjson.loads(publisher.events[0].value)
    assert produced["key_id"] == KEY.key_id and signing.verify(produced, KEY.signing_key)
    assert {**events[0], "key_id": None, "signature": None} == {**produced, "key_id": None, "signature": None}


def test_events_projected_answer_200(publisher: RecordingPublisher) -> None:
    app = _app(publisher, timeout_s=5)
    publisher.waiter = app.state.runtime.writer.waiter
    r = TestClient(app, headers=_headers()).post("/api/v1/events", json=[_event()])
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["projected"] is True


def test_empty_event_batch_is_accepted(client: TestClient) -> None:
    r = client.post("/api/v1/events", json=[])
    assert r.status_code == 200 and r.json()["accepted"] == 0


def test_events_signed_by_another_key_are_re_signed_by_the_caller(
    client: TestClient, publisher: RecordingPublisher
) -> None:
    forged = signing.sign(_event(), "0" * 16, b"not the caller's key")
    r = client.post("/api/v1/events", json=[forged])
    assert r.status_code == 202, r.text
    produced = orjson.loads(publisher.events[0].value)
    assert produced["key_id"] == KEY.key_id and signing.verify(produced, KEY.signing_key)


# --- authentication and role checks before anything else ------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer rlk_nope"}, {"Authorization": f"Bearer {generate_key().token}"}],
)
@pytest.mark.parametrize("url", ["/api/v1/experiments", "/api/v1/events", "/api/v1/runs/r1/metrics"])
def test_no_or_bad_key_is_401_even_with_a_malformed_body(
    publisher: RecordingPublisher, headers: dict[str, str], url: str
) -> None:
    client = TestClient(_app(publisher), raise_server_exceptions=False)
    r = client.post(url, content=b"{not json", headers={"content-type": "application/json", **headers})
    assert r.status_code == 401, r.text
    assert r.json()["error_code"] == "UNAUTHENTICATED" and "www-authenticate" in r.headers
    assert publisher.events == []


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("post", "/api/v1/experiments", {"name": ""}),
        ("patch", "/api/v1/experiments/e1", {"bogus": 1}),
        ("post", "/api/v1/runs", {"experiment_id": "1", "experiment_name": "x"}),
        ("post", "/api/v1/runs/r1/metrics", {"metrics": [{"key": "a", "value": "high"}]}),
        ("delete", "/api/v1/runs/r1", None),
        ("post", "/api/v1/events", [{"not": "an event"}]),
    ],
)
def test_a_viewer_on_a_write_route_is_403_before_the_body_is_validated(
    publisher: RecordingPublisher, method: str, url: str, body: Any
) -> None:
    app = _app(publisher)
    client = TestClient(app, raise_server_exceptions=False, headers=_headers(VIEWER_KEY))
    r = client.request(method.upper(), url, json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error_code"] == "PERMISSION_DENIED"
    assert publisher.events == []
    audit: AuditSink = app.state.runtime.audit
    assert [e.outcome for e in audit._queue] == ["denied"]  # audited once


def test_events_the_caller_may_not_write_are_403(publisher: RecordingPublisher) -> None:
    narrowed = generate_key()
    snap = snapshot((narrowed, Role.ENGINEER))
    snap = AuthSnapshot(
        generation=1,
        tenants=snap.tenants,
        keys=snap.keys,
        grants=(Grant(TENANT, f"p-{narrowed.key_id}", Role.ENGINEER, "e1"),),
    )
    app = _app(publisher)
    app.state.runtime = Runtime(
        settings=app.state.runtime.settings,
        clickhouse=NoClickHouse(),
        pool=cast(Any, NoRows()),
        writer=app.state.runtime.writer,
        auth=static_auth(snap),
        audit=AuditSink(cast(Any, None)),
        secrets=app.state.runtime.secrets,
    )
    client = TestClient(app, raise_server_exceptions=False, headers=_headers(narrowed))
    ok = client.post("/api/v1/events", json=[_event()])  # experiment e1
    assert ok.status_code == 202, ok.text
    r = client.post("/api/v1/events", json=[_event(), _event(experiment_id="e2")])
    assert r.status_code == 403
    assert [d["index"] for d in r.json()["details"]] == [1]
    assert "e2" in r.json()["details"][0]["reason"]
    assert len(publisher.events) == 1
