"""The whole pipeline for end-to-end tests: shared Postgres + broker, one `serve all` process."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runledger.auth.keys import ApiKey, generate_key
from runledger.embedded.broker import EmbeddedBroker
from tests.integration.conftest import broker, create_database, postgres, test_root  # noqa: F401
from tests.support.auth import Identity
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
    # The bootstrap key (superadmin, admin of tenant "default") the services provisioned.
    bootstrap_key: ApiKey
    admin: Identity

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers of the bootstrap admin."""
        return self.admin.headers

    def sdk_env(self) -> dict[str, str]:
        """RUNLEDGER_* variables that let an SDK process log to this stack as the admin."""
        return {"RUNLEDGER_API_KEY": self.bootstrap_key.token, "RUNLEDGER_TENANT": "default"}


@pytest.fixture(scope="session")
def stack(broker: EmbeddedBroker, postgres: object, test_root: Path) -> Iterator[Stack]:  # noqa: F811
    import asyncio

    suffix = uuid.uuid4().hex[:8]
    events, dlq = f"runledger.events.v1.e2e{suffix}", f"runledger.events.dlq.e2e{suffix}"
    broker.ensure_topics({events: 4, dlq: 1})
    dsn = asyncio.run(create_database(postgres))  # type: ignore[arg-type]
    key = generate_key()
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
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
            "RUNLEDGER_AUTH_POLL_INTERVAL_S": "0.2",
        },
    )
    services.start()
    principal = asyncio.run(_bootstrap_principal(dsn))
    # SDK clients (and SDK subprocesses) of these tests log as the bootstrap admin.
    saved = {k: os.environ.get(k) for k in ("RUNLEDGER_API_KEY", "RUNLEDGER_TENANT")}
    os.environ.update({"RUNLEDGER_API_KEY": key.token, "RUNLEDGER_TENANT": "default"})
    try:
        yield Stack(
            services.url,
            broker.bootstrap,
            events,
            dlq,
            dsn,
            services,
            key,
            Identity("default", principal, key),
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        services.stop()


async def _bootstrap_principal(dsn: str) -> str:
    import asyncpg

    from runledger.stores.postgres.directory import BOOTSTRAP_PRINCIPAL

    conn = await asyncpg.connect(dsn)
    try:
        principal: str = await conn.fetchval(
            "SELECT principal_id FROM principals WHERE tenant_id = 'default' AND name = $1",
            BOOTSTRAP_PRINCIPAL,
        )
    finally:
        await conn.close()
    return principal


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium through Playwright, one per browser-test module (tests/support/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()
