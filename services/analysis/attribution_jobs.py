"""Attribution jobs: claim a requested attribution, compute it in a worker process, publish it.

A request is a row of `attributions` (projected from its analysis.attribution_requested
event). A worker claims one with a lease (FOR UPDATE SKIP LOCKED, so replicas share the
queue), reads the runs' table, runs runledger.analysis.attribution in a separate process
(dowhy takes seconds to import and the fit is CPU-bound: the API and the detectors of an
embedded stack must not wait on it), and publishes analysis.attribution_computed, whose
projection marks the row done. A worker that dies leaves its lease to expire and the job
is claimed again; the result's event id is derived from the attribution id, so a job
computed twice is still reported once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from kafka import KafkaProducer

from runledger.config import Settings
from runledger.embedded._proc import follow_parent
from services import observability as metrics
from services.analysis.attribution_inputs import AttributionInputError, RunTable, load_run_table
from services.analysis.reports import Outgoing, Reporter

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.5
_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed attribution request."""

    tenant_id: str
    attribution_id: str
    experiment_id: str
    metric: str
    request: dict[str, Any]


def compute(table: RunTable, metric: str, request: dict[str, Any]) -> dict[str, Any]:
    """The attribution report (runs in the worker process; imports dowhy there)."""
    from runledger.analysis.attribution import AttributionInput, AttributionOptions, attribute
    from runledger.analysis.detection import infer_direction

    graph = request.get("graph")
    options = AttributionOptions(
        factors=request.get("factors") or None,
        graph=[(str(a), str(b)) for a, b in graph] if graph else None,
    )
    data = AttributionInput(
        run_ids=table.run_ids,
        metric=table.metric,
        factors=table.factors,
        candidate=table.candidate,
        baseline=table.baseline,
        metric_name=metric,
        higher_is_better=infer_direction(metric) == "max",
    )
    return attribute(data, options).to_dict()


def _warm_up() -> None:
    """Import the attribution stack in the worker before the first job needs it."""
    import runledger.analysis.attribution  # noqa: F401


def attribution_executor() -> ProcessPoolExecutor:
    """One worker process for the fits. It dies with this process: a worker of a process
    killed with SIGKILL (a crash, a restart) would otherwise wait forever, ~400 MiB each."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=follow_parent,
        initargs=(os.getpid(), signal.SIGKILL),
    )


class AttributionWorker:
    """Claims and computes attribution jobs until stopped, one at a time."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, reporter: Reporter, producer: KafkaProducer
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._reporter = reporter
        self._producer = producer
        self._executor: ProcessPoolExecutor | None = None
        self.completed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Poll for pending jobs; compute each; publish its result."""
        try:
            while not stop.is_set():
                try:
                    job = await self.claim()
                    if job is None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), _IDLE_POLL_S)
                        continue
                    await self.process(job)
                except Exception:
                    log.exception("attribution worker failed; retrying in 1 s")
                    await asyncio.sleep(1)
        finally:
            self._shutdown_executor()

    async def claim(self) -> Job | None:
        """Take the oldest pending job (or one whose worker's lease ran out)."""
        lease = self._settings.attribution_timeout_s + 30
        row = await self._pool.fetchrow(
            "UPDATE attributions a SET status = 'running', claimed_by = $1,"
            " claimed_until = now() + make_interval(secs => $2)"
            " FROM (SELECT tenant_id, attribution_id FROM attributions"
            "       WHERE status = 'pending' OR (status = 'running' AND claimed_until < now())"
            "       ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS next"
            " WHERE a.tenant_id = next.tenant_id AND a.attribution_id = next.attribution_id"
            " RETURNING a.tenant_id, a.attribution_id, a.experiment_id, a.metric, a.request::text AS request",
            _WORKER_ID,
            float(lease),
        )
        if row is None:
            return None
        return Job(
            row["tenant_id"],
            row["attribution_id"],
            row["experiment_id"],
            row["metric"],
            orjson.loads(row["request"]),
        )

    async def process(self, job: Job) -> None:
        """Compute one job and publish its result (or why it failed)."""
        started = time.perf_counter()
        result: dict[str, Any] | None = None
        error: str | None = None
        table: RunTable | None = None
        try:
            async with self._pool.acquire() as conn:  # a database error propagates: the lease retries it
                table = await load_run_table(conn, job.tenant_id, job.experiment_id, job.request)
        except AttributionInputError as exc:
            error = str(exc)
        try:
            if table is not None:
                result = await self._compute(table, job.metric, job.request)
        except TimeoutError:
            error = f"the attribution took longer than {self._settings.attribution_timeout_s:.0f} s"
            self._shutdown_executor()  # the stuck worker process goes with it
        except ValueError as exc:  # the analysis refused the data (too few runs, nothing differs)
            error = str(exc)
        except Exception as exc:  # a numerical failure: report it rather than retry it forever
            log.exception("attribution %s failed", job.attribution_id)
            error = f"the attribution failed: {type(exc).__name__}: {exc}"
            if isinstance(exc, BrokenProcessPool):
                self._shutdown_executor()
        log.info("attribution %s of tenant %s: %s", job.attribution_id, job.tenant_id, error or "done")
        event = self._reporter.attribution_result(
            job.tenant_id, job.experiment_id, job.attribution_id, job.metric, result, error
        )
        await asyncio.to_thread(self._publish, event)
        self.completed += 1
        metrics.ATTRIBUTION_SECONDS.labels("failed" if error else "done").observe(
            time.perf_counter() - started
        )

    async def _compute(self, table: RunTable, metric: str, request: dict[str, Any]) -> dict[str, Any]:
        if self._executor is None:
            self._executor = attribution_executor()
            self._executor.submit(_warm_up)
        future = asyncio.get_running_loop().run_in_executor(self._executor, compute, table, metric, request)
        return await asyncio.wait_for(future, self._settings.attribution_timeout_s)

    def _publish(self, event: Outgoing) -> None:
        self._producer.send(self._settings.events_topic, key=event.key, value=event.value).get(timeout=30)

    def _shutdown_executor(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()  # a fit that does not return would otherwise keep the process
            executor.shutdown(wait=False, cancel_futures=True)
