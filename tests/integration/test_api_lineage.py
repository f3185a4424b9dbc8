"""GET /api/v1/lineage against a real Postgres, with lineage rows seeded as the projector writes them.

Two tenants hold look-alike graphs (same run ids); only the caller's may show. The graph
of the tenant under test (-> is an edge, its relation in brackets):

    mnist@v1 -[input]-> run-a -[produced]-> net@1
                        run-a -[fine_tuned_from]-> run-b
    extra@<digest12> -[input]-> run-b -[output]-> preds@v1 -[input]-> run-c
    chain: c00 -> c01 -> ... -> c12 (runs, resumed_from)
    cycle: x -> y -> z -> x (runs, resumed_from)
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.lineage import dataset_id, model_id
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from services.api.lineage import service as lineage_service
from tests.integration.conftest import create_database
from tests.support.auth import provision
from tests.unit.test_api_errors import NoClickHouse, RecordingPublisher

pytestmark = pytest.mark.integration

T, OTHER = "lineage-t", "lineage-other"
DIGEST = "sha256:" + "ab12" * 16
MNIST = dataset_id("mnist", "v1")
EXTRA = dataset_id("extra", digest=DIGEST)
PREDS = dataset_id("preds", "v1")
NESTED = dataset_id("org/corpus", "2024-01")
ORPHAN = dataset_id("orphan", "v9")
NET = model_id("net", 1)
LONE_MODEL = model_id("lonely-model", 4)
CHAIN = [f"c{i:02d}" for i in range(13)]


def _edge(sk: str, si: str, tk: str, ti: str, rel: str) -> tuple[str, str, str, str, str]:
    return (sk, si, tk, ti, rel)


GRAPH = [
    _edge("dataset", MNIST, "run", "run-a", "input"),
    _edge("run", "run-a", "model", NET, "produced"),
    _edge("run", "run-a", "run", "run-b", "fine_tuned_from"),
    _edge("dataset", EXTRA, "run", "run-b", "input"),
    _edge("run", "run-b", "dataset", PREDS, "output"),
    _edge("dataset", PREDS, "run", "run-c", "input"),
    _edge("dataset", NESTED, "run", "run-c", "input"),
    *(_edge("run", a, "run", b, "resumed_from") for a, b in itertools.pairwise(CHAIN)),
    _edge("run", "x", "run", "y", "resumed_from"),
    _edge("run", "y", "run", "z", "resumed_from"),
    _edge("run", "z", "run", "x", "resumed_from"),
]
# The other tenant: same ids, other edges that must never leak into T's graphs.
FOREIGN = [
    _edge("dataset", MNIST, "run", "run-a", "input"),
    _edge("run", "run-a", "model", "secret@1", "produced"),
    _edge("dataset", MNIST, "run", "foreign", "input"),
    _edge("run", "run-b", "run", "spy", "resumed_from"),
]


def _input_body(name: str, digest: str, version: str | None, source: str) -> str:
    tags = {"mlflow.data.context": "training"} | ({"version": version} if version else {})
    body = {"name": name, "digest": digest, "source_type": "s3", "source": source, "schema": ""}
    return orjson.dumps(body | {"profile": "", "tags": tags}).decode()


async def _seed(conn: asyncpg.Connection[Any]) -> None:
    await conn.executemany(
        "INSERT INTO lineage_edges (tenant_id, source_kind, source_id, target_kind, target_id, relation)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(T, *e) for e in GRAPH] + [(OTHER, *e) for e in FOREIGN],
    )
    runs = [
        (T, "run-a", "base", "FINISHED"),
        (T, "run-b", "finetune", "RUNNING"),
        (T, "run-c", "eval", "FINISHED"),
        (T, "lonely", "no-lineage", "FINISHED"),
        (OTHER, "run-a", "theirs", "FAILED"),
        (OTHER, "foreign", "foreign", "FAILED"),
    ]
    await conn.executemany(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, name, status, start_time)"
        " VALUES ($1, $2, '0', $3, $4, 1000)",
        runs,
    )
    await conn.executemany(
        "INSERT INTO model_versions (tenant_id, model_name, version, run_id, source, stage)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (T, "net", 1, "run-a", "s3://models/net/1", "Production"),
            (T, "lonely-model", 4, None, "", "None"),
            (OTHER, "net", 1, "run-a", "s3://theirs", "Archived"),
        ],
    )
    await conn.executemany(
        "INSERT INTO dataset_inputs (tenant_id, run_id, name, digest, body) VALUES ($1, $2, $3, $4, $5::jsonb)",
        [
            (T, "run-a", "mnist", "", _input_body("mnist", "", "v1", "s3://data/mnist")),
            (T, "run-b", "extra", DIGEST, _input_body("extra", DIGEST, None, "s3://data/extra")),
            (T, "lonely", "orphan", "", _input_body("orphan", "", "v9", "s3://data/orphan")),
            (OTHER, "run-a", "mnist", "", _input_body("mnist", "", "v1", "s3://theirs/mnist")),
        ],
    )


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await _seed(conn)
    finally:
        await conn.close()
    return dsn


async def _client_for(dsn: str, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    key = generate_key()  # provisioned by the lifespan as admin of `tenant`
    settings = Settings(postgres_dsn=dsn, default_tenant=tenant, bootstrap_api_key=key.token)
    app = create_app(settings, NoClickHouse(), publisher=RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {key.token}"},
        ) as c,
    ):
        yield c


@pytest.fixture(scope="module")
async def client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client_for(dsn, T):
        yield c


@pytest.fixture(scope="module")
async def other_client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client_for(dsn, OTHER):
        yield c


async def _graph(
    client: httpx.AsyncClient, kind: str, node: str, expect: int = 200, **params: Any
) -> dict[str, Any]:
    r = await client.get(f"/api/v1/lineage/{kind}/{node}", params=params)
    assert r.status_code == expect, r.text
    body: dict[str, Any] = r.json()
    return body


def _nodes(body: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(n["kind"], n["id"]): n["depth"] for n in body["nodes"]}


def _edges(body: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    return {
        (e["source_kind"], e["source_id"], e["target_kind"], e["target_id"], e["relation"])
        for e in body["edges"]
    }


async def test_both_directions_depth_one_and_two(client: httpx.AsyncClient) -> None:
    one = await _graph(client, "run", "run-b", depth=1)
    assert one["root"] == {"kind": "run", "id": "run-b"}
    assert one["nodes"][0]["id"] == "run-b" and one["nodes"][0]["depth"] == 0
    assert _nodes(one) == {
        ("run", "run-b"): 0,
        ("run", "run-a"): 1,
        ("dataset", EXTRA): 1,
        ("dataset", PREDS): 1,
    }
    assert _edges(one) == {GRAPH[2], GRAPH[3], GRAPH[4]}
    assert one["truncated"] is False and one["direction"] == "both" and one["depth"] == 1

    two = await _graph(client, "run", "run-b", depth=2)
    assert _nodes(two) == _nodes(one) | {
        ("dataset", MNIST): 2,
        ("model", NET): 2,
        ("run", "run-c"): 2,
    }
    assert _edges(two) == set(GRAPH[:6])


async def test_default_depth_is_three(client: httpx.AsyncClient) -> None:
    body = await _graph(client, "run", "run-b")
    assert body["depth"] == 3
    assert _nodes(body)[("dataset", NESTED)] == 3  # run-b -> preds -> run-c <- org/corpus


async def test_upstream_and_downstream(client: httpx.AsyncClient) -> None:
    up = await _graph(client, "run", "run-b", depth=10, direction="upstream")
    assert _nodes(up) == {
        ("run", "run-b"): 0,
        ("run", "run-a"): 1,
        ("dataset", EXTRA): 1,
        ("dataset", MNIST): 2,
    }
    assert _edges(up) == {GRAPH[0], GRAPH[2], GRAPH[3]}  # not the model run-a produced

    down = await _graph(client, "run", "run-b", depth=10, direction="downstream")
    assert _nodes(down) == {("run", "run-b"): 0, ("dataset", PREDS): 1, ("run", "run-c"): 2}
    assert _edges(down) == {GRAPH[4], GRAPH[5]}

    model_up = await _graph(client, "model", NET, direction="upstream")
    assert set(_nodes(model_up)) == {("model", NET), ("run", "run-a"), ("dataset", MNIST)}


async def test_depth_bound_on_a_long_chain(client: httpx.AsyncClient) -> None:
    body = await _graph(client, "run", "c00", depth=10, direction="downstream")
    assert _nodes(body) == {("run", c): i for i, c in enumerate(CHAIN[:11])}
    assert len(body["edges"]) == 10
    back = await _graph(client, "run", "c12", depth=4)
    assert _nodes(back) == {("run", CHAIN[12 - i]): i for i in range(5)}
    for bad in (0, 11, -1):
        r = await client.get("/api/v1/lineage/run/c00", params={"depth": bad})
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"


async def test_cycles_end_at_the_depth_bound(client: httpx.AsyncClient) -> None:
    for direction in ("both", "upstream", "downstream"):
        body = await _graph(client, "run", "x", depth=10, direction=direction)
        assert set(_nodes(body)) == {("run", "x"), ("run", "y"), ("run", "z")}
        assert len(body["edges"]) == 3
    down = await _graph(client, "run", "x", depth=10, direction="downstream")
    assert _nodes(down) == {("run", "x"): 0, ("run", "y"): 1, ("run", "z"): 2}


async def test_node_details(client: httpx.AsyncClient) -> None:
    body = await _graph(client, "run", "run-b", depth=2)
    nodes = {(n["kind"], n["id"]): n for n in body["nodes"]}
    run_a = nodes[("run", "run-a")]
    assert run_a["label"] == "base" and run_a["details"]["status"] == "FINISHED"
    assert nodes[("run", "run-b")]["details"]["status"] == "RUNNING"
    net = nodes[("model", NET)]
    assert net["label"] == "net"
    assert net["details"] == {
        "name": "net",
        "version": 1,
        "run_id": "run-a",
        "source": "s3://models/net/1",
        "stage": "Production",
    }
    mnist = nodes[("dataset", MNIST)]
    assert mnist["label"] == "mnist"
    assert mnist["details"] == {
        "version": "v1",
        "digest": None,
        "source": "s3://data/mnist",
        "source_type": "s3",
    }
    extra = nodes[("dataset", EXTRA)]
    assert extra["details"]["digest"] == DIGEST and extra["details"]["version"] is None
    assert nodes[("dataset", PREDS)]["details"] == {}  # an output: no input record describes it


async def test_ids_with_slashes_route(client: httpx.AsyncClient) -> None:
    body = await _graph(client, "dataset", NESTED, depth=1)
    assert _nodes(body) == {("dataset", "org/corpus@2024-01"): 0, ("run", "run-c"): 1}


async def test_not_found_and_known_without_edges(client: httpx.AsyncClient) -> None:
    for kind, node in (
        ("run", "nope"),
        ("dataset", "mnist@v2"),
        ("model", "net@2"),
        ("model", "x"),
        ("model", "m@99999999999"),
    ):
        r = await client.get(f"/api/v1/lineage/{kind}/{node}")
        assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", (kind, node)
    for kind, node in (("run", "lonely"), ("dataset", ORPHAN), ("model", LONE_MODEL)):
        body = await _graph(client, kind, node)
        assert _nodes(body) == {(kind, node): 0} and body["edges"] == []
    # Edges only on the other side of a one-way walk: still found, just alone.
    body = await _graph(client, "dataset", MNIST, direction="upstream")
    assert _nodes(body) == {("dataset", MNIST): 0}
    r = await client.get("/api/v1/lineage/experiment/0")
    assert r.status_code == 400


async def test_tenant_isolation(client: httpx.AsyncClient, other_client: httpx.AsyncClient) -> None:
    ours = await _graph(client, "dataset", MNIST, depth=10)
    ids = {i for _, i in _nodes(ours)}
    assert not ids & {"secret@1", "foreign", "spy"}
    theirs = await _graph(other_client, "dataset", MNIST, depth=10)
    assert _nodes(theirs) == {
        ("dataset", MNIST): 0,
        ("run", "run-a"): 1,
        ("run", "foreign"): 1,
        ("model", "secret@1"): 2,
    }
    assert {n["label"] for n in theirs["nodes"] if n["kind"] == "run"} == {"theirs", "foreign"}
    # Our lonely run and our models are unknown to them.
    r = await other_client.get("/api/v1/lineage/run/lonely")
    assert r.status_code == 404
    r = await other_client.get(f"/api/v1/lineage/model/{LONE_MODEL}")
    assert r.status_code == 404


async def test_huge_walks_are_truncated(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lineage_service, "MAX_WALK_ROWS", 4)
    body = await _graph(client, "run", "c00", depth=10, direction="downstream")
    assert body["truncated"] is True
    assert _nodes(body) == {("run", c): i for i, c in enumerate(CHAIN[:4])}
    assert len(body["edges"]) == 3


async def test_a_grant_narrowed_to_another_experiment_sees_no_lineage(
    client: httpx.AsyncClient, dsn: str
) -> None:
    everything = await provision(dsn, T, Role.VIEWER, experiment_id="0")  # every seeded run is in "0"
    elsewhere = await provision(dsn, T, Role.ENGINEER, experiment_id="not-0")
    for _ in range(50):  # the API's auth watcher picks the new keys up within a second
        if (await client.get("/api/v1/whoami", headers=elsewhere.headers)).status_code == 200:
            break
        await asyncio.sleep(0.1)
    full = await _graph(client, "run", "run-b", depth=2)
    r = await client.get("/api/v1/lineage/run/run-b", params={"depth": 2}, headers=everything.headers)
    assert r.status_code == 200 and _nodes(r.json()) == _nodes(full) and _edges(r.json()) == _edges(full)
    for kind, node in (("run", "run-a"), ("dataset", MNIST), ("model", NET), ("dataset", ORPHAN)):
        r = await client.get(f"/api/v1/lineage/{kind}/{node}", headers=elsewhere.headers)
        assert r.status_code == 404, (kind, node, r.text)
