"""MLflow run writes answer on the broker's acknowledgement; the same key's reads wait for them.

The in-process app runs on the real broker and Postgres with the projector held back, so
what the writes answer before projection, and what the reads wait for, is observable."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.serve import ProjectorThread
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.app import create_app
from tests.integration.test_mlflow_rest import API, basic, error, tags_of
from tests.support.inprocess import chdb_store, migrated_database, module_settings

pytestmark = pytest.mark.integration

T = "mlflow-ack"
WAIT_S = 1.0  # write_wait_timeout_s: how long a read waits for unprojected writes before its 503


@pytest.fixture(scope="module")
def settings(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return module_settings(broker, tmp_path_factory.mktemp("mlflow-ack"), T, write_wait_timeout_s=WAIT_S)


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres)


@pytest.fixture(scope="module")
def clickhouse(settings: Settings) -> Iterator[ChdbClickHouse]:
    yield from chdb_store(settings)


@pytest.fixture(scope="module")
def projector(settings: Settings, dsn: str, clickhouse: ChdbClickHouse) -> Iterator[ProjectorThread]:
    """The module's projector, not started: the first test starts it once its writes are in."""
    thread = ProjectorThread(settings.model_copy(update={"postgres_dsn": dsn}), clickhouse)
    yield thread
    if thread.is_alive():
        thread.stop()


@asynccontextmanager
async def api(settings: Settings, clickhouse: ChdbClickHouse) -> AsyncIterator[httpx.AsyncClient]:
    key = generate_key()  # provisioned by the lifespan as admin of T
    app = create_app(settings.model_copy(update={"bootstrap_api_key": key.token}), clickhouse)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            timeout=60,
            headers=basic(key.key_id, key.secret),
        ) as client,
    ):
        yield client


async def call(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = await client.post(API + path, json=body)
    return time.perf_counter() - start, response


async def projected_run(dsn: str, run_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow("SELECT status FROM runs WHERE tenant_id = $1 AND run_id = $2", T, run_id)
    finally:
        await conn.close()


async def test_writes_answer_before_projection_and_reads_wait_for_them(
    settings: Settings, dsn: str, clickhouse: ChdbClickHouse, projector: ProjectorThread
) -> None:
    live = settings.model_copy(update={"postgres_dsn": dsn})
    async with api(live, clickhouse) as client:
        # No projector yet: the writes cannot be waiting for it.
        took, created = await call(client, "/runs/create", {"experiment_id": "0", "run_name": "early"})
        assert created.status_code == 200, created.text
        run = created.json()["run"]
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "RUNNING" and run["info"]["lifecycle_stage"] == "active"
        assert tags_of(run)["mlflow.runName"] == "early"
        assert took < WAIT_S, took
        assert await projected_run(dsn, run_id) is None

        batch = {
            "run_id": run_id,
            "metrics": [
                {"key": "loss", "value": 1.0 / (s + 1), "timestamp": 1_700_000_000_000, "step": s}
                for s in range(5)
            ],
            "params": [{"key": "lr", "value": "0.1"}],
            "tags": [{"key": "team", "value": "vision"}],
        }
        took, logged = await call(client, "/runs/log-batch", batch)
        assert logged.status_code == 200 and took < WAIT_S, (took, logged.text)
        took, ended = await call(client, "/runs/update", {"run_id": run_id, "status": "FINISHED"})
        assert ended.status_code == 200 and took < WAIT_S, (took, ended.text)
        info = ended.json()["run_info"]
        assert info["status"] == "FINISHED" and info["end_time"] > 0 and info["run_name"] == "early"

        # A read of the same key waits for those writes: without a projector it cannot be
        # answered, and says so with the 503 the mlflow client retries.
        start = time.perf_counter()
        unavailable = await client.get(API + "/runs/get", params={"run_id": run_id})
        assert time.perf_counter() - start >= WAIT_S * 0.9
        error(unavailable, 503, "TEMPORARILY_UNAVAILABLE")
        assert unavailable.headers["retry-after"] == "1"
        # So does a second param value, which must be checked against the unprojected first one.
        took, conflict = await call(
            client, "/runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.2"}
        )
        error(conflict, 503, "TEMPORARILY_UNAVAILABLE")

        projector.start()
        for _ in range(60):  # the projector joins its group, then the read sees every write
            answer = await client.get(API + "/runs/get", params={"run_id": run_id})
            if answer.status_code == 200:
                break
            error(answer, 503, "TEMPORARILY_UNAVAILABLE")
        assert answer.status_code == 200, answer.text
        got = answer.json()["run"]
        assert got["info"]["status"] == "FINISHED" and got["info"]["end_time"] == info["end_time"]
        assert {p["key"]: p["value"] for p in got["data"]["params"]} == {"lr": "0.1"}
        assert tags_of(got)["team"] == "vision"
        assert {m["key"]: m["step"] for m in got["data"]["metrics"]} == {"loss": 4}

        # Param immutability holds against a value acknowledged a moment ago (its
        # projection takes a projector round; the second write waits for it).
        for attempt in range(3):
            key = f"seed{attempt}"
            _, first = await call(client, "/runs/log-parameter", {"run_id": run_id, "key": key, "value": "1"})
            assert first.status_code == 200, first.text
            _, second = await call(
                client, "/runs/log-parameter", {"run_id": run_id, "key": key, "value": "2"}
            )
            error(second, 400, "INVALID_PARAMETER_VALUE")


async def test_projection_mode_answers_once_projected(
    settings: Settings, dsn: str, clickhouse: ChdbClickHouse, projector: ProjectorThread
) -> None:
    # A wait long enough for the projector to join its group: a write not projected within it
    # would answer anyway.
    live = settings.model_copy(
        update={"postgres_dsn": dsn, "mlflow_write_ack": "projection", "write_wait_timeout_s": 30}
    )
    if not projector.is_alive():  # this test ran alone
        projector.start()
    async with api(live, clickhouse) as client:
        for _ in range(3):
            _, created = await call(client, "/runs/create", {"experiment_id": "0"})
            assert created.status_code == 200, created.text
            run_id = created.json()["run"]["info"]["run_id"]
            assert await projected_run(dsn, run_id) is not None  # in Postgres before the answer
