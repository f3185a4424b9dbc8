"""The RunLedger API: a FastAPI app over the event log (writes) and the projections (reads).

Routes live in one package per domain (endpoints -> service -> repository);
this module wires them, the error handlers and the connections the lifespan opens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI

from runledger.auth.keys import parse_key
from runledger.auth.quota import TokenBuckets
from runledger.auth.sealing import load_box
from runledger.config import Settings
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.postgres import directory
from runledger.stores.postgres.migrate import migrate
from runledger.stores.postgres.pool import open_pool
from services.api import health
from services.api.admin import endpoints as admin
from services.api.analysis import endpoints as analysis
from services.api.artifacts import endpoints as artifacts
from services.api.audit import AuditSink
from services.api.body_guard import GuardJsonBodies
from services.api.business import endpoints as business
from services.api.compare import endpoints as compare
from services.api.consistency import ProjectionWaiter
from services.api.deps import AuthenticateApi, Runtime, get_principal
from services.api.documents import endpoints as documents
from services.api.events import endpoints as events
from services.api.experiments import endpoints as experiments
from services.api.exports import endpoints as exports
from services.api.findings import endpoints as findings
from services.api.handlers import install_error_handlers
from services.api.identity import endpoints as identity
from services.api.instrumentation import RequestMetrics
from services.api.lineage import endpoints as lineage
from services.api.metrics import endpoints as metrics
from services.api.mlflow import endpoints as mlflow
from services.api.mlflow_artifacts import endpoints as mlflow_artifacts
from services.api.odata import endpoints as odata
from services.api.orgs import endpoints as orgs
from services.api.publisher import EventPublisher, KafkaEventPublisher
from services.api.quotas import QuotaGate, usage_reader
from services.api.retention import endpoints as retention
from services.api.runs import endpoints as runs
from services.api.schemas import API_RESPONSES
from services.api.ui import me as ui_me
from services.api.ui import routes as ui
from services.api.webhooks import endpoints as webhooks
from services.api.webhooks.repository import reseal_secrets
from services.api.writes import EventWriter
from services.observability import metrics_routes

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

_DESCRIPTION = """
Event-sourced ML experiment tracking. Every write becomes an event on the log and
returns once the projector has applied it (HTTP 200/201). If that takes longer than
the server's write timeout the answer is **202** with `projected: false` and a
`consistency_token`: pass it to any read as `?consistency_token=` and the read waits
for the write. Errors are `{"error_code", "message"}` (MLflow's codes).

Metric histories: `GET /api/v1/runs/{run_id}/metrics/{key}/history` answers columnar
JSON by default (`steps`, `timestamps`, `values` arrays), `shape=points` for one
object per point, or `format=arrow` for an Arrow IPC stream. `max_points` reduces
long series in ClickHouse (`method=minmax` keeps every spike; `lttb` is also offered).
"""


def create_app(
    settings: Settings, clickhouse: ClickHouse, *, publisher: EventPublisher | None = None
) -> FastAPI:
    """The API app; its lifespan opens Postgres, the producer and the projection waiter.

    `publisher` replaces the Kafka producer (tests); by default one is connected to
    settings.kafka_bootstrap at startup.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.postgres_dsn:
            raise RuntimeError("RUNLEDGER_POSTGRES_DSN is not set: the API needs the metadata store")
        async with AsyncExitStack() as stack:
            pool: asyncpg.Pool = await open_pool(settings.postgres_dsn, min_size=1, max_size=20)
            stack.push_async_callback(pool.close)
            async with pool.acquire() as conn:
                await migrate(conn)
                if settings.bootstrap_api_key:
                    await directory.bootstrap(
                        conn, settings.default_tenant, parse_key(settings.bootstrap_api_key)
                    )
            secrets = load_box(settings.secrets_key, settings.state_dir)
            resealed = await reseal_secrets(pool, secrets)
            if resealed:
                log.info("sealed %d webhook secrets under the first RUNLEDGER_SECRETS_KEY key", resealed)
            auth = await directory.watch(pool, settings.auth_poll_interval_s)
            stack.push_async_callback(auth.close)
            audit = AuditSink(pool)
            await audit.start()
            stack.push_async_callback(audit.close)
            waiter = ProjectionWaiter(settings.postgres_dsn, pool, settings.projector_group)
            await waiter.start()
            stack.push_async_callback(waiter.close)
            events_publisher = publisher or await KafkaEventPublisher.connect(settings)
            stack.push_async_callback(events_publisher.close)
            quotas = QuotaGate(usage_reader(pool), TokenBuckets())
            writer = EventWriter(events_publisher, waiter, settings.write_wait_timeout_s, quotas)
            app.state.runtime = Runtime(
                settings=settings,
                clickhouse=clickhouse,
                pool=pool,
                writer=writer,
                auth=auth,
                audit=audit,
                secrets=secrets,
            )
            try:
                yield
            finally:
                app.state.runtime = None

    app = FastAPI(
        title="RunLedger API",
        version="1",
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.runtime = None
    install_error_handlers(app)
    # Added before RequestMetrics, so it runs inside it: 401s are counted like any answer.
    app.add_middleware(GuardJsonBodies, max_bytes=settings.api_max_json_body_bytes)  # innermost: after auth
    app.add_middleware(AuthenticateApi, prefix="/api/")
    app.add_middleware(RequestMetrics)
    app.include_router(health.router)
    app.include_router(metrics_routes(settings.metrics_token))  # GET /metrics (Prometheus), outside the API
    app.include_router(ui.router)  # GET /ui/ (the web UI) and its sign-in, outside the API schema
    # The caller AuthenticateApi resolved, and the answers (401, 403, 503) every API route may give.
    authenticated: dict[str, Any] = {"dependencies": [Depends(get_principal)], "responses": API_RESPONSES}
    domains = (
        identity,
        experiments,
        runs,
        metrics,
        events,
        admin,
        orgs,
        lineage,
        documents,
        findings,
        analysis,
    )
    for domain in domains:
        app.include_router(domain.router, prefix=API_PREFIX, **authenticated)
    app.include_router(webhooks.router, prefix=API_PREFIX, **authenticated)
    app.include_router(compare.router, prefix=API_PREFIX, **authenticated)
    app.include_router(business.router, prefix=API_PREFIX, **authenticated)
    app.include_router(retention.router, prefix=API_PREFIX, **authenticated)
    app.include_router(ui_me.router, prefix=API_PREFIX, **authenticated)  # GET /api/v1/me
    for router in (mlflow.router, mlflow.v3_router):  # MLflow's own paths, for the unmodified client
        app.include_router(router, **authenticated)
    app.include_router(artifacts.router, prefix=API_PREFIX, **authenticated)
    app.include_router(mlflow_artifacts.router, prefix=mlflow_artifacts.PREFIX, **authenticated)
    app.include_router(exports.router, prefix=API_PREFIX, **authenticated)
    app.include_router(odata.router, **authenticated)  # /odata/: BI tools, basic auth
    return app
