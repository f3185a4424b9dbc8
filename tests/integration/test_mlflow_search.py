"""MLflow runs/search against a real Postgres: results and their exact order (NaN and
missing values last in both directions, MLflow's tie-breakers), keyset paging that returns
every run once, tenant isolation and run_view_type.

The expected answers come from an independent reference: plain Python predicates per case
and MLflow's own sorting algorithm (a stable multi-pass sort, SearchUtils.sort).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest

from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.postgres.migrate import migrate
from services.api.errors import InvalidParameter
from services.api.mlflow.search import parse_filter, parse_order_by
from services.api.mlflow.search_repository import search_run_ids
from tests.integration.conftest import create_database

pytestmark = pytest.mark.integration

TENANT, OTHER = "t-search", "t-other"


@dataclass
class _Run:
    run_id: str
    experiment_id: str
    name: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None
    lifecycle_stage: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    datasets: list[tuple[str, str, str]] = field(default_factory=list)  # name, digest, context

    @property
    def artifact_uri(self) -> str:
        return f"mlflow-artifacts:/{self.experiment_id}/{self.run_id}/artifacts"


def _make_runs() -> list[_Run]:
    runs = []
    for i in range(40):
        start = 1000 + (i * 7) % 13  # many ties, not in run_id order
        run = _Run(
            run_id=f"run{i:02d}",
            experiment_id="1" if i % 4 else "2",
            name=f"name{i % 5}",
            user_id="alice" if i % 2 else "bob",
            status=("FINISHED", "FAILED", "RUNNING")[i % 3],
            start_time=start,
            end_time=None if i % 6 == 0 else start + 40 + i,
            lifecycle_stage="deleted" if i % 10 == 3 else "active",
        )
        if i % 5:
            run.metrics["acc"] = math.nan if i % 9 == 4 else (i * 37 % 11) / 10
        if i % 3:
            run.metrics["loss"] = math.inf if i == 7 else -i * 0.5
        run.params["lr"] = ("0.1", "0.01", "0.001")[i % 3]
        if i % 4 != 1:
            run.params["model"] = ("ResNet50", "resnet18", "vit")[i % 3]
        if i % 7:
            run.tags["team"] = "ml" if i % 2 else "ML-infra"
        run.tags["mlflow.runName"] = run.name
        if i % 5 == 2:
            run.datasets.append(("train", "d1", "training"))
        if i % 5 == 3:
            run.datasets.append(("eval", "d2", "eval"))
        runs.append(run)
    return runs


RUNS = _make_runs()


async def _insert(conn: asyncpg.Connection[Any], tenant: str, runs: list[_Run]) -> None:
    await conn.executemany(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, name, user_id, status, start_time, end_time,"
        " lifecycle_stage) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            (
                tenant,
                r.run_id,
                r.experiment_id,
                r.name,
                r.user_id,
                r.status,
                r.start_time,
                r.end_time,
                r.lifecycle_stage,
            )
            for r in runs
        ],
    )
    for table, attr in (("params", "params"), ("tags", "tags")):
        await conn.executemany(
            f"INSERT INTO {table} (tenant_id, run_id, key, value) VALUES ($1, $2, $3, $4)",
            [(tenant, r.run_id, k, v) for r in runs for k, v in getattr(r, attr).items()],
        )
    await conn.executemany(
        "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
        " VALUES ($1, $2, $3, $4, 0, 0, 0)",
        [(tenant, r.run_id, k, v) for r in runs for k, v in r.metrics.items()],
    )
    await conn.executemany(
        "INSERT INTO dataset_inputs (tenant_id, run_id, name, digest, body) VALUES ($1, $2, $3, $4, $5::jsonb)",
        [
            (tenant, r.run_id, n, d, orjson.dumps({"name": n, "tags": {"mlflow.data.context": c}}).decode())
            for r in runs
            for n, d, c in r.datasets
        ],
    )


@pytest.fixture(scope="module")
async def conn(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(await create_database(postgres))
    try:
        await migrate(connection)
        await _insert(connection, TENANT, RUNS)
        # Another tenant's runs with the same ids and experiments: never visible.
        await _insert(
            connection,
            OTHER,
            [_Run(r.run_id, r.experiment_id, "x", "x", "FINISHED", 9999, None, "active") for r in RUNS],
        )
        yield connection
    finally:
        await connection.close()


# MLflow's reference sort (mlflow.utils.search_utils.SearchUtils.sort and _get_value_for_sort).


def _value(run: _Run, entity: str, key: str) -> Any:
    if entity == "metric":
        return run.metrics.get(key)
    if entity == "parameter":
        return run.params.get(key)
    if entity == "tag":
        return run.tags.get(key)
    return {"run_name": run.name}.get(key, getattr(run, key, None))


def _reference_sort(runs: list[_Run], order_by: list[str]) -> list[str]:
    ordered = sorted(runs, key=lambda r: (-r.start_time, r.run_id))
    for clause in reversed(order_by):
        (key,) = parse_order_by([clause])

        def sort_key(
            run: _Run, entity: str = key.entity.value, name: str = key.key, asc: bool = key.ascending
        ) -> Any:
            value = _value(run, entity, name)
            is_none = value is None
            is_nan = isinstance(value, float) and math.isnan(value)
            fill = (1 if asc else -1) * math.inf
            if is_none:
                value = fill
            elif is_nan:
                value = -fill
            missing = is_none or is_nan
            return (missing, value) if asc else (not missing, value)

        ordered = sorted(ordered, key=sort_key, reverse=not key.ascending)
    return [r.run_id for r in ordered]


def _nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)


def _gt(value: float | None, bound: float) -> bool:
    return value is not None and not _nan(value) and value > bound


CASES: list[tuple[str, list[str], Callable[[_Run], bool]]] = [
    ("", [], lambda r: True),
    ("metrics.acc > 0.5", ["metrics.acc DESC"], lambda r: _gt(r.metrics.get("acc"), 0.5)),
    ("metrics.acc >= 0.3", ["metrics.acc ASC"], lambda r: _gt(r.metrics.get("acc"), 0.29999)),
    ("", ["metrics.acc DESC"], lambda r: True),  # values, then NaN, then no metric
    ("", ["metrics.acc ASC"], lambda r: True),
    ("", ["metrics.loss DESC", "run_name ASC"], lambda r: True),  # +Infinity first
    (
        "metrics.acc >= 0.3 AND params.lr = '0.01'",
        ["metrics.loss ASC"],
        lambda r: _gt(r.metrics.get("acc"), 0.29999) and r.params["lr"] == "0.01",
    ),
    ("metrics.acc != 0.5", [], lambda r: "acc" in r.metrics and r.metrics["acc"] != 0.5),  # NaN != 0.5
    ("metrics.acc = 0.5", [], lambda r: r.metrics.get("acc") == 0.5),
    ("metrics.acc <= 0.2", ["metrics.acc"], lambda r: _gt(0.2 + 1e-9, r.metrics.get("acc", math.nan))),
    ("metrics.loss < -5", ["metrics.loss DESC"], lambda r: r.metrics.get("loss", 0) < -5),
    ("metrics.nothing > 0", [], lambda r: False),
    (
        "params.model ILIKE 'resnet%'",
        ["params.model DESC", "start_time ASC"],
        lambda r: r.params.get("model", "").lower().startswith("resnet"),
    ),
    ("params.model LIKE 'res%'", [], lambda r: r.params.get("model", "").startswith("res")),
    ("params.model LIKE '_it'", [], lambda r: r.params.get("model") == "vit"),
    ("params.model != 'vit'", ["params.model"], lambda r: r.params.get("model", "vit") != "vit"),
    ("params.model IS NULL", [], lambda r: "model" not in r.params),
    ("params.model IS NOT NULL", ["params.model ASC"], lambda r: "model" in r.params),
    ("tags.team IS NULL", ["run_name"], lambda r: "team" not in r.tags),
    ("tags.team LIKE 'ML%'", [], lambda r: r.tags.get("team", "").startswith("ML")),
    ("tags.team ILIKE 'ml%'", ["tags.team DESC"], lambda r: "team" in r.tags),
    ("tags.`mlflow.runName` = 'name3'", [], lambda r: r.name == "name3"),
    ("", ["tags.team ASC", "run_id DESC"], lambda r: True),
    (
        "status != 'RUNNING' AND attributes.end_time > 1050",
        ["end_time DESC"],
        lambda r: r.status != "RUNNING" and (r.end_time or 0) > 1050,
    ),
    ("", ["end_time ASC"], lambda r: True),
    ("end_time != 1060.5", [], lambda r: r.end_time is not None),
    ("end_time <= 1060.5", [], lambda r: r.end_time is not None and r.end_time <= 1060),
    ("created >= 1005", ["attributes.start_time DESC", "run_id DESC"], lambda r: r.start_time >= 1005),
    ("start_time = 1003", [], lambda r: r.start_time == 1003),
    ("run_id IN ('run01', 'run02', 'run05', 'run03')", [], lambda r: r.run_id in ("run01", "run02", "run05")),
    ("run_id NOT IN ('run01')", ["user_id DESC"], lambda r: r.run_id != "run01"),
    ("run_id = 'run11'", [], lambda r: r.run_id == "run11"),
    ("run_name = 'name2' AND user_id = 'bob'", [], lambda r: r.name == "name2" and r.user_id == "bob"),
    ("`Run name` LIKE 'name%'", ["status ASC"], lambda r: True),
    ("artifact_uri LIKE 'mlflow-artifacts:/2/%'", [], lambda r: r.experiment_id == "2"),
    ("artifact_uri = 'mlflow-artifacts:/1/run05/artifacts'", [], lambda r: r.run_id == "run05"),
    ("lifecycle_stage = 'active' AND status ILIKE 'finished'", [], lambda r: r.status == "FINISHED"),
    ("datasets.name = 'train'", [], lambda r: any(d[0] == "train" for d in r.datasets)),
    ("datasets.context = 'eval'", [], lambda r: any(d[2] == "eval" for d in r.datasets)),
    ("datasets.digest IN ('d1', 'd2')", [], lambda r: bool(r.datasets)),
    ("datasets.name != 'train'", [], lambda r: any(d[0] != "train" for d in r.datasets)),
    (
        "metrics.acc > 0.1 AND params.lr != '0.1' AND tags.team = 'ml' AND status != 'RUNNING'",
        ["metrics.loss DESC"],
        lambda r: (
            _gt(r.metrics.get("acc"), 0.1)
            and r.params["lr"] != "0.1"
            and r.tags.get("team") == "ml"
            and r.status != "RUNNING"
        ),
    ),
]


async def _search_all(
    conn: asyncpg.Connection[Any],
    filter_string: str,
    order_by: list[str],
    max_results: int,
    view: str = "ACTIVE_ONLY",
    experiments: tuple[str, ...] = ("1", "2"),
) -> list[str]:
    conditions, order = parse_filter(filter_string), parse_order_by(order_by)
    ids: list[str] = []
    token: str | None = None
    for _ in range(100):
        page, token = await search_run_ids(
            conn, TENANT, list(experiments), conditions, order, view, max_results, token
        )
        assert len(page) <= max_results
        ids.extend(page)
        if token is None:
            return ids
        assert len(page) == max_results
    raise AssertionError("paging did not end")


@pytest.mark.parametrize(("filter_string", "order_by", "predicate"), CASES)
async def test_results_and_order_match_mlflow(
    conn: asyncpg.Connection[Any], filter_string: str, order_by: list[str], predicate: Callable[[_Run], bool]
) -> None:
    active = [r for r in RUNS if r.lifecycle_stage == "active" and predicate(r)]
    expected = _reference_sort(active, order_by)
    assert await _search_all(conn, filter_string, order_by, 1000) == expected
    for page_size in (1, 4, 7):  # every run once, in the same order, whatever the page size
        assert await _search_all(conn, filter_string, order_by, page_size) == expected


@pytest.mark.parametrize(
    ("view", "stages"),
    [("ACTIVE_ONLY", {"active"}), ("DELETED_ONLY", {"deleted"}), ("ALL", {"active", "deleted"})],
)
async def test_run_view_type(conn: asyncpg.Connection[Any], view: str, stages: set[str]) -> None:
    expected = _reference_sort([r for r in RUNS if r.lifecycle_stage in stages], ["metrics.acc DESC"])
    assert await _search_all(conn, "", ["metrics.acc DESC"], 3, view=view) == expected


async def test_experiment_scope_and_tenant_isolation(conn: asyncpg.Connection[Any]) -> None:
    only_two = await _search_all(conn, "", [], 5, experiments=("2",))
    assert only_two == _reference_sort(
        [r for r in RUNS if r.experiment_id == "2" and r.lifecycle_stage == "active"], []
    )
    assert await _search_all(conn, "", [], 5, experiments=("404",)) == []
    assert await search_run_ids(conn, TENANT, [], [], [], "ALL", 10, None) == ([], None)
    other, _ = await search_run_ids(conn, OTHER, ["1", "2"], [], [], "ALL", 1000, None)
    assert len(other) == len(RUNS)  # the other tenant sees its own copies only
    mine = await _search_all(conn, "", [], 1000, view="ALL")
    assert len(mine) == len(RUNS)


async def test_a_page_token_only_resumes_its_own_search(conn: asyncpg.Connection[Any]) -> None:
    conditions = parse_filter("metrics.acc > 0")
    order = parse_order_by(["metrics.acc DESC"])
    _, token = await search_run_ids(conn, TENANT, ["1", "2"], conditions, order, "ACTIVE_ONLY", 2, None)
    assert token is not None
    with pytest.raises(InvalidParameter, match="other filters"):
        await search_run_ids(conn, TENANT, ["1", "2"], [], order, "ACTIVE_ONLY", 2, token)
    with pytest.raises(InvalidParameter, match="other filters"):
        await search_run_ids(conn, TENANT, ["1", "2"], conditions, [], "ACTIVE_ONLY", 2, token)
    with pytest.raises(InvalidParameter, match="invalid page_token"):
        await search_run_ids(conn, TENANT, ["1", "2"], conditions, order, "ACTIVE_ONLY", 2, "garbage!")


@pytest.mark.parametrize(("max_results", "message"), [(0, "positive"), (50_001, "at most 50000")])
async def test_max_results_bounds(conn: asyncpg.Connection[Any], max_results: int, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        await search_run_ids(conn, TENANT, ["1"], [], [], "ACTIVE_ONLY", max_results, None)


async def test_unknown_run_view_type(conn: asyncpg.Connection[Any]) -> None:
    with pytest.raises(InvalidParameter, match="run_view_type"):
        await search_run_ids(conn, TENANT, ["1"], [], [], "SOME", 10, None)


async def test_max_results_50000_in_one_page(conn: asyncpg.Connection[Any]) -> None:
    ids, token = await search_run_ids(conn, TENANT, ["1", "2"], [], [], "ALL", 50_000, None)
    assert len(ids) == len(RUNS) and token is None


async def test_equality_on_values_longer_than_the_indexed_prefix(conn: asyncpg.Connection[Any]) -> None:
    # Params and tags are indexed on their first 256 characters: two values sharing that
    # prefix must still be told apart, and a short literal must not match a long value.
    shared = "v" * 256
    run_ids = [r.run_id for r in RUNS if r.lifecycle_stage == "active"][:2]
    await conn.executemany(
        "INSERT INTO params (tenant_id, run_id, key, value) VALUES ($1, $2, 'long', $3)",
        [(TENANT, run_ids[0], shared + "a"), (TENANT, run_ids[1], shared + "b")],
    )
    try:
        assert await _search_all(conn, f"params.long = '{shared}a'", [], 10) == [run_ids[0]]
        assert await _search_all(conn, f"params.long = '{shared}b'", [], 10) == [run_ids[1]]
        assert await _search_all(conn, f"params.long = '{shared}'", [], 10) == []
        assert await _search_all(conn, "params.long = 'v'", [], 10) == []
    finally:
        await conn.execute("DELETE FROM params WHERE tenant_id = $1 AND key = 'long'", TENANT)
