"""The MLflow REST API driven exactly as the mlflow client drives it (JSON bodies for POST,
query strings for GET, basic auth with the key id and secret), against the in-process
app with the real broker, the real projector, Postgres and chdb."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Role, Share
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import experiment_id_for
from runledger.serve import ProjectorThread
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres import directory
from services.api.app import create_app
from tests.support.auth import Identity, provision
from tests.support.inprocess import chdb_store, migrated_database, module_settings

pytestmark = pytest.mark.integration

T = "mlflow-rest"
OTHER = "mlflow-rest-other"
API = "/api/2.0/mlflow"


@pytest.fixture(scope="module")
def settings(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return module_settings(broker, tmp_path_factory.mktemp("mlflow-rest"), T)


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres)


@pytest.fixture(scope="module")
def clickhouse(settings: Settings) -> Iterator[ChdbClickHouse]:
    yield from chdb_store(settings)


def basic(identity_key_id: str, secret: str) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME/PASSWORD: HTTP basic with the key id and secret."""
    raw = base64.b64encode(f"{identity_key_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture(scope="module")
async def client(
    settings: Settings, dsn: str, clickhouse: ChdbClickHouse
) -> AsyncIterator[httpx.AsyncClient]:
    key = generate_key()  # provisioned by the lifespan as admin of T
    live = settings.model_copy(update={"postgres_dsn": dsn, "bootstrap_api_key": key.token})
    projector = ProjectorThread(live, clickhouse)
    projector.start()
    app = create_app(live, clickhouse)
    headers = basic(key.key_id, key.secret)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60, headers=headers
            ) as c,
        ):
            yield c
    finally:
        projector.stop()


@pytest.fixture(scope="module")
async def outsider(client: httpx.AsyncClient, dsn: str) -> Identity:
    return await _usable(client, await provision(dsn, OTHER, Role.ENGINEER))


@pytest.fixture(scope="module")
async def viewer(client: httpx.AsyncClient, dsn: str) -> Identity:
    return await _usable(client, await provision(dsn, T, Role.VIEWER))


async def _usable(client: httpx.AsyncClient, identity: Identity) -> Identity:
    """The API's auth watcher loads new keys within a second."""
    for _ in range(100):
        if (await client.get("/api/v1/whoami", headers=identity.headers)).status_code == 200:
            return identity
        await asyncio.sleep(0.05)
    raise AssertionError("the key never became usable")


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], **kw: Any) -> Any:
    r = await client.post(API + path, json=body, **kw)
    assert r.status_code == 200, r.text
    return r.json()


async def get(client: httpx.AsyncClient, path: str, params: Any, **kw: Any) -> Any:
    r = await client.get(API + path, params=params, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error_code"] == code, r.text


async def new_run(client: httpx.AsyncClient, experiment_id: str = "0", **body: Any) -> dict[str, Any]:
    run: dict[str, Any] = (
        await post(
            client, "/runs/create", {"experiment_id": experiment_id, "start_time": 1_700_000_000_000, **body}
        )
    )["run"]
    return run


def tags_of(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


async def test_set_experiment_sequence_and_experiment_lifecycle(client: httpx.AsyncClient) -> None:
    missing = await client.get(API + "/experiments/get-by-name", params={"experiment_name": "vision"})
    error(missing, 404, "RESOURCE_DOES_NOT_EXIST")
    created = await post(
        client, "/experiments/create", {"name": "vision", "tags": [{"key": "team", "value": "cv"}]}
    )
    exp_id = created["experiment_id"]
    assert exp_id == experiment_id_for(T, "vision")
    exp = (await get(client, "/experiments/get", {"experiment_id": exp_id}))["experiment"]
    assert exp["name"] == "vision" and exp["lifecycle_stage"] == "active"
    assert exp["tags"] == [{"key": "team", "value": "cv"}]
    assert exp["artifact_location"] == f"mlflow-artifacts:/{exp_id}"
    assert exp["creation_time"] > 0 and exp["last_update_time"] > 0
    by_name = (await get(client, "/experiments/get-by-name", {"experiment_name": "vision"}))["experiment"]
    assert by_name["experiment_id"] == exp_id
    again = await client.post(API + "/experiments/create", json={"name": "vision"})
    error(again, 400, "RESOURCE_ALREADY_EXISTS")

    default = (await get(client, "/experiments/get-by-name", {"experiment_name": "Default"}))["experiment"]
    assert default["experiment_id"] == "0"

    await post(client, "/experiments/create", {"name": "vision-extra"})
    await post(
        client, "/experiments/set-experiment-tag", {"experiment_id": exp_id, "key": "stage", "value": "dev"}
    )
    found = await post(client, "/experiments/search", {"filter": "name LIKE 'vision%'", "max_results": 1000})
    assert sorted(e["name"] for e in found["experiments"]) == ["vision", "vision-extra"]
    tagged = await post(client, "/experiments/search", {"filter": "tags.stage = 'dev' AND name = 'vision'"})
    assert [e["experiment_id"] for e in tagged["experiments"]] == [exp_id]
    pages: list[str] = []
    body: dict[str, Any] = {"filter": "name LIKE 'vision%'", "max_results": 1, "order_by": ["name ASC"]}
    while True:
        page = await post(client, "/experiments/search", body)
        pages += [e["name"] for e in page["experiments"]]
        if "next_page_token" not in page:
            break
        body["page_token"] = page["next_page_token"]
    assert pages == ["vision", "vision-extra"]
    bad = await client.post(API + "/experiments/search", json={"filter": "name = 'a' OR name = 'b'"})
    error(bad, 400, "INVALID_PARAMETER_VALUE")

    await post(client, "/experiments/update", {"experiment_id": exp_id, "new_name": "vision-2"})
    assert (await get(client, "/experiments/get", {"experiment_id": exp_id}))["experiment"][
        "name"
    ] == "vision-2"
    await post(client, "/experiments/delete", {"experiment_id": exp_id})
    active = await post(client, "/experiments/search", {"filter": "name = 'vision-2'"})
    assert active.get("experiments", []) == []
    deleted = await post(
        client, "/experiments/search", {"filter": "name = 'vision-2'", "view_type": "DELETED_ONLY"}
    )
    assert [e["lifecycle_stage"] for e in deleted["experiments"]] == ["deleted"]
    await post(client, "/experiments/restore", {"experiment_id": exp_id})
    restored = (await get(client, "/experiments/get", {"experiment_id": exp_id}))["experiment"]
    assert restored["lifecycle_stage"] == "active"
    error(
        await client.get(API + "/experiments/get", params={"experiment_id": "nope"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )


async def test_run_lifecycle_run_name_sync_and_nesting(client: httpx.AsyncClient) -> None:
    run = await new_run(client, tags=[{"key": "mlflow.user", "value": "ana"}])
    info = run["info"]
    run_id = info["run_id"]
    assert info["run_uuid"] == run_id and info["experiment_id"] == "0" and info["status"] == "RUNNING"
    assert info["run_name"] and tags_of(run)["mlflow.runName"] == info["run_name"]
    assert info["artifact_uri"] == f"mlflow-artifacts:/0/{run_id}/artifacts"
    assert "end_time" not in info and info["start_time"] == 1_700_000_000_000

    child = await new_run(client, tags=[{"key": "mlflow.parentRunId", "value": run_id}], run_name="child")
    assert child["info"]["run_name"] == "child" and tags_of(child)["mlflow.parentRunId"] == run_id
    named_by_tag = await new_run(client, tags=[{"key": "mlflow.runName", "value": "from-tag"}])
    assert named_by_tag["info"]["run_name"] == "from-tag"

    # end_run: runs/get then runs/update.
    fetched = (await get(client, "/runs/get", {"run_id": run_id, "run_uuid": run_id}))["run"]
    assert fetched["info"] == info | {"run_name": info["run_name"]}
    updated = await post(
        client, "/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": 1_700_000_100_000}
    )
    assert (
        updated["run_info"]["status"] == "FINISHED" and updated["run_info"]["end_time"] == 1_700_000_100_000
    )

    renamed = await post(client, "/runs/update", {"run_id": run_id, "run_name": "renamed"})
    assert renamed["run_info"]["run_name"] == "renamed"
    got = (await get(client, "/runs/get", {"run_id": run_id}))["run"]
    assert got["info"]["run_name"] == "renamed" and tags_of(got)["mlflow.runName"] == "renamed"
    await post(client, "/runs/set-tag", {"run_id": run_id, "key": "mlflow.runName", "value": "by-tag"})
    assert (await get(client, "/runs/get", {"run_id": run_id}))["run"]["info"]["run_name"] == "by-tag"

    await post(client, "/runs/delete", {"run_id": child["info"]["run_id"]})
    gone = (await get(client, "/runs/get", {"run_id": child["info"]["run_id"]}))["run"]
    assert gone["info"]["lifecycle_stage"] == "deleted"
    late = await client.post(
        API + "/runs/log-metric",
        json={"run_id": child["info"]["run_id"], "key": "m", "value": 1, "timestamp": 1, "step": 0},
    )
    error(late, 400, "INVALID_PARAMETER_VALUE")
    await post(client, "/runs/restore", {"run_id": child["info"]["run_id"]})
    back = (await get(client, "/runs/get", {"run_id": child["info"]["run_id"]}))["run"]
    assert back["info"]["lifecycle_stage"] == "active"

    error(await client.get(API + "/runs/get", params={"run_id": "f" * 32}), 404, "RESOURCE_DOES_NOT_EXIST")
    bad_status = await client.post(API + "/runs/update", json={"run_id": run_id, "status": "DONE"})
    error(bad_status, 400, "INVALID_PARAMETER_VALUE")


async def test_logging_params_tags_metrics_inputs_and_limits(client: httpx.AsyncClient) -> None:
    run_id = (await new_run(client))["info"]["run_id"]
    await post(client, "/runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.1"})
    await post(client, "/runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.1"})  # same: OK
    changed = await client.post(
        API + "/runs/log-parameter", json={"run_id": run_id, "key": "lr", "value": "0.2"}
    )
    error(changed, 400, "INVALID_PARAMETER_VALUE")
    await post(
        client,
        "/runs/log-metric",
        {"run_id": run_id, "key": "loss", "value": "NaN", "timestamp": 5, "step": 1},
    )
    await post(
        client, "/runs/log-metric", {"run_id": run_id, "key": "acc", "value": 0.5, "timestamp": 5, "step": 0}
    )
    await post(
        client,
        "/runs/log-metric",
        {"run_id": run_id, "key": "acc", "value": "-Infinity", "timestamp": 4, "step": 2},
    )
    await post(client, "/runs/set-tag", {"run_id": run_id, "key": "team", "value": "nlp"})
    await post(
        client,
        "/runs/log-batch",
        {
            "run_id": run_id,
            "metrics": [{"key": "f1", "value": 0.25, "timestamp": 10, "step": s} for s in range(3)],
            "params": [{"key": "opt", "value": "adam"}, {"key": "opt", "value": "adam"}],
            "tags": [{"key": "phase", "value": "a"}, {"key": "phase", "value": "b"}],
        },
    )
    await post(client, "/runs/log-batch", {"run_id": run_id})  # empty: accepted (log_model sends one)
    await post(
        client,
        "/runs/log-inputs",
        {
            "run_id": run_id,
            "datasets": [
                {
                    "tags": [{"key": "mlflow.data.context", "value": "training"}],
                    "dataset": {
                        "name": "iris",
                        "digest": "abc123",
                        "source_type": "local",
                        "source": "{}",
                        "schema": "{}",
                        "profile": "{}",
                    },
                }
            ],
        },
    )
    run = (await get(client, "/runs/get", {"run_id": run_id}))["run"]
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    assert metrics["loss"]["value"] == "NaN"
    assert metrics["acc"] == {"key": "acc", "value": "-Infinity", "timestamp": 4, "step": 2}  # max (step, ts)
    assert metrics["f1"]["step"] == 2
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"lr": "0.1", "opt": "adam"}
    assert tags_of(run)["team"] == "nlp" and tags_of(run)["phase"] == "b"
    [dataset] = run["inputs"]["dataset_inputs"]
    assert dataset["dataset"]["name"] == "iris" and dataset["dataset"]["digest"] == "abc123"
    assert dataset["tags"] == [{"key": "mlflow.data.context", "value": "training"}]

    await post(client, "/runs/delete-tag", {"run_id": run_id, "key": "team"})
    assert "team" not in tags_of((await get(client, "/runs/get", {"run_id": run_id}))["run"])
    error(
        await client.post(API + "/runs/delete-tag", json={"run_id": run_id, "key": "team"}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )

    async def refused(body: dict[str, Any]) -> None:
        error(
            await client.post(API + "/runs/log-batch", json={"run_id": run_id, **body}),
            400,
            "INVALID_PARAMETER_VALUE",
        )

    point = {"key": "m", "value": 1.0, "timestamp": 1, "step": 0}
    await refused({"metrics": [point] * 1001})
    await refused({"params": [{"key": f"p{i}", "value": "1"} for i in range(101)]})
    await refused({"tags": [{"key": f"t{i}", "value": "1"} for i in range(101)]})
    await refused({"metrics": [point] * 950, "params": [{"key": f"q{i}", "value": "1"} for i in range(51)]})
    await refused({"params": [{"key": "dup", "value": "1"}, {"key": "dup", "value": "2"}]})
    await refused({"params": [{"key": "lr", "value": "0.3"}]})
    await refused({"metrics": [{**point, "key": "../up"}]})
    await refused({"tags": [{"key": "/abs", "value": "x"}]})
    await refused({"params": [{"key": "long", "value": "x" * 6001}]})
    await refused({"metrics": [{**point, "value": "many"}]})
    # A refused batch wrote nothing.
    assert "dup" not in {
        p["key"] for p in (await get(client, "/runs/get", {"run_id": run_id}))["run"]["data"]["params"]
    }


async def test_metric_history_paging_dedup_and_bulk_interval(client: httpx.AsyncClient) -> None:
    run_id = (await new_run(client))["info"]["run_id"]
    n = 2500
    points = [{"key": "loss", "value": 1.0 / (i + 1), "timestamp": 1000 + i, "step": i} for i in range(n)]
    points[7]["value"] = "NaN"
    for start in range(0, n, 1000):
        await post(client, "/runs/log-batch", {"run_id": run_id, "metrics": points[start : start + 1000]})
    # The client retried a point: stored twice, answered once.
    await post(client, "/runs/log-metric", {"run_id": run_id, **points[3]})
    # An earlier timestamp at a later step sorts first (history is by timestamp, then step).
    await post(
        client,
        "/runs/log-metric",
        {"run_id": run_id, "key": "loss", "value": 9.0, "timestamp": 1, "step": 99_999},
    )

    full = await get(client, "/metrics/get-history", {"run_id": run_id, "metric_key": "loss"})
    assert len(full["metrics"]) == n + 1 and "next_page_token" not in full
    assert full["metrics"][0] == {"key": "loss", "value": 9.0, "timestamp": 1, "step": 99_999}
    assert full["metrics"][8]["value"] == "NaN"

    collected: list[dict[str, Any]] = []
    params: dict[str, Any] = {"run_id": run_id, "metric_key": "loss", "max_results": 1000}
    while True:
        page = await get(client, "/metrics/get-history", params)
        collected += page["metrics"]
        if "next_page_token" not in page:
            break
        params["page_token"] = page["next_page_token"]
    assert collected == full["metrics"]
    bad_token = await client.get(
        API + "/metrics/get-history",
        params={"run_id": run_id, "metric_key": "acc", "page_token": params.get("page_token", "x")},
    )
    error(bad_token, 400, "INVALID_PARAMETER_VALUE")
    none = await get(client, "/metrics/get-history", {"run_id": run_id, "metric_key": "nothing"})
    assert none == {"metrics": []}

    other = (await new_run(client))["info"]["run_id"]
    await post(
        client,
        "/runs/log-batch",
        {
            "run_id": other,
            "metrics": [{"key": "loss", "value": 2.0, "timestamp": 5, "step": s} for s in range(0, 50, 5)],
        },
    )
    bulk = await client.get(
        API + "/metrics/get-history-bulk-interval",
        params=[("run_ids", run_id), ("run_ids", other), ("metric_key", "loss"), ("max_results", "10")],
    )
    assert bulk.status_code == 200, bulk.text
    rows = bulk.json()["metrics"]
    mine = [r["step"] for r in rows if r["run_id"] == run_id]
    theirs = [r["step"] for r in rows if r["run_id"] == other]
    assert rows[0]["run_id"] == run_id  # runs in the order asked
    assert mine[0] == 0 and mine[-1] == 99_999 and len(mine) <= 12 and mine == sorted(mine)
    assert theirs == list(range(0, 50, 5))
    ranged = await get(
        client,
        "/metrics/get-history-bulk-interval",
        [
            ("run_ids", run_id),
            ("metric_key", "loss"),
            ("start_step", "100"),
            ("end_step", "199"),
            ("max_results", "5"),
        ],
    )
    steps = [r["step"] for r in ranged["metrics"]]
    assert steps[0] == 100 and steps[-1] == 199 and len(steps) <= 7

    async def refused(params: list[tuple[str, str]]) -> None:
        r = await client.get(API + "/metrics/get-history-bulk-interval", params=params)
        error(r, 400, "INVALID_PARAMETER_VALUE")

    await refused([("run_ids", run_id), ("metric_key", "loss"), ("start_step", "1")])
    await refused([("run_ids", run_id), ("metric_key", "loss"), ("max_results", "0")])
    await refused([("run_ids", run_id), ("metric_key", "loss"), ("max_results", "2501")])
    await refused([*(("run_ids", run_id) for _ in range(101)), ("metric_key", "loss")])


async def test_metric_history_pages_dedup_within_their_range_and_follow_appends(
    client: httpx.AsyncClient,
) -> None:
    # A page reads only its own range and deduplicates within it: copies of a point must
    # never come back twice or be lost, wherever a page boundary falls among them.
    run_id = (await new_run(client))["info"]["run_id"]

    def point(i: int, value: Any = None) -> dict[str, Any]:
        return {"key": "acc", "value": 0.5 + i if value is None else value, "timestamp": 100 + i, "step": i}

    # Four points at one (timestamp, step): ordered -Infinity, 1.0, Infinity, NaN.
    same = [point(4, v) for v in ("NaN", "Infinity", 1.0, "-Infinity")]
    distinct = [point(i) for i in range(10) if i != 4] + same
    for _ in range(3):  # at-least-once delivery: each point stored three times
        await post(client, "/runs/log-batch", {"run_id": run_id, "metrics": distinct})

    async def history(max_results: int | None = None, token: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"run_id": run_id, "metric_key": "acc"}
        if max_results is not None:
            params["max_results"] = max_results
        if token is not None:
            params["page_token"] = token
        page: dict[str, Any] = await get(client, "/metrics/get-history", params)
        return page

    async def paged(max_results: int) -> list[dict[str, Any]]:
        collected: list[dict[str, Any]] = []
        token = None
        while True:
            page = await history(max_results, token)
            assert 0 < len(page.get("metrics", [])) <= max_results or "next_page_token" not in page
            collected += page.get("metrics", [])
            token = page.get("next_page_token")
            if token is None:
                return collected

    full = (await history())["metrics"]
    assert len(full) == len(distinct)
    assert [(m["timestamp"], m["step"]) for m in full] == sorted((m["timestamp"], m["step"]) for m in full)
    assert [m["value"] for m in full[4:8]] == ["-Infinity", 1.0, "Infinity", "NaN"]
    for size in (1, 2, 3, 4, 7, 25_000):
        assert await paged(size) == full, size

    # Appends between two pages: the token still resumes right after the last point
    # returned; points appended after it (and new copies of points on either side) show
    # up exactly once.
    first = await history(5)
    # Fewer than 5: the first 6 rows read hold copies (the page still has a token).
    assert first["metrics"] == full[: len(first["metrics"])] and "next_page_token" in first
    later = [point(i) for i in range(10, 13)]
    await post(client, "/runs/log-batch", {"run_id": run_id, "metrics": [full[0], full[9], *later]})
    rest: list[dict[str, Any]] = []
    token = first["next_page_token"]
    while token is not None:
        page = await history(5, token)
        rest += page["metrics"]
        token = page.get("next_page_token")
    assert first["metrics"] + rest == full + later == (await history())["metrics"]


async def test_search_runs(client: httpx.AsyncClient) -> None:
    exp_id = (await post(client, "/experiments/create", {"name": "search-runs"}))["experiment_id"]
    ids = []
    for i in range(5):
        run_id = (await new_run(client, exp_id, run_name=f"r{i}", start_time=1_700_000_000_000 + i))["info"][
            "run_id"
        ]
        await post(
            client,
            "/runs/log-batch",
            {
                "run_id": run_id,
                "metrics": [{"key": "acc", "value": i / 10, "timestamp": 1, "step": 0}],
                "params": [{"key": "opt", "value": "adam" if i % 2 else "sgd"}],
            },
        )
        ids.append(run_id)
    found = await post(
        client,
        "/runs/search",
        {
            "experiment_ids": [exp_id],
            "filter": "metrics.acc > 0.15 AND params.opt = 'adam'",
            "order_by": ["metrics.acc DESC"],
        },
    )
    assert [r["info"]["run_id"] for r in found["runs"]] == [ids[3]]
    listed: list[str] = []
    body: dict[str, Any] = {"experiment_ids": [exp_id], "max_results": 2}
    while True:
        page = await post(client, "/runs/search", body)
        listed += [r["info"]["run_id"] for r in page["runs"]]
        if "next_page_token" not in page:
            break
        body["page_token"] = page["next_page_token"]
    assert listed == ids[::-1]  # start_time DESC
    bad = await client.post(
        API + "/runs/search", json={"experiment_ids": [exp_id], "filter": "metrics.acc > 1 OR params.x = 'y'"}
    )
    error(bad, 400, "INVALID_PARAMETER_VALUE")


async def test_logged_model_create_get_finalize_and_server_info(client: httpx.AsyncClient) -> None:
    run = await new_run(client)
    run_id = run["info"]["run_id"]
    created = await post(
        client,
        "/logged-models",
        {
            "experiment_id": "0",
            "name": "model",
            "source_run_id": run_id,
            "params": [{"key": "lr", "value": "0.1"}],
            "tags": [{"key": "mlflow.user", "value": "ana"}],
        },
    )
    info = created["model"]["info"]
    model_id = info["model_id"]
    assert info["status"] == "LOGGED_MODEL_PENDING" and info["source_run_id"] == run_id
    assert info["artifact_uri"] == f"mlflow-artifacts:/0/{run_id}/artifacts/model"
    await post(client, "/runs/outputs", {"run_id": run_id, "models": [{"model_id": model_id, "step": 0}]})
    await post(client, "/runs/log-batch", {"run_id": run_id, "metrics": []})
    finalized = await client.patch(
        f"{API}/logged-models/{model_id}", json={"model_id": model_id, "status": "LOGGED_MODEL_READY"}
    )
    assert finalized.status_code == 200, finalized.text
    got = await get(client, f"/logged-models/{model_id}", {})
    assert got["model"]["info"]["status"] == "LOGGED_MODEL_READY"
    assert got["model"]["data"]["params"] == [{"key": "lr", "value": "0.1"}]
    found = await post(client, "/logged-models/search", {"experiment_ids": ["0"], "filter": "name = 'model'"})
    assert model_id in [m["info"]["model_id"] for m in found["models"]]
    fetched = (await get(client, "/runs/get", {"run_id": run_id}))["run"]
    assert fetched["outputs"]["model_outputs"] == [{"model_id": model_id, "step": 0}]
    assert not any(k.startswith("mlflow.loggedModels/") for k in tags_of(fetched))
    error(await client.get(f"{API}/logged-models/m-{'0' * 32}"), 404, "RESOURCE_DOES_NOT_EXIST")

    info3 = await client.get("/api/3.0/mlflow/server-info")
    assert info3.status_code == 200 and info3.json()["multipart_uploads_enabled"] is False
    unknown = await client.post(API + "/runs/no-such-thing", json={})
    error(unknown, 404, "ENDPOINT_NOT_FOUND")


async def test_another_tenant_sees_nothing_and_viewers_cannot_write(
    client: httpx.AsyncClient, outsider: Identity, viewer: Identity
) -> None:
    exp_id = (await post(client, "/experiments/create", {"name": "private"}))["experiment_id"]
    run_id = (await new_run(client, exp_id))["info"]["run_id"]
    await post(
        client, "/runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 1, "step": 0}
    )
    h = basic(outsider.key.key_id, outsider.key.secret)

    async def hidden(method: str, path: str, **kw: Any) -> None:
        r = await client.request(method, API + path, headers=h, **kw)
        error(r, 404, "RESOURCE_DOES_NOT_EXIST")

    await hidden("GET", "/runs/get", params={"run_id": run_id})
    await hidden("GET", "/experiments/get", params={"experiment_id": exp_id})
    await hidden("GET", "/experiments/get-by-name", params={"experiment_name": "private"})
    await hidden("GET", "/metrics/get-history", params={"run_id": run_id, "metric_key": "m"})
    await hidden("GET", "/metrics/get-history-bulk-interval", params={"run_ids": run_id, "metric_key": "m"})
    await hidden(
        "POST", "/runs/log-metric", json={"run_id": run_id, "key": "m", "value": 2, "timestamp": 1, "step": 1}
    )
    await hidden("POST", "/runs/update", json={"run_id": run_id, "status": "KILLED"})
    await hidden("POST", "/experiments/delete", json={"experiment_id": exp_id})
    await hidden("POST", "/runs/create", json={"experiment_id": exp_id})
    searched = await client.post(API + "/runs/search", json={"experiment_ids": [exp_id]}, headers=h)
    assert searched.status_code == 200 and run_id not in searched.text
    listed = await client.post(API + "/experiments/search", json={}, headers=h)
    assert listed.status_code == 200 and exp_id not in listed.text and "private" not in listed.text
    # The outsider's own Default experiment and runs work.
    own = await client.post(API + "/runs/create", json={"experiment_id": "0"}, headers=h)
    assert own.status_code == 200 and own.json()["run"]["info"]["experiment_id"] == "0"

    v = viewer.headers
    assert (await client.get(API + "/runs/get", params={"run_id": run_id}, headers=v)).status_code == 200
    assert (
        await client.post(API + "/runs/search", json={"experiment_ids": [exp_id]}, headers=v)
    ).status_code == 200
    for path, body in (
        ("/runs/log-metric", {"run_id": run_id, "key": "m", "value": 2, "timestamp": 1, "step": 1}),
        ("/runs/create", {"experiment_id": exp_id}),
        ("/experiments/create", {"name": "viewer-made"}),
        ("/runs/log-batch", {"run_id": run_id, "metrics": "not even a list"}),  # 403 before validation
    ):
        error(await client.post(API + path, json=body, headers=v), 403, "PERMISSION_DENIED")


async def _model(client: httpx.AsyncClient, exp_id: str, name: str, **body: Any) -> str:
    created = await post(client, "/logged-models", {"experiment_id": exp_id, "name": name, **body})
    model_id: str = created["model"]["info"]["model_id"]
    return model_id


def _names(found: dict[str, Any], ids: dict[str, str]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[m["info"]["model_id"]] for m in found.get("models", [])]


async def test_logged_models_search_params_tags_metrics_and_delete(client: httpx.AsyncClient) -> None:
    exp_id = (await post(client, "/experiments/create", {"name": "models-search"}))["experiment_id"]
    run_id = (await new_run(client, exp_id))["info"]["run_id"]
    ids = {}
    for name, lr, team in (("a", "0.1", "cv"), ("b", "0.01", "nlp"), ("c", "0.1", "CV-x")):
        ids[name] = await _model(
            client,
            exp_id,
            name,
            source_run_id=run_id,
            params=[{"key": "lr", "value": lr}],
            tags=[{"key": "team", "value": team}],
        )
    # Metrics linked through log-batch (as log_model does for the run's metrics), NaN included.
    metrics = [
        {
            "key": "acc",
            "value": v,
            "timestamp": 1000 + i,
            "step": 0,
            "model_id": ids[n],
            "dataset_name": "val",
        }
        for i, (n, v) in enumerate((("a", 0.9), ("b", 0.7), ("c", "NaN")))
    ]
    await post(client, "/runs/log-batch", {"run_id": run_id, "metrics": metrics})
    await post(client, f"/logged-models/{ids['a']}/params", {"params": [{"key": "epochs", "value": "3"}]})
    await post(client, f"/logged-models/{ids['a']}/params", {"params": []})
    for params in ([], [{"key": "epochs", "value": "3"}]):  # a missing model, with or without params
        missing = await client.post(f"{API}/logged-models/m-{'0' * 32}/params", json={"params": params})
        error(missing, 404, "RESOURCE_DOES_NOT_EXIST")
    await client.patch(f"{API}/logged-models/{ids['b']}", json={"status": "LOGGED_MODEL_READY"})
    patched = await client.patch(
        f"{API}/logged-models/{ids['a']}/tags", json={"tags": [{"key": "k", "value": "v"}]}
    )
    assert patched.status_code == 200, patched.text

    got = (await get(client, f"/logged-models/{ids['a']}", {}))["model"]
    assert {p["key"]: p["value"] for p in got["data"]["params"]} == {"lr": "0.1", "epochs": "3"}
    assert {t["key"]: t["value"] for t in got["info"]["tags"]} == {"team": "cv", "k": "v"}
    [metric] = got["data"]["metrics"]
    assert metric | {} == {
        "key": "acc",
        "value": 0.9,
        "timestamp": 1000,
        "step": 0,
        "model_id": ids["a"],
        "run_id": run_id,
        "dataset_name": "val",
    }
    nan = (await get(client, f"/logged-models/{ids['c']}", {}))["model"]["data"]["metrics"]
    assert nan[0]["value"] == "NaN"

    async def search(filter: str = "", **body: Any) -> list[str]:
        found = await post(
            client, "/logged-models/search", {"experiment_ids": [exp_id], "filter": filter, **body}
        )
        return _names(found, ids)

    assert await search() == ["c", "b", "a"]  # newest first
    assert await search("params.lr = '0.1'") == ["c", "a"]
    assert await search("tags.team ILIKE 'cv%'") == ["c", "a"]
    assert await search("tags.team LIKE 'cv%'") == ["a"]
    assert await search("metrics.acc > 0.8") == ["a"]  # NaN satisfies no comparison
    assert await search("metrics.acc >= 0.7 AND params.lr = '0.01'") == ["b"]
    assert await search("status = 'READY'") == ["b"]
    assert await search("name IN ('a', 'b')") == ["b", "a"]
    assert await search(f"source_run_id = '{run_id}' AND name = 'c'") == ["c"]
    assert await search("creation_timestamp > 0 AND attributes.name != 'a'") == ["c", "b"]
    assert await search(order_by=[{"field_name": "metrics.acc", "ascending": True}]) == ["b", "a", "c"]
    assert await search(order_by=[{"field_name": "name", "ascending": True}]) == ["a", "b", "c"]
    assert await search(datasets=[{"dataset_name": "val"}], filter="metrics.acc < 0.8") == ["b"]
    assert await search(datasets=[{"dataset_name": "test"}]) == []
    pages: list[list[str]] = []
    body: dict[str, Any] = {"experiment_ids": [exp_id], "max_results": 2}
    while True:
        page = await post(client, "/logged-models/search", body)
        pages.append(_names(page, ids))
        if "next_page_token" not in page:
            break
        body["page_token"] = page["next_page_token"]
    assert pages == [["c", "b"], ["a"]]
    for bad in (
        "metrics.acc > 'x'",
        "params.lr > '1'",
        "foo = 'x'",
        "name = 'a' OR name = 'b'",
        "bogus.x = 'y'",
    ):
        error(
            await client.post(
                API + "/logged-models/search", json={"experiment_ids": [exp_id], "filter": bad}
            ),
            400,
            "INVALID_PARAMETER_VALUE",
        )

    # runs/outputs links; delete (soft): gone from get and search, back with allow_deleted.
    await post(client, "/runs/outputs", {"run_id": run_id, "models": [{"model_id": ids["b"], "step": 2}]})
    run = (await get(client, "/runs/get", {"run_id": run_id}))["run"]
    assert run["outputs"]["model_outputs"] == [{"model_id": ids["b"], "step": 2}]
    deleted = await client.delete(f"{API}/logged-models/{ids['c']}")
    assert deleted.status_code == 200, deleted.text
    error(await client.get(f"{API}/logged-models/{ids['c']}"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert (await get(client, f"/logged-models/{ids['c']}", {"allow_deleted": "true"}))["model"]["info"][
        "name"
    ] == "c"
    assert await search() == ["b", "a"]
    tag_gone = await client.delete(f"{API}/logged-models/{ids['a']}/tags/k")
    assert tag_gone.status_code == 200, tag_gone.text
    error(await client.delete(f"{API}/logged-models/{ids['a']}/tags/k"), 404, "RESOURCE_DOES_NOT_EXIST")
    missing = await client.post(
        API + "/runs/outputs", json={"run_id": run_id, "models": [{"model_id": "m-" + "0" * 32, "step": 0}]}
    )
    error(missing, 404, "RESOURCE_DOES_NOT_EXIST")


async def test_legacy_tag_stored_model_is_read_then_promoted(client: httpx.AsyncClient) -> None:
    run_id = (await new_run(client))["info"]["run_id"]
    model_id = "m-" + "1" * 32
    legacy = {
        "model_id": model_id,
        "experiment_id": "0",
        "name": "old",
        "creation_timestamp_ms": 1_700_000_000_000,
        "last_updated_timestamp_ms": 1_700_000_000_000,
        "artifact_uri": f"mlflow-artifacts:/0/{run_id}/artifacts/old",
        "status": "LOGGED_MODEL_PENDING",
        "model_type": "",
        "source_run_id": run_id,
        "tags": {"t": "1"},
        "params": {"p": "2"},
    }
    await post(
        client,
        "/runs/set-tag",
        {"run_id": run_id, "key": f"mlflow.loggedModels/{model_id}", "value": json.dumps(legacy)},
    )
    got = (await get(client, f"/logged-models/{model_id}", {}))["model"]
    assert got["info"]["name"] == "old" and got["data"]["params"] == [{"key": "p", "value": "2"}]
    finalized = await client.patch(f"{API}/logged-models/{model_id}", json={"status": "LOGGED_MODEL_READY"})
    assert (
        finalized.status_code == 200 and finalized.json()["model"]["info"]["status"] == "LOGGED_MODEL_READY"
    )
    found = await post(client, "/logged-models/search", {"experiment_ids": ["0"], "filter": "name = 'old'"})
    [promoted] = found["models"]
    assert promoted["info"]["creation_timestamp_ms"] == 1_700_000_000_000
    assert promoted["info"]["tags"] == [{"key": "t", "value": "1"}]


async def test_experiment_delete_tag_and_legacy_log_model(client: httpx.AsyncClient) -> None:
    exp_id = (await post(client, "/experiments/create", {"name": "tags-and-log-model"}))["experiment_id"]
    await post(client, "/experiments/set-experiment-tag", {"experiment_id": exp_id, "key": "a", "value": "1"})
    await post(client, "/experiments/delete-experiment-tag", {"experiment_id": exp_id, "key": "a"})
    assert (await get(client, "/experiments/get", {"experiment_id": exp_id}))["experiment"].get(
        "tags", []
    ) == []
    again = await client.post(
        API + "/experiments/delete-experiment-tag", json={"experiment_id": exp_id, "key": "a"}
    )
    error(again, 404, "RESOURCE_DOES_NOT_EXIST")

    run_id = (await new_run(client, exp_id))["info"]["run_id"]
    model = {
        "artifact_path": "m",
        "flavors": {"python_function": {}},
        "utc_time_created": "2026",
        "run_id": run_id,
    }
    for path in ("m", "n"):
        await post(
            client,
            "/runs/log-model",
            {"run_id": run_id, "model_json": json.dumps(model | {"artifact_path": path})},
        )
    history = json.loads(
        tags_of((await get(client, "/runs/get", {"run_id": run_id}))["run"])["mlflow.log-model.history"]
    )
    assert [h["artifact_path"] for h in history] == ["m", "n"]
    bad = await client.post(
        API + "/runs/log-model", json={"run_id": run_id, "model_json": json.dumps({"flavors": {}})}
    )
    error(bad, 400, "INVALID_PARAMETER_VALUE")


async def test_runs_create_retried_with_the_same_body_is_one_run(client: httpx.AsyncClient) -> None:
    exp_id = (await post(client, "/experiments/create", {"name": "retries"}))["experiment_id"]
    body = {
        "experiment_id": exp_id,
        "start_time": int(time.time() * 1000),
        "tags": [{"key": "mlflow.user", "value": "ana"}],
    }
    first, retried = await asyncio.gather(
        client.post(API + "/runs/create", json=body), client.post(API + "/runs/create", json=body)
    )
    assert first.status_code == retried.status_code == 200, (first.text, retried.text)
    again = await post(client, "/runs/create", body)  # a late retry, after both were written
    run_id = first.json()["run"]["info"]["run_id"]
    assert retried.json()["run"]["info"]["run_id"] == run_id == again["run"]["info"]["run_id"]
    listed = await post(client, "/runs/search", {"experiment_ids": [exp_id]})
    assert [r["info"]["run_id"] for r in listed["runs"]] == [run_id]
    # Another start time, name or tag is another run.
    other = await new_run(client, exp_id, start_time=body["start_time"] + 1)
    named = await new_run(client, exp_id, start_time=body["start_time"], run_name="x")
    assert len({run_id, other["info"]["run_id"], named["info"]["run_id"]}) == 3


async def test_shared_experiment_in_searches_read_only(
    client: httpx.AsyncClient, dsn: str, outsider: Identity
) -> None:
    exp_id = (await post(client, "/experiments/create", {"name": "shared-out"}))["experiment_id"]
    hidden_id = (await post(client, "/experiments/create", {"name": "not-shared"}))["experiment_id"]
    run_id = (await new_run(client, exp_id, run_name="shared-run"))["info"]["run_id"]
    await post(
        client, "/runs/log-metric", {"run_id": run_id, "key": "m", "value": 3, "timestamp": 1, "step": 0}
    )
    model_id = await _model(client, exp_id, "shared-model", source_run_id=run_id)
    hidden_run = (await new_run(client, hidden_id))["info"]["run_id"]
    conn = await asyncpg.connect(dsn)
    try:
        await directory.share_experiment(conn, Share(T, exp_id, OTHER), "test")
    finally:
        await conn.close()
    h = basic(outsider.key.key_id, outsider.key.secret)
    for _ in range(100):  # the auth watcher reloads shares within a second
        if (
            await client.get(API + "/experiments/get", params={"experiment_id": exp_id}, headers=h)
        ).status_code == 200:
            break
        await asyncio.sleep(0.05)
    listed = await client.post(API + "/experiments/search", json={}, headers=h)
    names = {e["name"] for e in listed.json()["experiments"]}
    assert "shared-out" in names and "not-shared" not in names
    searched = await client.post(
        API + "/runs/search",
        json={"experiment_ids": [exp_id, hidden_id, "0"], "filter": "metrics.m > 2"},
        headers=h,
    )
    assert searched.status_code == 200, searched.text
    assert [r["info"]["run_id"] for r in searched.json()["runs"]] == [run_id]
    everything = await client.post(API + "/runs/search", json={"experiment_ids": [exp_id, "0"]}, headers=h)
    ids = [r["info"]["run_id"] for r in everything.json()["runs"]]
    assert run_id in ids and hidden_run not in ids
    models = await client.post(API + "/logged-models/search", json={"experiment_ids": [exp_id]}, headers=h)
    assert [m["info"]["model_id"] for m in models.json()["models"]] == [model_id]
    assert (await client.get(f"{API}/logged-models/{model_id}", headers=h)).status_code == 200
    # Read-only: writes to the shared experiment, its run and its model are refused.
    for method, path, body in (
        ("POST", "/runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 2, "step": 1}),
        ("POST", "/runs/create", {"experiment_id": exp_id}),
        ("POST", "/logged-models", {"experiment_id": exp_id, "name": "x"}),
        ("PATCH", f"/logged-models/{model_id}", {"status": "LOGGED_MODEL_READY"}),
        ("DELETE", f"/logged-models/{model_id}", None),
        ("POST", "/experiments/delete-experiment-tag", {"experiment_id": exp_id, "key": "x"}),
    ):
        r = await client.request(method, API + path, json=body, headers=h)
        error(r, 403, "PERMISSION_DENIED")
    # The not-shared experiment stays invisible.
    error(
        await client.get(API + "/experiments/get", params={"experiment_id": hidden_id}, headers=h),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )
