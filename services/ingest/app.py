"""The ingest role's HTTP app: `GET /healthz` (the projector's liveness) and `GET /metrics`.

`runledger serve ingest` serves it on RUNLEDGER_API_HOST:RUNLEDGER_API_PORT, so
probes and Prometheus reach a projector as they reach an API replica.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from services.observability import metrics_routes

# The projector's consumer loop turns at least every ~0.5 s while it runs (a poll
# waits at most 100 ms; a full write queue makes it wait for one batch write). Not
# turning for this long means a poll or write that does not return, or a consumer
# that cannot be (re)created (Kafka unreachable).
HEARTBEAT_STALE_S = 30.0


class Monitored(Protocol):
    """The projector as the health check sees it (runledger.serve.ProjectorThread)."""

    def is_alive(self) -> bool:
        """Whether the projector's thread runs."""
        ...

    def heartbeat_age(self) -> float | None:
        """Seconds since the consumer loop last turned; None before its first turn."""
        ...


def health(projector: Monitored, stale_after_s: float = HEARTBEAT_STALE_S) -> tuple[int, dict[str, object]]:
    """(HTTP status, body) of /healthz: 200 while the loop turns, 503 otherwise."""
    if not projector.is_alive():
        return 503, {"status": "stopped"}
    age = projector.heartbeat_age()
    if age is None:
        return 503, {"status": "starting"}
    ok = age <= stale_after_s
    return (200 if ok else 503), {"status": "ok" if ok else "stalled", "heartbeat_age_s": round(age, 3)}


def create_app(projector: Monitored, metrics_token: str = "") -> FastAPI:
    """The ingest role's app (no OpenAPI documentation: it is not an API); /metrics guarded by
    `metrics_token` (services/observability.py)."""
    app = FastAPI(title="RunLedger ingest", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness of the projector: its thread runs and its consumer loop turned recently."""
        status, body = health(projector)
        return JSONResponse(body, status_code=status)

    app.include_router(metrics_routes(metrics_token))
    return app
