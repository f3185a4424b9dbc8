"""API writes end to end: the real broker, the real projector (in a thread, as `serve all`
runs it), Postgres and chdb. Every write must be visible to the very next read."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from runledger.auth.keys import generate_key
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import (
    encode,
    envelope_dict,
    experiment_id_for,
    metric_columns,
    new_run_id,
    producer,
)
from runledger.events.models import EventType
from runledger.serve import ProjectorThread
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.app import create_app
from tests.support.inprocess import chdb_store, migrated_database, module_settings

pytestmark = pytest.mark.integration

T = "api-writes"


@pytest.fixture(scope="module")
def settings(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return module_settings(broker, tmp_path_factory.mktemp("api-writes"), T)


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres)


@pytest.fixture(scope="module")
def clickhouse(settings: Settings) -> Iterator[ChdbClickHouse]:
    yield from chdb_store(settings)


@pytest.fixture(scope="module")
async def client(
    settings: Settings, dsn: str, clickhouse: ChdbClickHouse
) -> AsyncIterator[httpx.AsyncClient]:
    key = generate_key()  # provisioned by the lifespan as admin of T
    live = settings.model_copy(update={"postgres_dsn": dsn, "bootstrap_api_key": key.token})
    projector = ProjectorThread(live, clickhouse)
    projector.start()
    app = create_app(live, clickhouse)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key.token}"}
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60, headers=headers) as c,
        ):
            yield c
    finally:
        projector.stop()


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    if isinstance(body, dict) and "projected" in body:
        assert body["projected"] is True
    return body


async def test_healthz(client: httpx.AsyncClient) -> None:
    body = await _ok(await client.get("/healthz"))
    assert body == {"status": "ok", "checks": {"postgres": True, "clickhouse": True, "kafka": True}}


async def test_experiment_lifecycle_reads_its_writes(client: httpx.AsyncClient) -> None:
    created = await _ok(
        await client.post("/api/v1/experiments", json={"name": "vision", "tags": {"team": "cv"}}), 201
    )
    exp_id = created["experiment_id"]
    assert exp_id == experiment_id_for(T, "vision")
    assert created["experiment"]["name"] == "vision" and created["experiment"]["tags"] == {"team": "cv"}
    again = await client.post("/api/v1/experiments", json={"name": "vision"})
    assert again.status_code == 400 and again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"

    renamed = await _ok(await client.patch(f"/api/v1/experiments/{exp_id}", json={"name": "vision-2"}))
    assert renamed["experiment"]["name"] == "vision-2"
    # The old name's id is held by the renamed experiment: refused up front (ADR 0005).
    reuse = await client.post("/api/v1/experiments", json={"name": "vision"})
    assert reuse.status_code == 400 and "cannot be reused" in reuse.json()["message"]

    deleted = await _ok(await client.delete(f"/api/v1/experiments/{exp_id}"))
    assert deleted["experiment"]["lifecycle_stage"] == "deleted"
    listed = await _ok(await client.get("/api/v1/experiments", params={"name": "vision"}))
    assert listed["experiments"] == []


async def test_run_lifecycle_reads_its_writes(client: httpx.AsyncClient) -> None:
    created = await _ok(
        await client.post(
            "/api/v1/runs",
            json={"experiment_name": "nlp", "tags": {"stage": "dev"}, "start_time": 1_700_000_000_000},
        ),
        201,
    )
    run_id = created["run_id"]
    info = created["run"]["info"]
    assert info["experiment_id"] == experiment_id_for(T, "nlp") and info["status"] == "RUNNING"
    assert info["name"] and created["run"]["tags"] == {"stage": "dev"}
    assert (await _ok(await client.get(f"/api/v1/experiments/{info['experiment_id']}")))["name"] == "nlp"

    child = await _ok(await client.post("/api/v1/runs", json={"parent_run_id": run_id, "name": "child"}), 201)
    assert child["run"]["info"]["parent_run_id"] == run_id and child["run"]["info"]["experiment_id"] == "0"

    await _ok(
        await client.post(f"/api/v1/runs/{run_id}/params", json={"params": {"lr": "0.1", "opt": "adam"}})
    )
    await _ok(
        await client.post(f"/api/v1/runs/{run_id}/params", json={"params": {"lr": "0.1"}})
    )  # same value: fine
    changed = await client.post(f"/api/v1/runs/{run_id}/params", json={"params": {"lr": "0.2"}})
    assert changed.status_code == 400

    await _ok(await client.post(f"/api/v1/runs/{run_id}/tags", json={"tags": {"a/b": "1", "stage": "prod"}}))
    await _ok(await client.delete(f"/api/v1/runs/{run_id}/tags/a/b"))
    run = await _ok(await client.get(f"/api/v1/runs/{run_id}"))
    assert run["params"] == {"lr": "0.1", "opt": "adam"} and run["tags"] == {"stage": "prod"}

    finished = await _ok(await client.post(f"/api/v1/runs/{run_id}/status", json={"status": "FINISHED"}))
    assert finished["run"]["info"]["status"] == "FINISHED" and finished["run"]["info"]["end_time"] is not None

    deleted = await _ok(await client.delete(f"/api/v1/runs/{child['run_id']}"))
    assert deleted["run"]["info"]["lifecycle_stage"] == "deleted"
    late = await client.post(f"/api/v1/runs/{child['run_id']}/tags", json={"tags": {"x": "1"}})
    assert late.status_code == 400


async def test_longest_param_and_tag_values_are_projected(client: httpx.AsyncClient) -> None:
    # MLflow's limits: params up to 6,000 characters, tags up to 8,000 (longer than a btree entry).
    created = await client.post("/api/v1/runs", json={"experiment_name": "long-values"})
    run_id = created.json()["run_id"]
    param, tag = "p" * 6000, "t" * 8000
    assert (
        await client.post(f"/api/v1/runs/{run_id}/params", json={"params": {"long": param}})
    ).status_code == 200
    assert (await client.post(f"/api/v1/runs/{run_id}/tags", json={"tags": {"long": tag}})).status_code == 200
    run = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert run["params"]["long"] == param and run["tags"]["long"] == tag


async def test_logged_metrics_are_read_back_exactly(client: httpx.AsyncClient) -> None:
    run_id = (await _ok(await client.post("/api/v1/runs", json={"experiment_name": "metrics"}), 201))[
        "run_id"
    ]
    n = 25_000  # three MetricsLogged events (10k points each), in order on the run's partition
    points: list[dict[str, Any]] = [
        {"key": "loss", "value": 1.0 / (i + 1), "step": i, "timestamp": 1_700_000_000_000 + i}
        for i in range(n)
    ]
    points[10]["value"] = "NaN"
    points.append({"key": "acc", "value": "Infinity", "step": 0})
    await _ok(await client.post(f"/api/v1/runs/{run_id}/metrics", json={"metrics": points}))

    history = await _ok(await client.get(f"/api/v1/runs/{run_id}/metrics/loss/history"))
    assert history["steps"] == list(range(n))
    assert history["values"][10] == "NaN" and history["values"][11] == 1.0 / 12
    keys = await _ok(await client.get(f"/api/v1/runs/{run_id}/metrics"))
    latest = {m["key"]: m for m in keys["metrics"]}
    assert latest["loss"]["step"] == n - 1 and latest["acc"]["value"] == "Infinity"
    reduced = await _ok(
        await client.get(f"/api/v1/runs/{run_id}/metrics/loss/history", params={"max_points": 100})
    )
    assert reduced["downsampled"] is True and len(reduced["steps"]) <= 100
    assert max(v for v in reduced["values"] if isinstance(v, float)) == 1.0  # the first point, the max


async def test_raw_events_from_the_sdk_transport(client: httpx.AsyncClient) -> None:
    run_id, exp_id = new_run_id(), experiment_id_for(T, "sdk")
    sdk = producer("python-sdk", "0.1.0")
    steps = np.arange(1000, dtype=np.int64)
    events = [
        envelope_dict(tenant_id=T, type=EventType.EXPERIMENT_CREATED, experiment_id=exp_id, producer=sdk,
                      payload={"name": "sdk"}),
        envelope_dict(tenant_id=T, type=EventType.RUN_STARTED, run_id=run_id, experiment_id=exp_id, producer=sdk,
                      payload={"name": "from-sdk", "start_time": 1_700_000_000_000}),
        envelope_dict(tenant_id=T, type=EventType.METRICS_LOGGED, run_id=run_id, experiment_id=exp_id, producer=sdk,
                      payload=metric_columns(["m"], np.zeros(1000, np.int32), np.sqrt(steps.astype(float)), steps,
                                             1_700_000_000_000 + steps)),
    ]  # fmt: skip
    body = b"[" + b",".join(encode(e) for e in events) + b"]"
    accepted = await _ok(
        await client.post("/api/v1/events", content=body, headers={"content-type": "application/json"})
    )
    assert accepted["accepted"] == 3
    run = await _ok(await client.get(f"/api/v1/runs/{run_id}"))
    assert run["info"]["name"] == "from-sdk" and run["metrics"]["m"]["step"] == 999
    history = await _ok(
        await client.get(f"/api/v1/runs/{run_id}/metrics/m/history", params={"start_step": 990})
    )
    assert history["values"] == [math.sqrt(s) for s in range(990, 1000)]
    # The same batch again: same event ids, deduplicated by the projector.
    await _ok(await client.post("/api/v1/events", content=body, headers={"content-type": "application/json"}))
    again = await _ok(await client.get(f"/api/v1/runs/{run_id}/metrics/m/history"))
    assert len(again["steps"]) == 1000


async def test_bulk_writes_may_answer_at_the_brokers_ack(client: httpx.AsyncClient) -> None:
    run_id = (await _ok(await client.post("/api/v1/runs", json={"experiment_name": "ack"}), 201))["run_id"]
    tokens: list[str] = []
    for step in range(3):  # each answers 202 at the broker's ack, with the token to read it by
        points = [{"key": "loss", "value": 1.0 / (step + 1), "step": step}]
        r = await client.post(
            f"/api/v1/runs/{run_id}/metrics", params={"wait": "false"}, json={"metrics": points}
        )
        assert r.status_code == 202, r.text
        assert r.json()["projected"] is False
        tokens.append(r.json()["consistency_token"])
    sdk = producer("python-sdk", "0.1.0")
    tagged = envelope_dict(
        tenant_id=T,
        type=EventType.TAGS_SET,
        run_id=run_id,
        experiment_id=experiment_id_for(T, "ack"),
        producer=sdk,
        payload={"tags": {"via": "events"}},
    )
    r = await client.post(
        "/api/v1/events",
        params={"wait": "false"},
        content=b"[" + encode(tagged) + b"]",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    tokens.append(r.json()["consistency_token"])
    # A read given the last token sees every write before it (the run's partition is ordered).
    run = await _ok(await client.get(f"/api/v1/runs/{run_id}", params={"consistency_token": tokens[-1]}))
    assert run["metrics"]["loss"]["step"] == 2 and run["tags"]["via"] == "events"
