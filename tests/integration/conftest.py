"""Session-wide real services: PostgreSQL and the tansu broker, started once for all tests.

Each test isolates itself by tenant id (and, where it needs a ClickHouse of its own,
by running its own services process with its own state directory and database).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres

EVENTS_TOPIC = "runledger.events.v1"
DLQ_TOPIC = "runledger.events.dlq"


@pytest.fixture(scope="session")
def test_root() -> Iterator[Path]:
    """Session scratch space directly under /tmp.

    Not pytest's tmp dir: as root, PostgreSQL runs as the `postgres` user, which needs
    o+x on every parent directory, and pytest re-locks /tmp/pytest-of-root to 0700
    whenever another session starts.
    """
    path = Path(tempfile.mkdtemp(prefix="runledger-test-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("RUNLEDGER_KEEP_TEST_STATE"):  # set it to keep logs and data for a post-mortem
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(test_root: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(test_root / "pg" / "data", 0, fsync=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker(test_root: Path) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(0, test_root / "broker.log")
    server.start()
    yield server
    server.stop()


async def create_database(postgres: EmbeddedPostgres) -> str:
    """A fresh database on the shared server; returns its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return postgres.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def fresh_dsn(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    yield await create_database(postgres)


@pytest.fixture
def topics(broker: EmbeddedBroker) -> dict[str, str]:
    """A fresh events + DLQ topic pair, so tests never read each other's events."""
    suffix = uuid.uuid4().hex[:8]
    names = {"events": f"{EVENTS_TOPIC}.{suffix}", "dlq": f"{DLQ_TOPIC}.{suffix}"}
    broker.ensure_topics({names["events"]: 4, names["dlq"]: 1})
    return names
