"""Process entry point of the services: `python -m runledger.serve all|api|ingest`.

In the embedded mode one process runs the API and the projector together, because
the in-process ClickHouse engine (chdb) allows one process per data directory. In
the distributed mode each service runs alone and reaches ClickHouse over HTTP. Every
role serves HTTP on RUNLEDGER_API_HOST:RUNLEDGER_API_PORT: the API (with /healthz and
/metrics), or for ingest only the projector's /healthz and /metrics. uvicorn handles
SIGINT/SIGTERM in every role; the app's shutdown stops the projector after its batch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import uvicorn
from fastapi import FastAPI

from runledger.auth.keys import parse_key
from runledger.config import Settings, get_settings
from runledger.stores.clickhouse import ClickHouse, open_clickhouse
from runledger.stores.postgres import directory
from runledger.stores.postgres.migrate import migrate

log = logging.getLogger("runledger.serve")


async def connect_postgres(settings: Settings, max_size: int = 8) -> asyncpg.Pool:
    """A connection pool with the schema migrated and the bootstrap key provisioned.

    Provisioning here too (the API's lifespan does it as well; it is idempotent) lets an
    ingest-only process accept events signed with the bootstrap key without any API.
    """
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=max_size)
    assert pool is not None
    async with pool.acquire() as conn:
        await migrate(conn)
        if settings.bootstrap_api_key:
            await directory.bootstrap(conn, settings.default_tenant, parse_key(settings.bootstrap_api_key))
    return pool


class ProjectorThread(threading.Thread):
    """Runs the projector on its own event loop beside the API's."""

    def __init__(self, settings: Settings, clickhouse: ClickHouse) -> None:
        super().__init__(name="projector", daemon=True)
        self._settings = settings
        self._clickhouse = clickhouse
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.projector: object | None = None

    def run(self) -> None:
        """Thread body: create the pool and run until stopped."""
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        from services.ingest.projector import Projector

        pool = await connect_postgres(self._settings)
        projector = Projector(self._settings, self._clickhouse, pool)
        self.projector = projector
        self._started.set()
        try:
            await projector.run()
        finally:
            await pool.close()

    def heartbeat_age(self) -> float | None:
        """Seconds since the projector's consumer loop last turned; None before its first turn."""
        beat: float = getattr(self.projector, "heartbeat", 0.0)
        return time.monotonic() - beat if beat else None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the projector to stop after its current batch, and wait."""
        self._started.wait(timeout)
        projector = self.projector
        if projector is not None and self.is_alive():
            self._loop.call_soon_threadsafe(projector.stop.set)  # type: ignore[attr-defined]
        self.join(timeout)


def _stop_with_app(app: FastAPI, projector: ProjectorThread | None, clickhouse: ClickHouse) -> None:
    """Stop the projector and close ClickHouse when the app shuts down.

    uvicorn re-raises SIGTERM after its graceful shutdown, which ends the process
    before any `finally` here runs; the app's lifespan exit is the last sure point.
    """
    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with app_lifespan(a):
            yield
        if projector is not None:
            await asyncio.to_thread(projector.stop)
        clickhouse.close()

    app.router.lifespan_context = lifespan


def serve(role: str, settings: Settings) -> None:
    """Run `role` (all, api, ingest) in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clickhouse = open_clickhouse(settings.clickhouse_url, settings.chdb_path)
    projector = ProjectorThread(settings, clickhouse) if role in ("all", "ingest") else None
    if projector is not None:
        projector.start()
    try:
        if role in ("all", "api"):
            from services.api.app import create_app

            app = create_app(settings, clickhouse)
            app.state.projector_thread = projector
        else:
            from services.ingest.app import create_app as create_ingest_app

            assert projector is not None
            app = create_ingest_app(projector)
        _stop_with_app(app, projector, clickhouse)
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        if projector is not None:
            projector.stop()
        clickhouse.close()


def main() -> None:
    """CLI entry of this module."""
    parser = argparse.ArgumentParser(prog="python -m runledger.serve")
    parser.add_argument("role", choices=["all", "api", "ingest"])
    args = parser.parse_args()
    serve(args.role, get_settings())


if __name__ == "__main__":
    main()
