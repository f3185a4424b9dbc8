"""The broker dies mid-run: the SDK spools, the broker returns empty (new incarnation),
and every point arrives exactly once in ClickHouse, as the API shows."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from tests.integration.conftest import create_database
from tests.support.services import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS, DLQ = "runledger.events.v1", "runledger.events.dlq"


def _latest(client: httpx.Client, run_id: str) -> dict[str, Any] | None:
    response = client.get(f"/api/v1/runs/{run_id}")
    return response.json() if response.status_code == 200 else None


def _wait(
    client: httpx.Client, run_id: str, step: int, status: str | None = None, limit_s: float = 90
) -> None:
    deadline = time.monotonic() + limit_s
    run: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        run = _latest(client, run_id)
        if (
            run
            and run["metrics"].get("loss", {}).get("step") == step
            and status in (None, run["info"]["status"])
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"step {step} never projected: {run}")


def test_points_logged_while_the_broker_is_down_arrive_exactly_once(
    postgres: EmbeddedPostgres, test_root: Path
) -> None:
    root = test_root / f"outage-{uuid.uuid4().hex[:6]}"
    broker = EmbeddedBroker(0, root / "broker.log")
    broker.start()
    broker.ensure_topics({EVENTS: 4, DLQ: 1})
    dsn = asyncio.run(create_database(postgres))
    key = generate_key()
    services = ServiceProcess(
        "all",
        root / "state",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",  # as `runledger up` runs it
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
        },
    )
    services.start()
    rl.init(
        transport="kafka",
        kafka_bootstrap=broker.bootstrap,
        spool_dir=root / "spool",
        send_timeout_s=2.0,
        api_key=key.token,
        tenant="default",
    )
    try:
        with httpx.Client(
            base_url=services.url, timeout=30, headers={"Authorization": f"Bearer {key.token}"}
        ) as client:
            run = rl.start_run(experiment="outage", name="survivor")
            for step in range(1000):
                run.log_metric("loss", step * 0.5, step=step)
            assert rl.flush(30)
            _wait(client, run.run_id, 999)  # projected: safe from the broker's death

            first_incarnation = broker.incarnation
            broker.stop()
            for step in range(1000, 3000):  # the training loop never blocks on the dead broker
                run.log_metric("loss", step * 0.5, step=step)
            time.sleep(3)  # past send_timeout_s: these batches are in the spool now
            broker.start()
            assert broker.incarnation != first_incarnation
            broker.ensure_topics({EVENTS: 4, DLQ: 1})
            for step in range(3000, 4000):
                run.log_metric("loss", step * 0.5, step=step)
            run.end_run()
            assert rl.flush(60)

            _wait(client, run.run_id, 3999, status="FINISHED")
            history = client.get(f"/api/v1/runs/{run.run_id}/metrics/loss/history").json()
            assert history["steps"] == list(range(4000)), "lost or duplicated steps"
            assert history["values"] == [step * 0.5 for step in range(4000)]
    finally:
        rl.shutdown()
        services.stop()
        broker.stop()
