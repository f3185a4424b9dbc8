"""Error shapes and validation of the API, through FastAPI's TestClient, without services.

The runtime holds fakes: nothing here reaches Postgres, ClickHouse or Kafka.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import pyarrow as pa
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from runledger.config import Settings
from runledger.events.codec import encode, envelope_dict, producer
from runledger.events.models import EventType
from runledger.stores.clickhouse import ClickHouse
from services.api.app import create_app
from services.api.consistency import ConsistencyToken, ProjectionWaiter
from services.api.deps import Runtime
from services.api.publisher import OutgoingEvent, PublishResult
from services.api.writes import EventWriter
from services.ingest.checkpoints import PartitionKey, notification

TENANT = "unit-tenant"


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
        settings=settings, clickhouse=NoClickHouse(), pool=cast(Any, None), writer=writer
    )
    return app


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def client(publisher: RecordingPublisher) -> Iterator[TestClient]:
    # Not entered as a context manager: the lifespan (real connections) never runs.
    yield TestClient(_app(publisher), raise_server_exceptions=False)


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
    # Produced unchanged (same event ids), keyed by run for per-run ordering.
    assert [e.event_id for e in publisher.events] == [e["event_id"] for e in events]
    assert [e.key for e in publisher.events] == [b"r1", b"r2"]
    assert encode(events[0]) == publisher.events[0].value


def test_events_projected_answer_200(publisher: RecordingPublisher) -> None:
    app = _app(publisher, timeout_s=5)
    publisher.waiter = app.state.runtime.writer.waiter
    r = TestClient(app).post("/api/v1/events", json=[_event()])
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["projected"] is True


def test_empty_event_batch_is_accepted(client: TestClient) -> None:
    r = client.post("/api/v1/events", json=[])
    assert r.status_code == 200 and r.json()["accepted"] == 0
