"""Prometheus metrics without services: the API middleware's labels, /metrics, the projector's
batch metrics, dead letters, and the ingest role's /healthz."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.testclient import TestClient
from kafka import TopicPartition
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from runledger.config import Settings
from runledger.events.codec import decode, encode, envelope_dict, metric_columns, producer
from runledger.events.models import EventType, utc_now
from runledger.stores.clickhouse import ClickHouse
from services.api.app import create_app
from services.api.instrumentation import UNMATCHED, RequestMetrics
from services.ingest import app as ingest_app
from services.ingest.batch_writer import PreparedBatch, PreparedRound
from services.ingest.checkpoints import PartitionKey
from services.ingest.dead_letters import DeadLetters
from services.ingest.partition_buffer import PartitionBuffer
from services.ingest.projection import ArchivedEvent, build_projection
from services.ingest.projector import _observe
from services.observability import CONTENT_TYPE, metrics_routes, scrape_refusal

REQUESTS = "runledger_api_request_seconds_count"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


SCRAPE_TOKEN = "scrape-" + uuid.uuid4().hex
SCRAPE_HEADERS = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}


def _requests(method: str, route: str, status: int) -> float:
    return _sample(REQUESTS, method=method, route=route, status=str(status))


# --- the API middleware ------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy() -> Iterator[TestClient]:
    """An app shaped like the API: a prefixed router with path parameters (one `:path`)."""
    router = APIRouter(prefix="/things")

    @router.get("/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @router.get("/{thing_id}/series/{key:path}/history")
    async def history(thing_id: str, key: str) -> dict[str, str]:
        return {"key": key}

    @router.get("/{thing_id}/teapot")
    async def teapot(thing_id: str) -> dict[str, str]:
        raise HTTPException(418)

    @router.get("/{thing_id}/boom")
    async def boom(thing_id: str) -> dict[str, str]:
        raise RuntimeError("boom")

    app = FastAPI()
    app.add_middleware(RequestMetrics)
    app.include_router(router, prefix="/api/v9")
    app.include_router(metrics_routes(SCRAPE_TOKEN))
    with TestClient(app, raise_server_exceptions=False, headers=SCRAPE_HEADERS) as client:
        yield client


def test_route_label_is_the_template_not_the_path(toy: TestClient) -> None:
    thing = uuid.uuid4().hex
    before = _requests("GET", "/api/v9/things/{thing_id}", 200)
    assert toy.get(f"/api/v9/things/{thing}").status_code == 200
    assert toy.get(f"/api/v9/things/{thing}x").status_code == 200
    assert _requests("GET", "/api/v9/things/{thing_id}", 200) == before + 2
    body = toy.get("/metrics").text
    assert thing not in body  # no raw path (or id) in any label


def test_path_parameters_with_slashes_keep_the_template(toy: TestClient) -> None:
    route = "/api/v9/things/{thing_id}/series/{key}/history"
    before = _requests("GET", route, 200)
    # A key that contains the router's own prefix must not confuse the template.
    assert toy.get("/api/v9/things/t1/series/train/things/loss/history").json() == {
        "key": "train/things/loss"
    }
    assert _requests("GET", route, 200) == before + 1


def test_status_label(toy: TestClient) -> None:
    before = {
        status: _requests(method, route, status)
        for method, route, status in [
            ("GET", "/api/v9/things/{thing_id}/teapot", 418),
            ("GET", "/api/v9/things/{thing_id}/boom", 500),
            ("POST", "/api/v9/things/{thing_id}", 405),
            ("GET", UNMATCHED, 404),
        ]
    }
    assert toy.get("/api/v9/things/a/teapot").status_code == 418
    assert toy.get("/api/v9/things/a/boom").status_code == 500  # raised, not answered by the app
    assert toy.post("/api/v9/things/a").status_code == 405
    assert toy.get(f"/no/such/{uuid.uuid4().hex}").status_code == 404
    assert _requests("GET", "/api/v9/things/{thing_id}/teapot", 418) == before[418] + 1
    assert _requests("GET", "/api/v9/things/{thing_id}/boom", 500) == before[500] + 1
    assert _requests("POST", "/api/v9/things/{thing_id}", 405) == before[405] + 1
    assert _requests("GET", UNMATCHED, 404) == before[404] + 1
    assert _sample("runledger_api_requests_in_flight") == 0


def test_unknown_methods_share_one_label(toy: TestClient) -> None:
    before = _requests("other", "/api/v9/things/{thing_id}", 405)
    assert toy.request("BREW", "/api/v9/things/a").status_code == 405
    assert _requests("other", "/api/v9/things/{thing_id}", 405) == before + 1


def test_metrics_scrapes_are_not_counted(toy: TestClient) -> None:
    toy.get("/metrics")
    assert _sample(REQUESTS, method="GET", route="/metrics", status="200") == 0


# --- the real API app, without its services (the lifespan does not run) -------------------------


@pytest.fixture(scope="module")
def api() -> TestClient:
    app = create_app(Settings(metrics_token=SCRAPE_TOKEN), cast(ClickHouse, object()))
    return TestClient(app, raise_server_exceptions=False, headers=SCRAPE_HEADERS)


def test_api_metrics_is_prometheus_text_with_the_request_histogram(api: TestClient) -> None:
    run_id = uuid.uuid4().hex
    assert api.get(f"/api/v1/runs/{run_id}").status_code == 503  # no runtime: the API is "starting"
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    histogram = families["runledger_api_request_seconds"]
    assert histogram.type == "histogram"
    counts = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in histogram.samples
        if s.name.endswith("_count")
    }
    assert counts[("GET", "/api/v1/runs/{run_id}", "503")] >= 1
    assert not any(run_id in route for _, route, _ in counts)
    for name in (
        "runledger_api_requests_in_flight",
        "runledger_points_projected",
        "runledger_write_wait_seconds",
    ):
        assert name in families, name


def test_metrics_is_outside_the_api_and_its_schema(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert "/metrics" not in paths
    assert api.get("/api/v1/metrics").status_code == 404


# --- the projector's batch metrics ----------------------------------------------------------------


def _archived(tenant: str, type_: EventType, offset: int, occurred_at: str | None = None) -> ArchivedEvent:
    payload: Any
    if type_ is EventType.METRICS_LOGGED:
        n = 5
        payload = metric_columns(
            ["loss"],
            np.zeros(n, dtype=np.int32),
            np.linspace(1, 0, n),
            np.arange(n, dtype=np.int64),
            np.full(n, 1_700_000_000_000, dtype=np.int64),
        )
    else:
        payload = {"name": "r", "start_time": 1_700_000_000_000}
    env = envelope_dict(
        tenant_id=tenant,
        type=type_,
        payload=payload,
        producer=producer("test"),
        run_id="r1",
        experiment_id="e1",
    )
    if occurred_at is not None:
        env["occurred_at"] = occurred_at
    return ArchivedEvent(decode(encode(env)), "inc.topic.3", offset)


def test_a_written_batch_feeds_the_projector_metrics() -> None:
    t1, t2 = f"tenant-{uuid.uuid4().hex[:6]}", f"tenant-{uuid.uuid4().hex[:6]}"
    topic = f"events-{uuid.uuid4().hex[:6]}"
    events = [
        _archived(t1, EventType.RUN_STARTED, 10),
        _archived(t1, EventType.METRICS_LOGGED, 11),
        _archived(t2, EventType.METRICS_LOGGED, 12),
        _archived(t2, EventType.METRICS_LOGGED, 13),
    ]
    events.append(_archived(t1, EventType.METRICS_LOGGED, 14, occurred_at="2020-01-01T00:00:00Z"))
    projection = build_projection(events, utc_now())
    buffer = PartitionBuffer(
        key=PartitionKey("g", "inc", topic, 3), tp=TopicPartition(topic, 3), committed=14
    )
    batch = PreparedRound([PreparedBatch(buffer, 14, events)], projection)
    started_before = _sample("runledger_events_projected_total", type="run.started")
    metrics_before = _sample("runledger_events_projected_total", type="run.metrics_logged")
    batches_before = _sample("runledger_projector_batch_seconds_count")

    _observe(batch, projection, 0.042)

    assert _sample("runledger_points_projected_total", tenant=t1) == 10
    assert _sample("runledger_points_projected_total", tenant=t2) == 10
    assert _sample("runledger_events_projected_total", type="run.started") == started_before + 1
    assert _sample("runledger_events_projected_total", type="run.metrics_logged") == metrics_before + 4
    assert _sample("runledger_projector_batch_seconds_count") == batches_before + 1
    assert _sample("runledger_projector_batch_points_bucket", le="100.0") >= 1
    assert _sample("runledger_projector_committed_offset", topic=topic, partition="3") == 14
    # Lag is measured to the newest event, not to the old one at the end of the batch.
    lag = _sample("runledger_ingest_lag_seconds", topic=topic, partition="3")
    assert 0 <= lag < 60


class _Producer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, **kwargs})


def test_dead_letters_are_counted_by_reason_class() -> None:
    before = _sample("runledger_dead_letters_total", reason="bad envelope")
    producer_ = _Producer()
    dead = DeadLetters(producer_, "dlq")
    dead.reject(b"{}", "bad envelope: type: field required", "inc.topic.0", 7, None)
    dead.reject(b"{}", "bad envelope: tenant_id: too long", "inc.topic.0", 8, None)
    assert _sample("runledger_dead_letters_total", reason="bad envelope") == before + 2
    assert len(producer_.sent) == 2


# --- the ingest role's app ------------------------------------------------------------------------


class _Projector:
    def __init__(self, alive: bool, age: float | None) -> None:
        self.alive, self.age = alive, age

    def is_alive(self) -> bool:
        return self.alive

    def heartbeat_age(self) -> float | None:
        return self.age


@pytest.mark.parametrize(
    ("alive", "age", "status", "state"),
    [
        (True, 0.2, 200, "ok"),
        (True, ingest_app.HEARTBEAT_STALE_S + 1, 503, "stalled"),
        (True, None, 503, "starting"),
        (False, 0.2, 503, "stopped"),
    ],
)
def test_ingest_healthz(alive: bool, age: float | None, status: int, state: str) -> None:
    client = TestClient(ingest_app.create_app(_Projector(alive, age)))
    response = client.get("/healthz")
    assert response.status_code == status
    assert response.json()["status"] == state


def test_ingest_serves_metrics_and_no_docs() -> None:
    client = TestClient(ingest_app.create_app(_Projector(True, 0.0), SCRAPE_TOKEN), headers=SCRAPE_HEADERS)
    response = client.get("/metrics")
    assert response.status_code == 200 and "runledger_points_projected_total" in response.text
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/docs").status_code == 404


def test_heartbeat_age_of_a_service_thread() -> None:
    from runledger.serve import ProjectorThread

    thread = ProjectorThread(Settings(), cast(ClickHouse, object()))
    try:
        assert thread.heartbeat_age() is None  # no projector yet
        thread.service = type("P", (), {"heartbeat": 0.0})()
        assert thread.heartbeat_age() is None  # its loop has not turned yet
        thread.service = type("P", (), {"heartbeat": time.monotonic() - 5})()
        age = thread.heartbeat_age()
        assert age is not None and 5 <= age < 10
    finally:
        thread._loop.close()


# --- who may scrape: /metrics names tenants, so it is not public ------------------------------


@pytest.mark.parametrize(
    ("authorization", "client", "token", "status"),
    [
        (None, "127.0.0.1", "", None),  # embedded: loopback reads without a token
        (None, "::1", "", None),
        ("Bearer anything", "10.1.2.3", "", 403),  # another machine, and no token configured
        (None, "testclient", "", 403),  # not an address on this machine
        (None, None, "", 403),
        (None, "127.0.0.1", "s3cret", 401),  # a token is configured: loopback needs it too
        ("Bearer wrong", "10.1.2.3", "s3cret", 401),
        ("Basic s3cret", "10.1.2.3", "s3cret", 401),
        ("Bearer s3cret", "10.1.2.3", "s3cret", None),
        ("bearer s3cret", "10.1.2.3", "s3cret", None),
    ],
)
def test_scrape_refusal(
    authorization: str | None, client: str | None, token: str, status: int | None
) -> None:
    refusal = scrape_refusal(authorization, client, token)
    assert (refusal[0] if refusal else None) == status
    if refusal is not None:
        assert "RUNLEDGER_METRICS_TOKEN" in refusal[1]


def test_metrics_without_the_token_is_refused_and_names_no_tenant() -> None:
    guarded = TestClient(ingest_app.create_app(_Projector(True, 0.0), SCRAPE_TOKEN))
    response = guarded.get("/metrics")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "runledger_" not in response.text
    unguarded = TestClient(ingest_app.create_app(_Projector(True, 0.0)))  # no token, not loopback
    assert unguarded.get("/metrics").status_code == 403


def test_garbage_collections_are_timed_by_generation() -> None:
    import gc

    from services.observability import GC_PAUSE_SECONDS, watch_gc

    def collections() -> float:
        return next(
            s.value
            for metric in GC_PAUSE_SECONDS.collect()
            for s in metric.samples
            if s.name.endswith("_count") and s.labels["generation"] == "2"
        )

    watch_gc()
    watch_gc()  # idempotent: one callback, one observation per collection
    GC_PAUSE_SECONDS.labels("2")  # the series exists before the first collection
    before = collections()
    gc.collect(2)
    assert collections() == before + 1
