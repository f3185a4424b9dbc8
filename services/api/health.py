"""GET /healthz: 200 once Postgres, ClickHouse and the event log answer, else 503."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.deps import Runtime

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2.0


async def _check(probe: Awaitable[object]) -> bool:
    with contextlib.suppress(Exception):
        result = await asyncio.wait_for(probe, _CHECK_TIMEOUT_S)
        return result is not False
    return False


async def _postgres(runtime: Runtime) -> bool:
    return bool(await runtime.pool.fetchval("SELECT 1") == 1)


async def _clickhouse(runtime: Runtime) -> bool:
    table = await asyncio.to_thread(runtime.clickhouse.query_arrow, "SELECT 1 AS ok")
    return bool(table.num_rows == 1)


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Readiness: every backing service reachable (the supervisor and load balancers poll this)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    postgres, clickhouse, kafka = await asyncio.gather(
        _check(_postgres(runtime)), _check(_clickhouse(runtime)), _check(runtime.writer.publisher.ping())
    )
    checks = {"postgres": postgres, "clickhouse": clickhouse, "kafka": kafka}
    ok = all(checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
