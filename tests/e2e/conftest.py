"""The whole pipeline for end-to-end tests: shared Postgres + broker, one `serve all` process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runledger.embedded.broker import EmbeddedBroker
from tests.integration.conftest import broker, create_database, postgres, test_root  # noqa: F401
from tests.support.services import ServiceProcess


@dataclass(frozen=True)
class Stack:
    """Where the running services are."""

    url: str
    bootstrap: str
    events_topic: str
    dlq_topic: str
    dsn: str
    services: ServiceProcess


@pytest.fixture(scope="session")
def stack(broker: EmbeddedBroker, postgres: object, test_root: Path) -> Iterator[Stack]:  # noqa: F811
    import asyncio

    suffix = uuid.uuid4().hex[:8]
    events, dlq = f"runledger.events.v1.e2e{suffix}", f"runledger.events.dlq.e2e{suffix}"
    broker.ensure_topics({events: 4, dlq: 1})
    dsn = asyncio.run(create_database(postgres))  # type: ignore[arg-type]
    services = ServiceProcess(
        "all",
        test_root / f"e2e-{suffix}",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": events,
            "RUNLEDGER_DLQ_TOPIC": dlq,
            "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "50",
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",
        },
    )
    services.start()
    try:
        yield Stack(services.url, broker.bootstrap, events, dlq, dsn, services)
    finally:
        services.stop()
