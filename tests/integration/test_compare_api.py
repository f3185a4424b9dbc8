"""POST /api/v1/compare and the hyperparameter importance route over real Postgres and chdb,
on planted runs: the numbers are recomputed here independently (numpy, scipy), and other
tenants' runs answer 404 whichever way they are named."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import numpy as np
import pyarrow as pa
import pytest
from scipy import stats  # type: ignore[import-untyped]

from runledger.auth.keys import ApiKey, generate_key
from runledger.auth.model import Role
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import experiment_id_for
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger_sdk.helpers.fairness import log_fairness_metrics
from tests.support.auth import Identity, provision
from tests.support.inprocess import api_client, migrated_database

pytestmark = pytest.mark.integration

T, OTHER = "cmp-tenant", "cmp-other"
EXP, HPO, SECRET = experiment_id_for(T, "seeds"), experiment_id_for(T, "hpo"), experiment_id_for(OTHER, "x")
RNG = np.random.default_rng(11)
STABLE = RNG.normal(0.9, 0.004, size=5)  # lr=0.1, seeds 0..4
SHAKY = RNG.normal(0.6, 0.15, size=4)  # lr=1.0, seeds 0..3
STABLE_RUNS = [f"stable{i}" for i in range(5)]
SHAKY_RUNS = [f"shaky{i}" for i in range(4)]
HPO_N = 30
HPO_LR = RNG.choice([0.001, 0.01, 0.1, 1.0], size=HPO_N)
HPO_WD = RNG.choice([0.0, 0.1], size=HPO_N)
HPO_Y = -np.log10(HPO_LR) + RNG.normal(0, 0.02, size=HPO_N)
HOUR_MS = 3_600_000
CPU, RSS, GPU = [40.0, 120.0, 80.0], [2e9, 5e9, 3e9], [30.0, 90.0]


class Sink:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metrics(
        self, metrics: dict[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None:
        self.logged.update(metrics)


def planted_fairness() -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    groups = rng.choice(np.array(["north", "south"]), size=400)
    y = rng.integers(0, 2, size=400)
    flip = rng.random(400) < np.where(groups == "south", 0.3, 0.05)
    pred = np.where(flip, 1 - y, y)
    return log_fairness_metrics(y, pred, groups, attribute="region", run=Sink()), y, pred, groups  # type: ignore[arg-type]


FAIRNESS, Y, PRED, GROUPS = planted_fairness()


async def seed_postgres(conn: asyncpg.Connection[Any]) -> None:
    await conn.execute(
        "INSERT INTO experiments (tenant_id, experiment_id, name, creation_time, last_update_time)"
        " VALUES ($1, $2, 'seeds', 1, 1), ($1, $3, 'hpo', 1, 1), ($4, $5, 'x', 1, 1)",
        T, EXP, HPO, OTHER, SECRET,
    )  # fmt: skip
    runs, params, latest = [], [], []
    for i, (run, value) in enumerate(zip(STABLE_RUNS + SHAKY_RUNS, [*STABLE, *SHAKY], strict=True)):
        lr = "0.1" if run.startswith("stable") else "1.0"
        seed = i if run.startswith("stable") else i - 5
        runs.append((T, run, EXP, "FINISHED", 1_000 + i, 1_000 + i + HOUR_MS * (i + 1)))
        params += [(T, run, "lr", lr), (T, run, "seed", str(seed)), (T, run, "out_dir", f"/tmp/{run}")]
        latest += [(T, run, "val/acc", float(value)), (T, run, "train/loss", 1 - float(value))]
    latest += [(T, "stable0", k, v) for k, v in FAIRNESS.items()]
    for i in range(HPO_N):
        run = f"hpo{i}"
        runs.append((T, run, HPO, "FINISHED", 10_000 + i, 20_000 + i))
        params += [(T, run, "lr", str(HPO_LR[i])), (T, run, "wd", str(HPO_WD[i])), (T, run, "seed", str(i))]
        latest.append((T, run, "val/score", float(HPO_Y[i])))
    runs.append((OTHER, "theirs", SECRET, "FINISHED", 1, 2))
    runs.append((OTHER, "stable1", SECRET, "FINISHED", 1, 2))  # the same run id in another tenant
    latest.append((OTHER, "stable1", "val/acc", 123.0))
    await conn.executemany(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, status, start_time, end_time)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        runs,
    )
    await conn.executemany("INSERT INTO params VALUES ($1, $2, $3, $4)", params)
    await conn.executemany("INSERT INTO latest_metrics VALUES ($1, $2, $3, $4, 0, 0, 0)", latest)
    await conn.execute(
        "INSERT INTO artifacts VALUES ($1, 'stable0', 'model/weights.bin', 1000, 'sha256:a', 'x'),"
        " ($1, 'stable0', 'model/config.json', 24, 'sha256:b', 'x'), ($1, 'stable0', 'plots/a.png', 5, 'sha256:c', 'x'),"
        " ($1, 'stable1', 'export/m.onnx', 700, 'sha256:d', 'x')",
        T,
    )
    await conn.execute(
        "INSERT INTO model_versions VALUES ($1, 'm', 1, 'stable1', 'runs:/stable1/export', 'None')", T
    )


def points(tenant: str, run: str, key: str, values: list[float]) -> pa.Table:
    n = len(values)
    return pa.table(
        {
            "tenant_id": [tenant] * n,
            "experiment_id": [EXP] * n,
            "run_id": [run] * n,
            "key": [key] * n,
            "step": pa.array(range(n), pa.int64()),
            "timestamp": pa.array([1_700_000_000_000 + s for s in range(n)], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "value": pa.array(values, pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbClickHouse]:
    store = ChdbClickHouse(tmp_path_factory.mktemp("compare") / "clickhouse")
    store.migrate()
    store.insert_arrow("metric_points", points(T, "stable0", "system/cpu_percent", CPU))
    store.insert_arrow("metric_points", points(T, "stable0", "system/process_rss_bytes", RSS))
    store.insert_arrow("metric_points", points(T, "stable0", "system/gpu0/utilization_percent", GPU))
    store.insert_arrow("metric_points", points(T, "stable0", "val/acc", [0.5, 0.95, float("nan"), 0.9]))
    store.insert_arrow("metric_points", points(OTHER, "stable1", "system/process_rss_bytes", [9e12]))
    yield store
    store.close()


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres, seed_postgres)


@pytest.fixture(scope="module")
def admin_key() -> ApiKey:
    return generate_key()


@pytest.fixture(scope="module")
async def client(dsn: str, clickhouse: ChdbClickHouse, admin_key: ApiKey) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(dsn, T, admin_key, clickhouse) as c:
        yield c


async def known(client: httpx.AsyncClient, identity: Identity) -> Identity:
    import asyncio

    for _ in range(100):
        if (await client.get("/api/v1/whoami", headers=identity.headers)).status_code == 200:
            return identity
        await asyncio.sleep(0.05)
    raise AssertionError("key never became usable")


async def compare(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/compare", json=body, **kw)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_performance_of_runs_and_filtered_groups(client: httpx.AsyncClient) -> None:
    out = await compare(
        client,
        {
            "runs": ["stable0", "shaky0"],
            "groups": [
                {"name": "lr=0.1", "experiment_id": EXP, "filter": "params.lr = '0.1'"},
                {"name": "lr=1.0", "run_ids": SHAKY_RUNS},
            ],
            "sections": ["performance"],
            "metrics": ["val/acc", "train/loss"],
            "baseline": "lr=1.0",
        },
    )
    assert [e["name"] for e in out["entities"]] == ["stable0", "shaky0", "lr=0.1", "lr=1.0"]
    assert sorted(out["entities"][2]["run_ids"]) == sorted(STABLE_RUNS)
    acc, loss = out["performance"]["metrics"]
    rows = {r["entity"]: r for r in acc["rows"]}
    assert rows["lr=0.1"]["value"] == pytest.approx(STABLE.mean())
    assert rows["lr=0.1"]["std"] == pytest.approx(STABLE.std(ddof=1))
    assert rows["lr=0.1"]["delta"] == pytest.approx(STABLE.mean() - SHAKY.mean())
    assert rows["lr=0.1"]["relative_delta"] == pytest.approx(
        (STABLE.mean() - SHAKY.mean()) / abs(SHAKY.mean())
    )
    assert rows["stable0"]["value"] == pytest.approx(STABLE[0])
    # min / max over the run's finite points, from ClickHouse.
    assert (rows["stable0"]["min"], rows["stable0"]["max"]) == (0.5, 0.95)
    best_acc = max(rows, key=lambda e: rows[e]["value"])
    assert acc["best"] == [best_acc] and acc["direction"] == "max"
    assert loss["direction"] == "min" and loss["best"] == [best_acc]  # loss = 1 - acc


async def test_group_by_a_param(client: httpx.AsyncClient) -> None:
    out = await compare(
        client,
        {
            "experiment_id": EXP,
            "group_by": ["params.lr"],
            "sections": ["performance"],
            "metrics": ["val/acc"],
        },
    )
    names = [e["name"] for e in out["entities"]]
    assert names == ["lr=0.1", "lr=1.0"]
    values = {r["entity"]: r["value"] for r in out["performance"]["metrics"][0]["rows"]}
    assert values == {"lr=0.1": pytest.approx(STABLE.mean()), "lr=1.0": pytest.approx(SHAKY.mean())}


async def test_stability_recomputed(client: httpx.AsyncClient) -> None:
    out = await compare(
        client,
        {
            "experiment_id": EXP,
            "sections": ["stability"],
            "metrics": ["val/acc"],
            "ignore_params": ["out_dir"],
        },
    )
    configs = {c["configuration"]["lr"]: c for c in out["stability"]["configurations"]}
    for lr, values, unstable in (("0.1", STABLE, False), ("1.0", SHAKY, True)):
        (m,) = configs[lr]["metrics"]
        std = math.sqrt(((values - values.mean()) ** 2).sum() / (len(values) - 1))
        half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
        assert m["mean"] == pytest.approx(values.mean())
        assert m["std"] == pytest.approx(std)
        assert m["cv"] == pytest.approx(std / abs(values.mean()))
        assert m["ci_low"] == pytest.approx(values.mean() - half)
        assert m["ci_high"] == pytest.approx(values.mean() + half)
        assert configs[lr]["unstable"] is unstable
    assert configs["0.1"]["seeds"] == ["0", "1", "2", "3", "4"]


async def test_resources_and_fairness(client: httpx.AsyncClient) -> None:
    out = await compare(client, {"runs": ["stable0", "stable1"], "sections": ["resources", "fairness"]})
    rows = {r["entity"]: r for r in out["resources"]["rows"]}
    s0 = rows["stable0"]
    assert s0["training_time_s"] == HOUR_MS / 1000
    assert s0["peak_memory_bytes"] == max(RSS)
    assert s0["cpu_percent_mean"] == pytest.approx(np.mean(CPU)) and s0["cpu_percent_peak"] == max(CPU)
    assert s0["gpu_count"] == 1 and s0["gpu_utilization_mean"] == pytest.approx(np.mean(GPU))
    assert s0["gpu_hours"] == pytest.approx(1.0)
    assert s0["model_size_bytes"] == 1024
    assert rows["stable1"]["model_size_bytes"] == 700  # under its model version's source
    assert rows["stable1"]["peak_memory_bytes"] is None  # the other tenant's series stays out
    (run,) = out["fairness"]["runs"]
    (attr,) = run["attributes"]
    sel = {g: PRED[g == GROUPS].mean() for g in ("north", "south")}
    tpr = {g: PRED[(g == GROUPS) & (Y == 1)].mean() for g in ("north", "south")}
    fpr = {g: PRED[(g == GROUPS) & (Y == 0)].mean() for g in ("north", "south")}
    assert attr["attribute"] == "region"
    assert attr["demographic_parity_difference"] == pytest.approx(abs(sel["north"] - sel["south"]))
    assert attr["equalized_odds_difference"] == pytest.approx(
        max(abs(tpr["north"] - tpr["south"]), abs(fpr["north"] - fpr["south"]))
    )
    accuracy = next(m for m in attr["metrics"] if m["metric"] == "accuracy")
    assert accuracy["worst_group"] == "south"


async def test_hyperparameter_importance(client: httpx.AsyncClient) -> None:
    r = await client.get(
        f"/api/v1/experiments/{HPO}/hyperparameter-importance", params={"metric": "val/score", "n_repeats": 3}
    )
    assert r.status_code == 200, r.text
    (result,) = r.json()["metrics"]
    ranked = result["result"]["importances"]
    assert [x["param"] for x in ranked] == ["lr", "wd"]
    assert ranked[0]["ci_low"] > 0.1 and result["result"]["reliable"]
    assert result["result"]["excluded"] == {"seed": "excluded by the request"}
    default = (await client.get(f"/api/v1/experiments/{HPO}/hyperparameter-importance?n_repeats=2")).json()
    assert [m["metric"] for m in default["metrics"]] == ["val/score"]


async def test_bad_requests_are_400(client: httpx.AsyncClient) -> None:
    for body in (
        {},
        {"runs": ["stable0"], "group_by": ["params.lr"]},
        {"experiment_id": EXP, "group_by": ["lr"]},
        {"runs": ["stable0"], "baseline": "nope"},
        {"runs": ["stable0"], "groups": [{"name": "stable0", "run_ids": ["stable1"]}]},
        {"groups": [{"name": "g", "filter": "params.lr = '0.1'"}]},
        {"groups": [{"name": "g", "experiment_id": EXP, "filter": "params.lr == oops"}]},
        {"runs": ["stable0"], "sections": ["vibes"]},
    ):
        r = await client.post("/api/v1/compare", json=body)
        assert r.status_code == 400, (body, r.text)


async def test_other_tenants_and_narrow_grants(client: httpx.AsyncClient, dsn: str) -> None:
    intruder = await known(client, await provision(dsn, OTHER, Role.ENGINEER))
    for body in (
        {"runs": ["stable0"]},
        {"groups": [{"name": "g", "run_ids": ["stable0"]}]},
        {"experiment_id": EXP},
        {"groups": [{"name": "g", "experiment_id": EXP, "filter": "params.lr = '0.1'"}]},
    ):
        r = await client.post("/api/v1/compare", json=body, headers=intruder.headers)
        assert r.status_code == 404, (body, r.text)
    r = await client.get(f"/api/v1/experiments/{HPO}/hyperparameter-importance", headers=intruder.headers)
    assert r.status_code == 404
    # Its own run with the same id is its own data, never ours.
    mine = await compare(client, {"runs": ["stable1"], "sections": ["performance"]}, headers=intruder.headers)
    assert mine["performance"]["metrics"][0]["rows"][0]["value"] == 123.0
    # The other tenant's run id answers 404 to us.
    assert (await client.post("/api/v1/compare", json={"runs": ["theirs"]})).status_code == 404
    # A viewer may compare (a read); a grant narrowed to HPO may not see EXP's runs.
    viewer = await known(client, await provision(dsn, T, Role.VIEWER))
    await compare(client, {"runs": ["stable0"], "sections": ["performance"]}, headers=viewer.headers)
    narrow = await known(client, await provision(dsn, T, Role.VIEWER, experiment_id=HPO))
    r = await client.post("/api/v1/compare", json={"runs": ["stable0"]}, headers=narrow.headers)
    assert r.status_code == 404
    r = await client.get(f"/api/v1/experiments/{EXP}/hyperparameter-importance", headers=narrow.headers)
    assert r.status_code == 404
