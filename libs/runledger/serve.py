"""Process entry point of the services: `python -m runledger.serve all|api|ingest|analysis`.

In the embedded mode one process runs the API and the projector together, because the
in-process ClickHouse engine (chdb) allows one process per data directory; it starts the
analysis service (which needs no ClickHouse) as child processes, whose metrics its
/metrics shows (AnalysisChildren). In the distributed mode each service runs alone and
reaches ClickHouse over HTTP. Every role serves HTTP on RUNLEDGER_API_HOST:RUNLEDGER_API_PORT:
the API (with /healthz and /metrics), or for ingest and analysis only their loop's
/healthz and /metrics. uvicorn handles SIGINT/SIGTERM in every role; the app's shutdown stops the
service threads after their batch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI

from runledger.auth.keys import ApiKey, parse_key
from runledger.config import Settings, get_settings
from runledger.embedded._proc import die_with_parent, stop_process
from runledger.heap import freeze_startup_heap, relax_gc_for_detector_state
from runledger.stores.clickhouse import ClickHouse, open_clickhouse
from runledger.stores.postgres import directory
from runledger.stores.postgres.migrate import migrate
from runledger.stores.postgres.pool import open_pool

log = logging.getLogger("runledger.serve")


async def connect_postgres(settings: Settings, max_size: int = 8) -> asyncpg.Pool:
    """A connection pool with the schema migrated and the bootstrap key provisioned.

    Provisioning here too (the API's lifespan does it as well; it is idempotent) lets an
    ingest-only process accept events signed with the bootstrap key without any API.
    """
    pool = await open_pool(settings.postgres_dsn, min_size=1, max_size=max_size)
    async with pool.acquire() as conn:
        await migrate(conn)
        if settings.bootstrap_api_key:
            await directory.bootstrap(conn, settings.default_tenant, parse_key(settings.bootstrap_api_key))
    return pool


class ServiceThread(threading.Thread):
    """Runs one async service (an object with `run()`, a `stop` event and a `heartbeat`) on
    its own event loop, beside the API's."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name=name, daemon=True)
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.service: object | None = None

    def run(self) -> None:
        """Thread body: create the pool and run until stopped."""
        self._loop.run_until_complete(self._main())

    async def _create(self, pool: asyncpg.Pool) -> Any:
        """The service object, over `pool`."""
        raise NotImplementedError

    async def _main(self) -> None:
        pool = await connect_postgres(self._settings)
        try:
            service = await self._create(pool)
            self.service = service
            self._started.set()
            await service.run()
        finally:
            self._started.set()
            await pool.close()

    def heartbeat_age(self) -> float | None:
        """Seconds since the service's loop last turned; None before its first turn."""
        beat: float = getattr(self.service, "heartbeat", 0.0)
        return time.monotonic() - beat if beat else None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the service to stop after its current batch, and wait."""
        self._started.wait(timeout)
        service = self.service
        if service is not None and self.is_alive():
            self._loop.call_soon_threadsafe(service.stop.set)  # type: ignore[attr-defined]
        self.join(timeout)


class ProjectorThread(ServiceThread):
    """The projector (services/ingest)."""

    def __init__(self, settings: Settings, clickhouse: ClickHouse) -> None:
        super().__init__("projector", settings)
        self._clickhouse = clickhouse

    @property
    def projector(self) -> object | None:
        """The running Projector (None before it started)."""
        return self.service

    async def _create(self, pool: asyncpg.Pool) -> Any:
        from services.ingest.projector import Projector

        return Projector(self._settings, self._clickhouse, pool)


class AnalysisThread(ServiceThread):
    """The analysis service (services/analysis): detection, attribution jobs, webhooks."""

    def __init__(self, settings: Settings, key: ApiKey) -> None:
        super().__init__("analysis", settings)
        self._key = key

    async def _create(self, pool: asyncpg.Pool) -> Any:
        from services.analysis.service import AnalysisService

        return AnalysisService(self._settings, pool, self._key)


class AnalysisProcess:
    """The analysis service as a child process of the `all` role, restarted when it dies.

    A child, not a thread: detection is Python CPU work that would otherwise share the
    interpreter lock with the API and the projector. It needs no ClickHouse, so the
    one-process rule of the embedded engine does not bind it. With
    RUNLEDGER_ANALYSIS_SHARDS=N the role starts N of them, one per shard.
    """

    _RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(
        self, shard: int = 0, env: dict[str, str] | None = None, on_exit: Callable[[int], None] | None = None
    ) -> None:
        """`env`: added to the child's environment; `on_exit(pid)`: called when a child ended."""
        self._env = {**os.environ, **(env or {}), "RUNLEDGER_ANALYSIS_SHARD": str(shard)}
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name=f"analysis-watchdog-{shard}", daemon=True)

    def start(self) -> None:
        """Start the child and the thread that restarts it."""
        self._watchdog.start()

    def is_alive(self) -> bool:
        """Whether the child runs now."""
        return self._proc is not None and self._proc.poll() is None

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            # Spawned from this thread, which lives as long as the watch: the child's
            # parent-death signal fires when this process dies, not before.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "services.analysis"],
                stdin=subprocess.DEVNULL,
                env=self._env,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
            code = self._proc.wait()
            if self._on_exit is not None:
                self._on_exit(self._proc.pid)  # before a restart, which may reuse the pid
            if self._stopping.is_set():
                return
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = self._RESTART_DELAYS_S[min(failures, len(self._RESTART_DELAYS_S) - 1)]
            log.warning("analysis process exited with %s; restarting in %.0f s", code, delay)
            self._stopping.wait(delay)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child (it finishes its batch and checkpoints) and the watchdog."""
        self._stopping.set()
        proc = self._proc
        if proc is not None:
            stop_process(proc, signal.SIGTERM, timeout)
        self._watchdog.join(timeout)


class AnalysisChildren:
    """The `all` role's analysis processes (one per shard), whose metrics the role's /metrics shows.

    Each child keeps its metrics in prometheus_client's multiprocess files, in a directory
    of this process's own (created here, removed at stop: two stacks on one machine never
    share one); services/observability.py ChildMetrics merges them into this process's
    scrape and folds the files of a child that exited. The directory's name carries this
    process's pid, so the next start removes one a killed process left behind.
    """

    def __init__(self, shards: int) -> None:
        from services.observability import MULTIPROC_DIR_ENV, expose_children

        remove_orphaned_metrics_dirs(Path(tempfile.gettempdir()))
        self.metrics_dir = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))
        self.metrics = expose_children(self.metrics_dir)
        env = {MULTIPROC_DIR_ENV: str(self.metrics_dir)}
        self._processes = [
            AnalysisProcess(shard, env, self.metrics.process_exited) for shard in range(shards)
        ]

    def start(self) -> None:
        """Start every child and its watchdog."""
        for process in self._processes:
            process.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every child, then remove the metrics files (idempotent)."""
        for process in self._processes:
            process.stop(timeout)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


METRICS_DIR_PREFIX = "runledger-analysis-metrics-"


def remove_orphaned_metrics_dirs(parent: Path) -> list[Path]:
    """Remove the children's metrics directories under `parent` whose owner (the pid in the
    name) is gone: a SIGKILLed services process cannot remove its own. Returns those removed."""
    removed = []
    for path in parent.glob(f"{METRICS_DIR_PREFIX}*-*"):
        owner = path.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def analysis_key(settings: Settings) -> ApiKey | None:
    """The key the analysis service signs with (its own, else the bootstrap key)."""
    token = settings.analysis_api_key or settings.bootstrap_api_key
    return parse_key(token) if token else None


def _stop_with_app(
    app: FastAPI, threads: list[ServiceThread | AnalysisChildren], clickhouse: ClickHouse | None
) -> None:
    """Stop the service threads and close ClickHouse when the app shuts down.

    uvicorn re-raises SIGTERM after its graceful shutdown, which ends the process
    before any `finally` here runs; the app's lifespan exit is the last sure point.
    """
    app_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[None]:
        async with app_lifespan(a):
            yield
        for thread in threads:
            await asyncio.to_thread(thread.stop)
        if clickhouse is not None:
            clickhouse.close()

    app.router.lifespan_context = lifespan


# What the API reads of a request line and headers (uvicorn's h11 default is 16 KiB).
MAX_REQUEST_HEAD_BYTES = 1 << 20


def serve(role: str, settings: Settings) -> None:
    """Run `role` (all, api, ingest, analysis) in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from services.observability import watch_gc

    watch_gc()
    # Other tenants' requests wait behind a flood's parsing and projection for the lock, at
    # each wake-up (bench/RESULTS.md, "Noisy neighbour: a bulkhead for heavy writes").
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    clickhouse = open_clickhouse(settings.clickhouse_url, settings.chdb_path) if role != "analysis" else None
    threads: list[ServiceThread | AnalysisChildren] = []
    projector = None
    if role in ("all", "ingest"):
        assert clickhouse is not None
        projector = ProjectorThread(settings, clickhouse)
        threads.append(projector)
    analysis = None
    key = analysis_key(settings) if role in ("all", "analysis") else None
    if role == "analysis" and key is not None:
        relax_gc_for_detector_state()
        analysis = AnalysisThread(settings, key)
        threads.append(analysis)
    elif role == "all" and key is not None:
        threads.append(AnalysisChildren(settings.analysis_shards))
    elif role in ("all", "analysis"):
        log.warning("no RUNLEDGER_ANALYSIS_API_KEY or RUNLEDGER_BOOTSTRAP_API_KEY: analysis not started")
    for thread in threads:
        thread.start()
    try:
        if role in ("all", "api"):
            from services.api.app import create_app

            assert clickhouse is not None
            app = create_app(settings, clickhouse)
            app.state.projector_thread = projector
        else:
            from services.ingest.app import create_app as create_health_app

            monitored = projector if role == "ingest" else analysis
            if monitored is None:
                raise SystemExit("the analysis role needs RUNLEDGER_ANALYSIS_API_KEY")
            app = create_health_app(monitored, settings.metrics_token)
        _stop_with_app(app, threads, clickhouse)
        freeze_startup_heap()
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            timeout_keep_alive=settings.api_keepalive_s,
            # A request line and headers past h11's default 16 KiB got uvicorn's plain-text 400,
            # outside the API's JSON errors (a long search filter or MLflow query); the routes
            # validate their own parameters.
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        )
    except KeyboardInterrupt:
        pass
    finally:
        for thread in threads:
            thread.stop()
        if clickhouse is not None:
            clickhouse.close()


def main() -> None:
    """CLI entry of this module."""
    parser = argparse.ArgumentParser(prog="python -m runledger.serve")
    parser.add_argument("role", choices=["all", "api", "ingest", "analysis"])
    args = parser.parse_args()
    serve(args.role, get_settings())


if __name__ == "__main__":
    main()
