"""The Prometheus metrics of every service, declared once, and their exposition (`GET /metrics`).

Metrics live in prometheus_client's default registry (with its process_* and python_*
collectors), so one scrape of a process shows whatever runs in it: the API, the
projector, or both in the embedded mode. The embedded mode runs the analysis service as
child processes; their metrics reach the parent's scrape through prometheus_client's
multiprocess files (ChildMetrics). Labels stay bounded: tenants (a bounded set), event
types, dead-letter reason classes, partitions, analysis shards, and route templates
(never raw paths).
"""

from __future__ import annotations

import gc
import hmac
import ipaddress
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

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
PROJECTOR_OFFSET_ANOMALIES = Counter(
    "runledger_projector_offset_anomalies_total",
    "Polled records whose offset did not follow the previous one of their partition, by kind: repeat"
    " (a re-fetch after a seek, dropped), gap_refetch (records before it missing: fetched again),"
    " gap_filled (they came on a later fetch), gap_accepted (they never came: alert on any).",
    ["kind"],
)
REPEATED_EVENTS = Counter(
    "runledger_projector_repeated_events_total",
    "Events the projector dropped because their event id was already seen: in the same batch or"
    " round, or projected before (re-sends after a broker restart, a retried produce, a sync).",
    ["where"],
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
HEAVY_WRITE_QUEUE_SECONDS = Histogram(
    "runledger_api_heavy_write_queue_seconds",
    "Time a heavy JSON write (RUNLEDGER_API_HEAVY_WRITE_BYTES or more) waited for one of its tenant's"
    " RUNLEDGER_API_HEAVY_WRITES_PER_TENANT slots.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
WRITE_WAIT_SECONDS = Histogram(
    "runledger_write_wait_seconds",
    "Time an API write waits for the projector to apply its events (capped by RUNLEDGER_WRITE_WAIT_TIMEOUT_S).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# --- analysis (services/analysis) ---------------------------------------------------
# Labelled by shard (RUNLEDGER_ANALYSIS_SHARD, at most RUNLEDGER_ANALYSIS_SHARDS values): the
# embedded mode's children share one scrape, where a lagging or idle shard must stay visible.

ANALYSIS_POINTS = Counter(
    "runledger_analysis_points_total",
    "Metric points the analysis service's detectors analysed, by shard.",
    ["shard"],
)
ANALYSIS_FINDINGS = Counter(
    "runledger_analysis_findings_total",
    "Findings the analysis service published, by shard and kind.",
    ["shard", "kind"],
)
ANALYSIS_BATCH_SECONDS = Histogram(
    "runledger_analysis_batch_seconds",
    "Time to analyse one polled batch: verify, detect, publish the findings, store states and offsets.",
    ["shard"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ANALYSIS_LAG_SECONDS = Gauge(
    "runledger_analysis_lag_seconds",
    "Wall-clock time between the newest record of the last analysed batch reaching Kafka (its record"
    " timestamp) and its findings being published, by shard.",
    ["shard"],
    # Across child processes: the live one of each shard (a dead child's last lag is stale).
    multiprocess_mode="livemax",
)
ANALYSIS_SERIES_IN_MEMORY = Gauge(
    "runledger_analysis_series_in_memory",
    "Detector states (series and cohorts) the analysis service holds in memory after its last"
    " checkpoint, by shard; RUNLEDGER_ANALYSIS_MAX_SERIES_CACHED caps it, and with it the memory.",
    ["shard"],
    multiprocess_mode="livemax",
)
ANALYSIS_OFFSET_ANOMALIES = Counter(
    "runledger_analysis_offset_anomalies_total",
    "Polled records whose offset did not follow the previous one of their partition, by shard and"
    " kind (as runledger_projector_offset_anomalies_total); gap_accepted: points never analysed.",
    ["shard", "kind"],
)
ATTRIBUTION_SECONDS = Histogram(
    "runledger_attribution_seconds",
    "Time of one attribution job (reading its runs, computing, publishing), by outcome.",
    ["status"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
# What only the analysis service updates: in the embedded mode its child processes.
ANALYSIS_METRICS: tuple[MetricWrapperBase, ...] = (
    ANALYSIS_POINTS,
    ANALYSIS_FINDINGS,
    ANALYSIS_BATCH_SECONDS,
    ANALYSIS_LAG_SECONDS,
    ANALYSIS_SERIES_IN_MEMORY,
    ANALYSIS_OFFSET_ANOMALIES,
    ATTRIBUTION_SECONDS,
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


# --- the embedded mode's analysis children ---------------------------------------------

# Set in a child's environment, it makes prometheus_client (from its import on) keep every
# value in per-process files there: the variable must be there before the child starts.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ChildMetrics:
    """A collector: `metrics` as the child processes writing under `path` left them, merged
    by prometheus_client's MultiProcessCollector (counters and histograms summed over the
    processes, gauges by their multiprocess_mode).

    Only the families of `metrics` are shown: a child also writes zeros for the other
    metrics declared here, which this process shows itself.
    """

    def __init__(self, path: Path, metrics: Sequence[MetricWrapperBase]) -> None:
        self.path = path
        self._described = [family for metric in metrics for family in metric.describe()]
        self._names = {family.name for family in self._described}
        # A scrape must not see a dead child's values both in its own and in the folded files.
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """The families this collector shows (the registry checks their names are unique)."""
        return self._described

    def collect(self) -> Iterable[Metric]:
        """The children's merged values of the families in `describe`."""
        with self._lock:
            files = [str(p) for p in self.path.glob("*.db")]
            families: Iterable[Metric] = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        return [family for family in families if family.name in self._names]

    def process_exited(self, pid: int) -> None:
        """Forget child `pid`'s gauges and fold its counters and histograms into the
        `*_exited.db` files, so totals never go back and files do not pile up with restarts."""
        with self._lock:
            mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]  # its live* gauges
            for file in self.path.glob(f"*_{pid}.db"):
                kind = file.name.split("_", 1)[0]
                if kind in ("counter", "histogram"):  # additive per (metric, labels, bucket) key
                    _add_values(file, self.path / f"{kind}_exited.db")
                os.remove(file)  # what remains are gauges this collector does not show


def _add_values(source: Path, target: Path) -> None:
    """Add every value of multiprocess file `source` to the same key's value in `target`."""
    # prometheus_client's own file format (the one MultiProcessCollector reads); not typed.
    values = MmapedDict.read_all_values_from_file(str(source))  # type: ignore[no-untyped-call]
    into: Any = MmapedDict(str(target))  # type: ignore[no-untyped-call]
    try:
        for key, value, timestamp, _ in values:
            total, _ = into.read_value(key)
            into.write_value(key, total + value, timestamp)
    finally:
        into.close()


def expose_children(path: Path) -> ChildMetrics:
    """Show, in this process's /metrics, the ANALYSIS_METRICS its child processes write
    under `path`, in place of this process's own (never updated) copies."""
    for metric in ANALYSIS_METRICS:
        REGISTRY.unregister(metric)
    children = ChildMetrics(path, ANALYSIS_METRICS)
    REGISTRY.register(children)
    return children


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
