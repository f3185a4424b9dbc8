"""The embedded broker is replaced twice while a run logs: every point arrives exactly once.

Real services (projector, analysis, API), real PostgreSQL checkpoints deciding what is
carried over, the SDK's Kafka transport as the producer, everything behind the produce gate
as `runledger up` runs it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.embedded.broker import ensure_topics
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.embedded.rotation import PostgresCheckpoints, RotationReport, gated_broker, rotate
from tests.integration.conftest import create_database
from tests.support.services import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS, DLQ = "runledger.events.v1", "runledger.events.dlq"
STEPS = 6000


def _history(client: httpx.Client, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/metrics/loss/history")
    return response.json() if response.status_code == 200 else {"steps": []}


def test_points_logged_across_broker_rotations_arrive_exactly_once(
    postgres: EmbeddedPostgres, test_root: Path
) -> None:
    root = test_root / f"rotation-{uuid.uuid4().hex[:6]}"
    gate, broker = gated_broker(root / "broker.log")
    broker.start()
    topics = {EVENTS: 4, DLQ: 1}
    ensure_topics(gate.bootstrap, topics)
    dsn = asyncio.run(create_database(postgres))
    key = generate_key()
    services = ServiceProcess(
        "all",
        root / "state",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": gate.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
        },
    )
    services.start()
    rl.init(
        transport="kafka",
        kafka_bootstrap=gate.bootstrap,
        spool_dir=root / "spool",
        send_timeout_s=5.0,
        api_key=key.token,
        tenant="default",
    )
    reports: list[RotationReport] = []
    try:
        with httpx.Client(
            base_url=services.url, timeout=30, headers={"Authorization": f"Bearer {key.token}"}
        ) as client:
            run = rl.start_run(experiment="rotation", name="across-brokers")

            def log_steps() -> None:
                for step in range(STEPS):
                    run.log_metric("loss", step * 0.5, step=step)
                    if step % 50 == 0:
                        time.sleep(0.04)  # ~5 s of logging, across both rotations

            logging = threading.Thread(target=log_steps, daemon=True)
            logging.start()
            # Rotations from this thread: the broker child dies with the thread that
            # started it (PR_SET_PDEATHSIG), as the supervisor's main thread never does.
            for _ in range(2):
                time.sleep(1.5)
                broker, report = rotate(
                    broker,
                    gate,
                    PostgresCheckpoints(dsn, "runledger-projector"),
                    events_topic=EVENTS,
                    dlq_topic=DLQ,
                    topics=topics,
                    max_carry_bytes=256 * 2**20,
                )
                reports.append(report)
            logging_lasted = logging.is_alive()
            logging.join(60)
            run.end_run()
            assert rl.flush(60)

            deadline = time.monotonic() + 90
            history = _history(client, run.run_id)
            while len(history["steps"]) < STEPS and time.monotonic() < deadline:
                time.sleep(0.2)
                history = _history(client, run.run_id)
            assert history["steps"] == list(range(STEPS)), "lost or duplicated steps"
            assert history["values"] == [step * 0.5 for step in range(STEPS)]
            assert logging_lasted, "the run stopped logging before the second rotation"
            assert reports[1].old_incarnation == reports[0].new_incarnation
            assert broker.incarnation == reports[1].new_incarnation
    finally:
        rl.shutdown()
        services.stop()
        broker.stop()
        gate.stop()
