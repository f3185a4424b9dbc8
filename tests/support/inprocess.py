"""Building blocks of the tests that run the API and the projector in-process.

Each such test module gets its own topics, database and chdb directory, so modules
never see each other's events or rows; these helpers make them the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from runledger.auth.keys import ApiKey
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres.migrate import migrate
from tests.integration.conftest import create_database


def module_settings(
    broker: EmbeddedBroker, state_dir: Path, tenant: str, *, partitions: int = 4, **overrides: Any
) -> Settings:
    """Settings on fresh topics and a fresh consumer group; postgres_dsn is set later."""
    suffix = uuid.uuid4().hex[:8]
    events_topic, dlq_topic = f"runledger.events.v1.{suffix}", f"runledger.events.dlq.{suffix}"
    broker.ensure_topics({events_topic: partitions, dlq_topic: 1})
    values: dict[str, Any] = {
        "kafka_bootstrap": broker.bootstrap,
        "postgres_dsn": "",
        "events_topic": events_topic,
        "dlq_topic": dlq_topic,
        "projector_group": f"projector-{suffix}",
        "projector_max_wait_ms": 20,
        "default_tenant": tenant,
        "write_wait_timeout_s": 20,
        "state_dir": state_dir,
    }
    values.update(overrides)
    return Settings(**values)


# asyncpg.Connection is not subscriptable at run time (only in its stubs).
Seed = Callable[["asyncpg.Connection[Any]"], Awaitable[None]]


async def migrated_database(postgres: EmbeddedPostgres, *seeds: Seed) -> str:
    """A fresh database with the schema, filled by `seeds` in order; its DSN."""
    dsn = await create_database(postgres)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        for seed in seeds:
            await seed(conn)
    finally:
        await conn.close()
    return dsn


@asynccontextmanager
async def api_client(
    dsn: str, tenant: str, key: ApiKey, clickhouse: ClickHouse, *, basic_auth: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process over `dsn` (its lifespan provisions `key` as admin of `tenant`; events
    go to an in-memory log), and a client authenticated with `key`: bearer, or basic auth as
    BI tools send it."""
    from services.api.app import create_app
    from tests.unit.test_api_errors import RecordingPublisher

    settings = Settings(
        postgres_dsn=dsn, default_tenant=tenant, write_wait_timeout_s=1.5, bootstrap_api_key=key.token
    )
    app = create_app(settings, clickhouse, publisher=RecordingPublisher())
    auth = (
        {"auth": (key.key_id, key.secret)}
        if basic_auth
        else {"headers": {"Authorization": f"Bearer {key.token}"}}
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", **auth) as client,
    ):
        yield client


def chdb_store(settings: Settings) -> Iterator[ChdbClickHouse]:
    """The module's migrated chdb store, closed afterwards (use with `yield from`)."""
    store = ChdbClickHouse(settings.chdb_path)
    store.migrate()
    yield store
    store.close()
