"""The Prometheus metrics of every service, declared once, and their exposition (`GET /metrics`).

Metrics live in prometheus_client's default registry (with its process_* and python_*
collectors), so one scrape of a process shows whatever runs in it: the API, the
projector, or both in the embedded mode. Labels stay bounded: tenants (a bounded
set), event types, dead-letter reason classes, partitions, and route templates
(never raw paths).
"""

from __future__ import annotations

import gc
import hmac
import ipaddress
import time

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

# --- projector (services/ingest) ---------------------------------------------------

EVENTS_PROJECTED = Counter(
    "runledger_events_projected_total",
    "Events written to the stores by the projector (re-sent duplicates excluded), by event type.",
    ["type"],
)
POINTS_PROJECTED = Counter(
    "runledger_points_projected_total",
    "Metric points inserted into ClickHouse by the projector, by tenant.",
    ["tenant"],
)
DEAD_LETTERS = Counter(
    "runledger_dead_letters_total",
    "Messages sent to the dead-letter topic, by reason class (the reason up to its first ':'). "
    "Exact per-tenant counts are in Postgres (GET /api/v1/admin/dead-letters).",
    ["reason"],
)
PROJECTOR_BATCH_SECONDS = Histogram(
    "runledger_projector_batch_seconds",
    "Time to write one batch to ClickHouse and Postgres (the write stage, lock wait excluded).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
PROJECTOR_BATCH_POINTS = Histogram(
    "runledger_projector_batch_points",
    "Metric points per written batch (0: a batch of metadata events only).",
    buckets=(0, 10, 100, 1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000),
)
INGEST_LAG_SECONDS = Gauge(
    "runledger_ingest_lag_seconds",
    "Wall-clock time between the newest event of the last written batch of a partition "
    "occurring (its occurred_at) and that batch being projected.",
    ["topic", "partition"],
)
COMMITTED_OFFSET = Gauge(
    "runledger_projector_committed_offset",
    "Last offset of a partition projected into both stores (the checkpoint).",
    ["topic", "partition"],
)

# --- API (services/api) -----------------------------------------------------------

API_REQUEST_SECONDS = Histogram(
    "runledger_api_request_seconds",
    "API request latency, by method, route template (e.g. /api/v1/runs/{run_id}) and status code.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
API_REQUESTS_IN_FLIGHT = Gauge(
    "runledger_api_requests_in_flight",
    "API requests being handled (scrapes of /metrics excluded).",
)
WRITE_WAIT_SECONDS = Histogram(
    "runledger_write_wait_seconds",
    "Time an API write waits for the projector to apply its events (capped by RUNLEDGER_WRITE_WAIT_TIMEOUT_S).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

ANALYSIS_POINTS = Counter(
    "runledger_analysis_points_total", "Metric points the analysis service's detectors analysed."
)
ANALYSIS_FINDINGS = Counter(
    "runledger_analysis_findings_total", "Findings the analysis service published, by kind.", ["kind"]
)
ANALYSIS_BATCH_SECONDS = Histogram(
    "runledger_analysis_batch_seconds",
    "Time to analyse one polled batch: verify, detect, publish the findings, store states and offsets.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ANALYSIS_LAG_SECONDS = Gauge(
    "runledger_analysis_lag_seconds",
    "Wall-clock time between the newest record of the last analysed batch reaching Kafka (its record"
    " timestamp) and its findings being published.",
)
ATTRIBUTION_SECONDS = Histogram(
    "runledger_attribution_seconds",
    "Time of one attribution job (reading its runs, computing, publishing), by outcome.",
    ["status"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

# --- the interpreter ---------------------------------------------------------------------

GC_PAUSE_SECONDS = Histogram(
    "runledger_gc_pause_seconds",
    "Time the garbage collector stopped this process (all its threads hold the GIL), by generation."
    " A process holding millions of objects pays for a full (generation 2) collection.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_gc_started: list[float] = []


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started.append(time.perf_counter())
    elif _gc_started:
        GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(time.perf_counter() - _gc_started.pop())


def watch_gc() -> None:
    """Time every garbage collection of this process (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


# --- exposition -----------------------------------------------------------------------

METRICS_PATH = "/metrics"
# The classic text format: every Prometheus version scrapes it (prometheus_client's
# CONTENT_TYPE_LATEST moved to version 1.0.0, which older servers refuse).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def scrape_refusal(authorization: str | None, client_host: str | None, token: str) -> tuple[int, str] | None:
    """Why a scrape of /metrics is refused, as (HTTP status, message); None when it may read.

    The per-tenant labels name every tenant and its activity, so /metrics is not public:
    with a token, the scrape must present it (`Authorization: Bearer <token>`); without
    one, only a client on this machine may read it (the embedded mode, where the API
    listens on loopback).
    """
    if token:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
            return None
        return 401, "GET /metrics needs the scrape token: Authorization: Bearer <RUNLEDGER_METRICS_TOKEN>"
    if _is_loopback(client_host):
        return None
    return 403, (
        "GET /metrics is served to other machines only with a scrape token: set RUNLEDGER_METRICS_TOKEN"
        " on the service and the same bearer token in the Prometheus scrape job"
    )


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:  # a unix socket or a test client's name: not an address on this machine
        return False


def metrics_routes(token: str) -> APIRouter:
    """The GET /metrics route, guarded by `token` (see scrape_refusal)."""
    router = APIRouter()

    @router.get(METRICS_PATH, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Every metric of this process in the Prometheus text format."""
        client = request.client.host if request.client is not None else None
        refusal = scrape_refusal(request.headers.get("authorization"), client, token)
        if refusal is not None:
            status, message = refusal
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE)

    return router
