"""API read routes against real Postgres and ClickHouse (chdb), with rows seeded directly.

The projector is not involved: rows are written as it would write them, then read
through the HTTP routes. Two tenants hold look-alike data; only the caller's may show.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest

from runledger.auth.keys import generate_key
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import experiment_id_for
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from services.ingest.checkpoints import PartitionKey, notification
from tests.integration.conftest import create_database
from tests.unit.test_api_errors import RecordingPublisher

pytestmark = pytest.mark.integration

T, OTHER = "api-reads", "api-other"
RUN = "a1" * 16  # the long series; the other tenant has a run with the same id
N = 1_000_000
SPIKE_STEP, DIP_STEP = 500_123, 777_001


async def _seed_postgres(conn: asyncpg.Connection[Any]) -> None:
    exp = [
        (T, "0", "Default", "active", 1000),
        (T, experiment_id_for(T, "alpha"), "Alpha", "active", 2000),
        (T, experiment_id_for(T, "beta"), "beta-vision", "active", 3000),
        (T, experiment_id_for(T, "gamma"), "gamma", "deleted", 4000),
        (T, experiment_id_for(T, "old-name"), "new-name", "active", 5000),
        (OTHER, "0", "Default", "active", 1000),
        (OTHER, experiment_id_for(OTHER, "Alpha"), "Alpha", "active", 2000),
        (OTHER, experiment_id_for(OTHER, "secret"), "secret", "active", 9000),
    ]
    await conn.executemany(
        "INSERT INTO experiments (tenant_id, experiment_id, name, lifecycle_stage, creation_time, last_update_time)"
        " VALUES ($1, $2, $3, $4, $5, $5)",
        exp,
    )
    await conn.execute(
        "INSERT INTO experiment_tags VALUES ($1, $2, 'team', 'vision'), ($3, $4, 'team', 'red')",
        T,
        experiment_id_for(T, "beta"),
        OTHER,
        experiment_id_for(OTHER, "secret"),
    )
    alpha = experiment_id_for(T, "alpha")
    runs: list[tuple[Any, ...]] = []
    for i in range(25):
        # Pairs of runs share a start_time: the run_id breaks the tie in pagination.
        runs.append(
            (T, f"run{i:02d}", alpha, None, f"r{i}", "FINISHED" if i % 2 else "RUNNING", 10_000 + i // 2)
        )
    runs.append((T, RUN, alpha, None, "long", "RUNNING", 50_000))
    runs.append((T, "child", alpha, RUN, "child", "RUNNING", 60_000))
    runs.append((T, "nanrun", alpha, None, "nan", "FAILED", 5))
    runs.append((OTHER, RUN, experiment_id_for(OTHER, "Alpha"), None, "theirs", "RUNNING", 99_999))
    runs.append((OTHER, "foreign", experiment_id_for(OTHER, "Alpha"), None, "foreign", "RUNNING", 99_999))
    await conn.executemany(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, parent_run_id, name, status, start_time)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        runs,
    )
    await conn.execute(
        "UPDATE runs SET lifecycle_stage = 'deleted' WHERE tenant_id = $1 AND run_id = 'run24'", T
    )
    tags = [(T, f"run{i:02d}", "mode", "fast" if i % 3 == 0 else "slow") for i in range(25)]
    tags += [(T, "run03", "a:b", "x:y"), (OTHER, "foreign", "mode", "fast")]
    await conn.executemany("INSERT INTO tags VALUES ($1, $2, $3, $4)", tags)
    params = [(T, f"run{i:02d}", "lr", str(i % 5)) for i in range(25)] + [(OTHER, "foreign", "lr", "0")]
    await conn.executemany("INSERT INTO params VALUES ($1, $2, $3, $4)", params)
    await conn.executemany(
        "INSERT INTO latest_metrics VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [  # as the projector keeps them for the series seeded into ClickHouse below
            (T, RUN, "loss", 0.25, N - 1, 1_700_000_000_000 + N - 1, 0),
            (T, RUN, "train/acc", math.nan, 3, 1_700_000_000_003, 0),
            (T, "nanrun", "loss", 1.0 + 2047 / 4096, 2047, 1_700_000_002_047, 0),
            (OTHER, RUN, "loss", 1e9, 1, 1, 0),
        ],
    )


def _points(tenant: str, run: str, key: str, steps: np.ndarray, values: np.ndarray) -> pa.Table:
    n = len(steps)
    stamps = pa.array(1_700_000_000_000 + steps, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return pa.table(
        {
            "tenant_id": [tenant] * n,
            "experiment_id": ["e"] * n,
            "run_id": [run] * n,
            "key": [key] * n,
            "step": steps,
            "timestamp": stamps,
            "value": values,
        }
    )


def _long_series() -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(N, dtype=np.int64)
    values = np.sin(steps / 5000.0) + np.random.default_rng(3).normal(0, 0.01, N)
    values[SPIKE_STEP], values[DIP_STEP] = 100.0, -100.0
    return steps, values


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClickHouse]:
    # chdb allows one data path per process at a time: closed when the module ends.
    store = ChdbClickHouse(tmp_path_factory.mktemp("api-reads") / "clickhouse")
    store.migrate()
    steps, values = _long_series()
    store.insert_arrow("metric_points", _points(T, RUN, "loss", steps, values))
    short = np.array([1.0, math.nan, math.inf, 0.5])
    store.insert_arrow("metric_points", _points(T, RUN, "train/acc", np.arange(4, dtype=np.int64), short))
    # One insert whose only points in rollup bucket 0 are NaN, then finite points there.
    store.insert_arrow(
        "metric_points", _points(T, "nanrun", "loss", np.arange(64, dtype=np.int64), np.full(64, math.nan))
    )
    finite = 1.0 + np.arange(64, 2048, dtype=np.float64) / 4096
    store.insert_arrow(
        "metric_points", _points(T, "nanrun", "loss", np.arange(64, 2048, dtype=np.int64), finite)
    )
    store.insert_arrow(
        "metric_points",
        _points(T, "nanrun", "loss", np.arange(0, 64, dtype=np.int64), 1.0 + np.arange(64) / 4096),
    )
    # The other tenant's run with the same id: a huge value that must never leak.
    store.insert_arrow("metric_points", _points(OTHER, RUN, "loss", steps[:1000], np.full(1000, 1e9)))
    yield store
    store.close()


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await _seed_postgres(conn)
    finally:
        await conn.close()
    return dsn


@pytest.fixture(scope="module")
async def client(dsn: str, clickhouse: ChdbClickHouse) -> AsyncIterator[httpx.AsyncClient]:
    key = generate_key()  # provisioned by the lifespan as admin of T
    settings = Settings(
        postgres_dsn=dsn, default_tenant=T, write_wait_timeout_s=1.5, bootstrap_api_key=key.token
    )
    app = create_app(settings, clickhouse, publisher=RecordingPublisher())
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key.token}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as c,
    ):
        yield c


async def _get(client: httpx.AsyncClient, url: str, expect: int = 200, **params: Any) -> Any:
    r = await client.get(url, params=params)
    assert r.status_code == expect, r.text
    return r.json()


# --- experiments ------------------------------------------------------------------------------


async def test_experiments_list_is_tenant_scoped_and_filtered(client: httpx.AsyncClient) -> None:
    body = await _get(client, "/api/v1/experiments")
    names = [e["name"] for e in body["experiments"]]
    assert names == ["new-name", "beta-vision", "Alpha", "Default"]  # newest first, deleted hidden
    assert body["next_page_token"] is None
    assert [e["name"] for e in (await _get(client, "/api/v1/experiments", name="ALP"))["experiments"]] == [
        "Alpha"
    ]
    deleted = await _get(client, "/api/v1/experiments", lifecycle_stage="deleted")
    assert [e["name"] for e in deleted["experiments"]] == ["gamma"]
    assert len((await _get(client, "/api/v1/experiments", lifecycle_stage="all"))["experiments"]) == 5
    # "%" is matched literally, not as a LIKE wildcard.
    assert (await _get(client, "/api/v1/experiments", name="%"))["experiments"] == []


async def test_experiments_pagination(client: httpx.AsyncClient) -> None:
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"page_size": 2, "lifecycle_stage": "all"}
        if token:
            params["page_token"] = token
        body = await _get(client, "/api/v1/experiments", **params)
        seen += [e["experiment_id"] for e in body["experiments"]]
        token = body["next_page_token"]
        if token is None:
            break
    assert len(seen) == len(set(seen)) == 5
    page = await _get(client, "/api/v1/experiments", page_size=2)
    bad = await _get(client, "/api/v1/experiments", 400, page_token=page["next_page_token"], name="a")
    assert bad["error_code"] == "INVALID_PARAMETER_VALUE"


async def test_get_experiment(client: httpx.AsyncClient) -> None:
    beta = await _get(client, f"/api/v1/experiments/{experiment_id_for(T, 'beta')}")
    assert beta["name"] == "beta-vision" and beta["tags"] == {"team": "vision"}
    assert beta["creation_time"] == 3000 and beta["lifecycle_stage"] == "active"
    missing = await _get(client, f"/api/v1/experiments/{experiment_id_for(OTHER, 'secret')}", 404)
    assert missing["error_code"] == "RESOURCE_DOES_NOT_EXIST"


# --- runs -------------------------------------------------------------------------------------


async def _all_runs(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    token = None
    while True:
        body = await _get(client, "/api/v1/runs", **params, **({"page_token": token} if token else {}))
        runs += body["runs"]
        token = body["next_page_token"]
        if token is None:
            return runs


async def test_runs_pagination_is_keyset_ordered_without_gaps(client: httpx.AsyncClient) -> None:
    runs = await _all_runs(client, page_size=4)
    ids = [r["info"]["run_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 27  # 24 active seeded + long + child + nanrun; run24 deleted
    keys = [(-r["info"]["start_time"], r["info"]["run_id"]) for r in runs]
    assert keys == sorted(keys)
    assert "foreign" not in ids


async def test_run_filters(client: httpx.AsyncClient) -> None:
    def ids(runs: list[dict[str, Any]]) -> set[str]:
        return {r["info"]["run_id"] for r in runs}

    fast = ids(await _all_runs(client, tag="mode:fast"))
    assert fast == {f"run{i:02d}" for i in range(0, 24, 3)}
    assert ids(await _all_runs(client, tag=["mode:fast", "mode"], param=["lr:0", "lr"])) == {"run00", "run15"}
    assert ids(await _all_runs(client, tag="`a:b`:x:y")) == {"run03"}
    assert ids(await _all_runs(client, status="FAILED")) == {"nanrun"}
    assert ids(await _all_runs(client, tag="a:b")) == set()  # key "a" with value "b:..."
    assert ids(await _all_runs(client, status="finished", param="lr:1")) == {"run01", "run11", "run21"}
    assert ids(await _all_runs(client, parent_run_id=RUN)) == {"child"}
    assert ids(await _all_runs(client, lifecycle_stage="deleted")) == {"run24"}
    alpha = experiment_id_for(T, "alpha")
    assert len(await _all_runs(client, experiment_id=[alpha, "nope"], page_size=1000)) == 27
    assert await _all_runs(client, experiment_id=experiment_id_for(OTHER, "Alpha")) == []


async def test_get_run_with_data(client: httpx.AsyncClient) -> None:
    run = await _get(client, f"/api/v1/runs/{RUN}")
    assert run["info"]["name"] == "long" and run["info"]["end_time"] is None  # ours, not OTHER's twin
    assert run["metrics"]["loss"] == {"value": 0.25, "step": N - 1, "timestamp": 1_700_000_000_000 + N - 1}
    assert run["metrics"]["train/acc"]["value"] == "NaN"
    detail = await _get(client, "/api/v1/runs/run03")
    assert detail["params"] == {"lr": "3"} and detail["tags"] == {"mode": "fast", "a:b": "x:y"}
    assert (await _get(client, "/api/v1/runs/foreign", 404))["error_code"] == "RESOURCE_DOES_NOT_EXIST"


# --- metrics ----------------------------------------------------------------------------------


async def test_metric_keys(client: httpx.AsyncClient) -> None:
    body = await _get(client, f"/api/v1/runs/{RUN}/metrics")
    assert [m["key"] for m in body["metrics"]] == ["loss", "train/acc"]
    await _get(client, "/api/v1/runs/foreign/metrics", 404)


async def test_raw_history_columnar_json_is_exact(client: httpx.AsyncClient) -> None:
    steps, values = _long_series()
    r = await client.get(f"/api/v1/runs/{RUN}/metrics/loss/history")
    body = orjson.loads(r.content)
    assert body["method"] == "raw" and body["downsampled"] is False
    assert body["steps"] == steps.tolist()
    assert np.array_equal(np.asarray(body["values"]), values)
    assert body["timestamps"][0] == 1_700_000_000_000 and len(body["timestamps"]) == N


async def test_raw_history_arrow_and_points_and_range(client: httpx.AsyncClient) -> None:
    _, values = _long_series()
    r = await client.get(f"/api/v1/runs/{RUN}/metrics/loss/history", params={"format": "arrow"})
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.num_rows == N and np.array_equal(table.column("value").to_numpy(), values)
    assert (
        table.schema.field("step").type == pa.int64() and table.schema.field("timestamp").type == pa.int64()
    )
    accept = await client.get(
        f"/api/v1/runs/{RUN}/metrics/loss/history",
        params={"start_step": 10, "end_step": 12},
        headers={"accept": "application/vnd.apache.arrow.stream"},
    )
    assert pa.ipc.open_stream(accept.content).read_all().column("step").to_pylist() == [10, 11, 12]
    points = await _get(
        client, f"/api/v1/runs/{RUN}/metrics/loss/history", shape="points", start_step=5, end_step=6
    )
    assert points["points"] == [
        {"step": 5, "timestamp": 1_700_000_000_005, "value": values[5]},
        {"step": 6, "timestamp": 1_700_000_000_006, "value": values[6]},
    ]


async def test_non_finite_values_and_slashed_keys(client: httpx.AsyncClient) -> None:
    columnar = await _get(client, f"/api/v1/runs/{RUN}/metrics/train/acc/history")
    assert columnar["values"] == [1.0, "NaN", "Infinity", 0.5]
    points = await _get(client, f"/api/v1/runs/{RUN}/metrics/train%2Facc/history", shape="points")
    assert [p["value"] for p in points["points"]] == [1.0, "NaN", "Infinity", 0.5]
    # Few points: max_points changes nothing and says so.
    small = await _get(client, f"/api/v1/runs/{RUN}/metrics/train/acc/history", max_points=100)
    assert small["downsampled"] is False and small["values"] == [1.0, "NaN", "Infinity", 0.5]


def _expected_minmax(lo: int, hi: int, edges: np.ndarray) -> set[tuple[int, float]]:
    """Brute force: min and max point of each answer bucket, bucket edges given as step boundaries."""
    steps, values = _long_series()
    out: set[tuple[int, float]] = set()
    for a, b in itertools.pairwise(edges):
        sl = slice(max(a, lo), min(b, hi + 1))
        if sl.start >= sl.stop:
            continue
        seg = values[sl]
        out.add((int(steps[sl][np.argmin(seg)]), float(seg.min())))
        out.add((int(steps[sl][np.argmax(seg)]), float(seg.max())))
    return out


async def test_minmax_from_the_rollup_keeps_spikes_and_is_exact(client: httpx.AsyncClient) -> None:
    lo, hi = 12_345, 987_654  # not aligned to the 64-step rollup buckets
    body = await _get(
        client, f"/api/v1/runs/{RUN}/metrics/loss/history", max_points=1000, start_step=lo, end_step=hi
    )
    assert body["method"] == "minmax" and body["downsampled"] is True
    assert body["timestamps"] is None  # the rollup path keeps no timestamps
    assert len(body["steps"]) <= 1000 and body["steps"] == sorted(body["steps"])
    got = set(zip(body["steps"], body["values"], strict=True))
    assert (SPIKE_STEP, 100.0) in got and (DIP_STEP, -100.0) in got
    # Groups are 64*W steps wide, counted from the bucket of `lo` (W from the plan).
    first, last = lo // 64, hi // 64
    width = 64 * -(-(last - first + 1) // 500)
    edges = np.arange(first * 64, hi + width + 1, width)
    assert got == _expected_minmax(lo, hi, edges)
    # The other tenant's 1e9 values under the same run id never appear.
    assert max(body["values"]) == 100.0
    points = await _get(
        client,
        f"/api/v1/runs/{RUN}/metrics/loss/history",
        max_points=1000,
        start_step=lo,
        end_step=hi,
        shape="points",
    )
    assert [(p["step"], p["value"]) for p in points["points"]] == list(
        zip(body["steps"], body["values"], strict=True)
    )
    assert all(p["timestamp"] is None for p in points["points"])


async def test_minmax_from_raw_points_for_shorter_ranges(client: httpx.AsyncClient) -> None:
    lo, hi = 400_000, 899_999
    body = await _get(
        client, f"/api/v1/runs/{RUN}/metrics/loss/history", max_points=4000, start_step=lo, end_step=hi
    )
    assert body["method"] == "minmax" and body["downsampled"] is True
    assert body["timestamps"] is not None and len(body["steps"]) <= 4000
    got = set(zip(body["steps"], body["values"], strict=True))
    width = -(-(hi - lo + 1) // 2000)
    assert got == _expected_minmax(lo, hi, np.arange(lo, hi + width + 1, width))
    assert all(t == 1_700_000_000_000 + s for s, t in zip(body["steps"], body["timestamps"], strict=True))
    points = await _get(
        client,
        f"/api/v1/runs/{RUN}/metrics/loss/history",
        max_points=4000,
        start_step=lo,
        end_step=hi,
        shape="points",
    )
    assert [(p["step"], p["timestamp"], p["value"]) for p in points["points"]] == list(
        zip(body["steps"], body["timestamps"], body["values"], strict=True)
    )


async def test_lttb(client: httpx.AsyncClient) -> None:
    body = await _get(client, f"/api/v1/runs/{RUN}/metrics/loss/history", max_points=500, method="lttb")
    assert body["method"] == "lttb" and body["downsampled"] is True
    assert 400 <= len(body["steps"]) <= 500 and body["steps"] == sorted(body["steps"])
    assert SPIKE_STEP in body["steps"] and DIP_STEP in body["steps"]
    assert all(t == 1_700_000_000_000 + s for s, t in zip(body["steps"], body["timestamps"], strict=True))
    arrow = await client.get(
        f"/api/v1/runs/{RUN}/metrics/loss/history",
        params={"max_points": 500, "method": "lttb", "format": "arrow"},
    )
    assert pa.ipc.open_stream(arrow.content).read_all().column("step").to_pylist() == body["steps"]
    points = await _get(
        client, f"/api/v1/runs/{RUN}/metrics/loss/history", max_points=500, method="lttb", shape="points"
    )
    assert [p["step"] for p in points["points"]] == body["steps"]
    assert [p["value"] for p in points["points"]] == body["values"]


async def test_rollup_minmax_ignores_batches_of_only_nan(client: httpx.AsyncClient) -> None:
    body = await _get(client, "/api/v1/runs/nanrun/metrics/loss/history", max_points=2)
    assert body["method"] == "minmax" and body["timestamps"] is None  # served from the rollup
    assert body["values"] == [1.0, 1.0 + 2047 / 4096]


async def test_history_of_unknown_or_foreign_runs_is_404(client: httpx.AsyncClient) -> None:
    assert (await _get(client, "/api/v1/runs/foreign/metrics/loss/history", 404))["error_code"] == (
        "RESOURCE_DOES_NOT_EXIST"
    )
    empty = await _get(client, f"/api/v1/runs/{RUN}/metrics/nope/history", max_points=10)
    assert empty["steps"] == [] and empty["downsampled"] is False


# --- writes refused before anything is produced ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("post", "/api/v1/runs/foreign/params", {"params": {"a": "1"}}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("post", "/api/v1/runs/run01/params", {"params": {"lr": "9"}}, 400, "INVALID_PARAMETER_VALUE"),
        ("post", "/api/v1/runs/run24/tags", {"tags": {"a": "1"}}, 400, "INVALID_PARAMETER_VALUE"),
        ("delete", "/api/v1/runs/run01/tags/nope", None, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("post", "/api/v1/experiments", {"name": "Alpha"}, 400, "RESOURCE_ALREADY_EXISTS"),
        ("post", "/api/v1/experiments", {"name": "old-name"}, 400, "RESOURCE_ALREADY_EXISTS"),
        ("patch", f"/api/v1/experiments/{experiment_id_for(T, 'beta')}", {"name": "Alpha"}, 400,
         "RESOURCE_ALREADY_EXISTS"),
        ("delete", "/api/v1/experiments/0", None, 400, "INVALID_PARAMETER_VALUE"),
        ("delete", f"/api/v1/experiments/{experiment_id_for(OTHER, 'secret')}", None, 404,
         "RESOURCE_DOES_NOT_EXIST"),
        ("post", "/api/v1/runs", {"experiment_id": experiment_id_for(T, "gamma")}, 400, "INVALID_PARAMETER_VALUE"),
        ("post", "/api/v1/runs", {"experiment_name": "gamma"}, 400, "INVALID_PARAMETER_VALUE"),
        ("post", "/api/v1/runs", {"experiment_id": "nope"}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("post", "/api/v1/runs", {"parent_run_id": "foreign"}, 404, "RESOURCE_DOES_NOT_EXIST"),
    ],
)  # fmt: skip
async def test_refused_writes(
    client: httpx.AsyncClient, method: str, url: str, body: Any, status: int, code: str
) -> None:
    r = await client.request(method.upper(), url, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error_code"] == code


# --- read-your-writes through real Postgres LISTEN/NOTIFY and polling ------------------------


async def test_pending_write_and_consistency_token(client: httpx.AsyncClient, dsn: str) -> None:
    r = await client.post("/api/v1/runs/run01/tags", json={"tags": {"k": "v"}})
    assert r.status_code == 202 and r.json()["projected"] is False  # nothing projects the fake log
    token = r.json()["consistency_token"]
    pending = await client.get("/api/v1/runs/run01", params={"consistency_token": token})
    assert pending.status_code == 503 and pending.headers["retry-after"] == "1"

    # The projector's side: advance the checkpoint and notify, in one transaction.
    from services.api.consistency import ConsistencyToken

    parsed = ConsistencyToken.decode(token)
    ((partition, offset),) = parsed.offsets
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO projector_checkpoints (consumer_group, incarnation, topic, partition, committed)"
                " VALUES ('runledger-projector', $1, $2, $3, $4)",
                parsed.incarnation,
                parsed.topic,
                partition,
                offset,
            )
            await conn.execute(
                "SELECT pg_notify('runledger_projected', $1)",
                notification(PartitionKey("runledger-projector", "x", parsed.topic, 0), 0),
            )
        ok = await client.get("/api/v1/runs/run01", params={"consistency_token": token})
        assert ok.status_code == 200  # found by polling (the notification named another incarnation)

        r2 = await client.post("/api/v1/runs/run02/tags", json={"tags": {"k": "v"}})
        t2 = ConsistencyToken.decode(r2.json()["consistency_token"])
        ((p2, o2),) = t2.offsets
        await conn.execute(
            "SELECT pg_notify('runledger_projected', $1)",
            notification(PartitionKey("runledger-projector", t2.incarnation, t2.topic, p2), o2),
        )
        again = await client.get(
            "/api/v1/runs/run02", params={"consistency_token": r2.json()["consistency_token"]}
        )
        assert again.status_code == 200  # the notification alone suffices
    finally:
        await conn.close()
