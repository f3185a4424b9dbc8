"""Fleet-scale load on the embedded stack: `make bench-fleet` (python -m bench.fleet).

Simulates a training fleet: P producer processes each host R concurrent runs, one thread
per run as in a multi-threaded trainer (`rl.start_run` in the thread, then
`rl.log_metrics(row, step=)` on its own schedule). Every run logs K metrics per step,
one step every `interval` seconds, with the runs' phases spread evenly over the
interval (a smooth load), for `duration` seconds. SDK: Kafka transport; system metrics,
code state, environment capture and run lint off, so only the simulated metrics count.

Measured from outside the code path under test:

- freshness: producers record (run, step, wall time just before the log call) for every
  step of a sample of runs; this process polls PostgreSQL `latest_metrics` (what
  GET /api/v1/runs/{id} serves; the projector writes it after the ClickHouse insert) for
  those runs every `poll` seconds, and the API itself for a few of them. Freshness of a
  step = return time of the first poll that saw it - its log time (an upper bound: it
  includes up to one poll interval).
- keeping up: points logged vs `runledger_points_projected_total`, every key of every
  run at its last step in `latest_metrics`, every run FINISHED, dead letters; after the
  load, one key's history of every run through the API (ClickHouse: a lost event leaves a
  step missing); drain = last log call -> all of that true.
- resources: RSS of the services process (all, the main one, its analysis children) and
  the broker, PSS of all PostgreSQL processes (shared buffers counted once) every
  `sample` seconds, detector states in the analysis service's memory,
  `runledger_ingest_lag_seconds` and committed offsets per partition, CPU seconds of
  each part over the load.

Output: JSON to stdout and bench/out/<name>.json, the memory samples as
bench/out/<name>_memory.csv (and a PNG when matplotlib happens to be installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import multiprocessing as mp
import os
import platform
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import cpu_seconds, embedded_stack, stack_processes
from runledger.embedded.supervisor import Supervisor

OUT = Path(__file__).parent / "out"
EXPERIMENT = "bench-fleet"
TENANT = "default"


# Tables whose autovacuum runs the samples count (see _table_stats).
_VACUUMED_TABLES = ["latest_metrics", "applied_events", "runs", "analysis_state", "analysis_checkpoints"]


@dataclass(frozen=True)
class Fleet:
    """The simulated fleet and how it is observed."""

    producers: int = 8
    runs_per_producer: int = 125
    keys: int = 100
    # 10 s: 10,000 points/s from the 1,000 runs, the highest rate the whole embedded stack
    # sustains on a 2-core machine with freshness near 2 s (RESULTS "Fleet scale"); pass
    # --interval 4 for the 25,000 points/s it falls behind at.
    interval_s: float = 10.0
    duration_s: float = 120.0
    sample_every: int = 20  # every Nth run has each step timed (freshness)
    api_runs: int = 5  # of the timed runs, this many are also polled through the API
    poll_s: float = 0.1
    api_poll_s: float = 0.25
    sample_s: float = 5.0

    @property
    def runs(self) -> int:
        """Runs in the whole fleet."""
        return self.producers * self.runs_per_producer

    @property
    def steps(self) -> int:
        """Steps each run logs."""
        return max(1, int(self.duration_s / self.interval_s))

    @property
    def points(self) -> int:
        """Metric points the whole fleet logs."""
        return self.runs * self.steps * self.keys

    @property
    def points_per_s(self) -> float:
        """The fleet's steady logging rate."""
        return self.runs * self.keys / self.interval_s

    @property
    def probe_key(self) -> str:
        """The key the freshness probes read (one log_metrics call lands in one event)."""
        return self.key_names()[-1]

    def key_names(self) -> list[str]:
        """The K metric names every run logs."""
        return [f"layer{k // 10}/metric{k}" for k in range(self.keys)]

    def run_index(self, producer: int, slot: int) -> int:
        """Fleet-wide index of a producer's slot-th run (interleaved across producers)."""
        return slot * self.producers + producer

    def phase(self, index: int) -> float:
        """Offset of a run's first step after the start, spreading runs over one interval."""
        return index / self.runs * self.interval_s

    def timed(self, index: int) -> bool:
        """Whether a run's steps are timed for freshness."""
        return index % self.sample_every == 0


# --- producers (spawned processes) -----------------------------------------------------


@dataclass
class _Job:
    """One simulated training run, driven by its own thread."""

    fleet: Fleet
    index: int
    run_id: str = ""
    t0: float = 0.0
    samples: list[tuple[int, float]] = field(default_factory=list)  # (step, wall time logged)
    lateness_s: list[float] = field(default_factory=list)
    call_s: list[float] = field(default_factory=list)
    last_log: float = 0.0

    def train(self, started: threading.Barrier, release: threading.Event) -> None:
        """Start the run, wait for the common start, then log one step per interval."""
        import runledger_sdk as rl

        fleet = self.fleet
        names = fleet.key_names()
        rng = np.random.default_rng(self.index)
        timed = fleet.timed(self.index)
        try:
            with rl.start_run(experiment=EXPERIMENT, name=f"fleet-{self.index:04d}") as run:
                self.run_id = run.run_id
                started.wait()
                release.wait()
                first = self.t0 + fleet.phase(self.index)
                for step in range(fleet.steps):
                    due = first + step * fleet.interval_s
                    delay = due - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    row = dict(zip(names, rng.random(fleet.keys).tolist(), strict=True))
                    logged = time.time()
                    call = time.perf_counter()
                    rl.log_metrics(row, step=step)
                    self.call_s.append(time.perf_counter() - call)
                    self.lateness_s.append(logged - due)
                    if timed:
                        self.samples.append((step, logged))
                self.last_log = time.time()
        except BaseException:
            started.abort()
            raise


def _producer(
    fleet: Fleet,
    producer: int,
    bootstrap: str,
    api_key: str,
    spool: str,
    ready: Any,
    go: Any,
    start_at: Any,
    results: Any,
) -> None:
    """One producer process: R runs in R threads, one SDK client (signing with the stack's key)."""
    import runledger_sdk as rl

    rl.init(
        transport="kafka",
        kafka_bootstrap=bootstrap,
        api_key=api_key,
        spool_dir=spool,
        system_metrics_interval_s=0,
        capture_code_state=False,
        capture_environment=False,
        lint_runs=False,
    )
    jobs = [_Job(fleet, fleet.run_index(producer, slot)) for slot in range(fleet.runs_per_producer)]
    started = threading.Barrier(len(jobs) + 1)
    release = threading.Event()
    threads = [threading.Thread(target=job.train, args=(started, release), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    started.wait(timeout=300)
    ready.put({"producer": producer, "pid": os.getpid(), "runs": {job.index: job.run_id for job in jobs}})
    go.wait()
    for job in jobs:
        job.t0 = start_at.value
    release.set()
    for thread in threads:
        thread.join()
    ended = time.time()
    acked = rl.flush(timeout=120)
    cpu = psutil.Process().cpu_times()
    results.put(
        {
            "producer": producer,
            "samples": [(job.run_id, s, t) for job in jobs for s, t in job.samples],
            "lateness_s": [x for job in jobs for x in job.lateness_s],
            "call_s": [x for job in jobs for x in job.call_s],
            "last_log": max(job.last_log for job in jobs),
            "flush_s": time.time() - ended,
            "acked": acked,
            "cpu_s": cpu.user + cpu.system,
        }
    )


def _collect(q: Any, procs: Sequence[Any], count: int, timeout: float) -> list[dict[str, Any]]:
    """`count` messages from `q`; fails early when a producer died without sending."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while len(got) < count:
        try:
            got.append(q.get(timeout=1.0))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a producer process failed") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(got)}/{count} producers answered in time") from None
    return got


# --- observation (this process) ----------------------------------------------------------


class Visibility:
    """When each step of each probed run was first seen queryable."""

    def __init__(self) -> None:
        self.first_seen: dict[str, dict[int, float]] = {}
        self._latest: dict[str, int] = {}

    def observe(self, run_id: str, step: int, at: float) -> None:
        """A probe that returned at `at` saw `step` as the run's latest: steps up to it are visible."""
        previous = self._latest.get(run_id, -1)
        if step > previous:
            seen = self.first_seen.setdefault(run_id, {})
            for s in range(previous + 1, step + 1):
                seen[s] = at
            self._latest[run_id] = step

    def freshness(
        self, samples: Iterable[tuple[str, int, float]], probed: Iterable[str], t0: float, half: float
    ) -> dict[str, Any]:
        """Percentiles of seen - logged over the `samples` of the `probed` runs."""
        watched = set(probed)
        ages: list[float] = []
        first_half: list[float] = []
        second_half: list[float] = []
        by_minute: dict[int, list[float]] = {}
        missing = 0
        for run_id, step, logged in samples:
            if run_id not in watched:
                continue
            at = self.first_seen.get(run_id, {}).get(step)
            if at is None:
                missing += 1
                continue
            ages.append(at - logged)
            (first_half if logged - t0 < half else second_half).append(at - logged)
            by_minute.setdefault(int((logged - t0) // 60), []).append(at - logged)
        return {
            "steps_timed": len(ages),
            "never_seen": missing,
            **_percentiles(ages, "s", 3),
            "p99_first_half_s": _pct(first_half, 99, 3),
            "p99_second_half_s": _pct(second_half, 99, 3),
            "p99_by_minute_s": {m: _pct(v, 99, 2) for m, v in sorted(by_minute.items())},
        }


def _partition(run_id: str, partitions: int) -> int:
    """The events-topic partition of a run (the SDK keys by run id; Kafka's default partitioner)."""
    from kafka.partitioner.default import murmur2

    return int((murmur2(run_id.encode()) & 0x7FFFFFFF) % partitions)


def _pct(values: Sequence[float], q: float, digits: int) -> float | None:
    return round(float(np.percentile(values, q)), digits) if len(values) else None


def _percentiles(values: Sequence[float], unit: str, digits: int) -> dict[str, float | None]:
    out = {f"p{q}_{unit}": _pct(values, q, digits) for q in (50, 95, 99)}
    out[f"max_{unit}"] = round(max(values), digits) if values else None
    return out


def _scrape(text: str) -> dict[str, float]:
    """The Prometheus samples this benchmark reads: ingest lag (max, and per partition, as the
    projector committed offsets), the analysis service's lag, points projected, dead letters,
    projector batch totals."""
    wanted = {
        "runledger_points_projected_total",
        "runledger_dead_letters_total",
        "runledger_projector_batch_seconds_sum",
        "runledger_projector_batch_seconds_count",
        "runledger_projector_batch_points_sum",
        "runledger_analysis_series_in_memory",
    }
    out: dict[str, float] = {"ingest_lag_s": 0.0, "analysis_lag_s": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "runledger_analysis_lag_seconds":
                out["analysis_lag_s"] = max(out["analysis_lag_s"], sample.value)
            elif sample.name == "runledger_ingest_lag_seconds":
                out["ingest_lag_s"] = max(out["ingest_lag_s"], sample.value)
                out[f"lag_p{sample.labels['partition']}_s"] = sample.value
            elif sample.name == "runledger_projector_offset_anomalies_total":
                out[f"offset_{sample.labels['kind']}"] = sample.value
            elif sample.name == "runledger_analysis_offset_anomalies_total":
                key = f"analysis_offset_{sample.labels['kind']}"
                out[key] = out.get(key, 0.0) + sample.value
            elif sample.name == "runledger_projector_repeated_events_total":
                out[f"repeated_{sample.labels['where']}"] = sample.value
            elif sample.name == "runledger_projector_committed_offset":
                out[f"offset_p{sample.labels['partition']}"] = sample.value
            elif sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
            elif sample.name in ("runledger_gc_pause_seconds_sum", "runledger_gc_pause_seconds_count"):
                kind = sample.name.rsplit("_", 1)[1]
                out[f"gc{sample.labels['generation']}_pause_{kind}"] = sample.value
    return out


def _rss_mb(procs: Iterable[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return round(total / 2**20, 1)


def _pss_mb(procs: Iterable[psutil.Process]) -> float:
    """Proportional set size: shared pages (PostgreSQL's shared buffers) counted once in the sum."""
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return round(total / 2**20, 1)


def _postgres_pss_by_kind(procs: Iterable[psutil.Process]) -> dict[str, float]:
    """PostgreSQL's PSS split by process title: client backends (one per pooled connection),
    autovacuum workers (they come and go, each with up to maintenance_work_mem), the rest
    (postmaster, checkpointer, writers: the shared buffers mostly)."""
    totals = {"backends": 0, "autovacuum": 0, "other": 0}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            kind = "autovacuum" if "autovacuum worker" in title else "backends" if "(" in title else "other"
            totals[kind] += proc.memory_full_info().pss
    return {f"postgres_pss_{kind}_mb": round(total / 2**20, 1) for kind, total in totals.items()}


class Monitor:
    """Freshness probes (Postgres, API) and the resource sampler, as asyncio tasks."""

    def __init__(self, stack: Supervisor, fleet: Fleet, pool: asyncpg.Pool, probed: list[str]) -> None:
        self.stack = stack
        self.fleet = fleet
        self.pool = pool
        self.probed = probed
        self.api_probed = probed[: fleet.api_runs]
        self.db = Visibility()
        self.api = Visibility()
        self.api_request_s: list[float] = []
        self.db_query_s: list[float] = []
        self.rows: list[dict[str, float]] = []
        self.t0 = 0.0
        self.partitions = stack.settings.topic_partitions
        self.http = httpx.AsyncClient(
            base_url=stack.api_url, timeout=10, trust_env=False, headers=_auth(stack.api_key)
        )
        self._tasks: list[asyncio.Task[None]] = []

    def parts(self) -> dict[str, list[psutil.Process]]:
        """Processes of each part of the stack (PostgreSQL: the postmaster and its backends)."""
        return stack_processes(self.stack)

    async def metrics(self) -> dict[str, float]:
        """The services process's /metrics, reduced (retried once: a sample must not end the run)."""
        try:
            response = await self.http.get("/metrics")
        except httpx.TransportError:
            response = await self.http.get("/metrics")
        response.raise_for_status()
        return _scrape(response.text)

    def start(self) -> None:
        """Start probing and sampling."""
        self._tasks = [
            asyncio.create_task(self._probe_db()),
            asyncio.create_task(self._probe_api()),
            asyncio.create_task(self._sample()),
        ]

    async def stop(self) -> None:
        """Take one last sample and stop every task."""
        await self._sample_once()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()

    async def _probe_db(self) -> None:
        sql = "SELECT run_id, step FROM latest_metrics WHERE tenant_id = $1 AND run_id = ANY($2::text[]) AND key = $3"
        while True:
            began = time.time()
            rows = await self.pool.fetch(sql, TENANT, self.probed, self.fleet.probe_key)
            returned = time.time()
            self.db_query_s.append(returned - began)
            for row in rows:
                self.db.observe(row["run_id"], row["step"], returned)
            await asyncio.sleep(max(0.0, self.fleet.poll_s - (returned - began)))

    async def _probe_one(self, run_id: str) -> None:
        began = time.time()
        response = await self.http.get(f"/api/v1/runs/{run_id}")
        returned = time.time()
        self.api_request_s.append(returned - began)
        if response.status_code == 200:
            latest = response.json().get("metrics", {}).get(self.fleet.probe_key)
            if latest is not None:
                self.api.observe(run_id, int(latest["step"]), returned)

    async def _probe_api(self) -> None:
        while True:
            began = time.time()
            await asyncio.gather(*(self._probe_one(r) for r in self.api_probed))
            await asyncio.sleep(max(0.0, self.fleet.api_poll_s - (time.time() - began)))

    async def _sample_once(self) -> None:
        parts = await asyncio.to_thread(self.parts)
        row: dict[str, float] = {"t_s": round(time.time() - self.t0, 2) if self.t0 else 0.0}
        # The services' main process (API, projector, chdb) apart from its children (analysis).
        row["services_main_rss_mb"] = await asyncio.to_thread(_rss_mb, parts["services"][:1])
        row["services_children_rss_mb"] = await asyncio.to_thread(_rss_mb, parts["services"][1:])
        row["services_rss_mb"] = round(row["services_main_rss_mb"] + row["services_children_rss_mb"], 1)
        row["broker_rss_mb"] = await asyncio.to_thread(_rss_mb, parts["broker"])
        row["postgres_pss_mb"] = await asyncio.to_thread(_pss_mb, parts["postgres"])
        row.update(await asyncio.to_thread(_postgres_pss_by_kind, parts["postgres"]))
        # Cumulative CPU seconds per part (the services' main process apart from its children,
        # the analysis worker among them): which part's cost grows as the data does.
        for part, procs in parts.items():
            row[f"{part}_cpu_s"] = round(await asyncio.to_thread(cpu_seconds, procs), 2)
        row["services_main_cpu_s"] = round(await asyncio.to_thread(cpu_seconds, parts["services"][:1]), 2)
        row.update(await self._table_stats())
        scraped = await self.metrics()
        for name in ("runledger_projector_batch_seconds_sum", "runledger_projector_batch_seconds_count"):
            row[name.removeprefix("runledger_projector_")] = round(scraped.get(name, 0.0), 3)
        for gen in range(3):  # the services process's garbage-collection pauses, cumulative
            for kind in ("sum", "count"):
                row[f"gc{gen}_pause_{kind}"] = round(scraped.get(f"gc{gen}_pause_{kind}", 0.0), 4)
        row["ingest_lag_s"] = round(scraped["ingest_lag_s"], 3)
        row["analysis_lag_s"] = round(scraped["analysis_lag_s"], 3)
        row["points_projected"] = scraped.get("runledger_points_projected_total", 0.0)
        row["analysis_series_in_memory"] = scraped.get("runledger_analysis_series_in_memory", 0.0)
        for partition in range(self.partitions):
            row[f"lag_p{partition}_s"] = round(scraped.get(f"lag_p{partition}_s", 0.0), 3)
            row[f"offset_p{partition}"] = scraped.get(f"offset_p{partition}", -1.0)
        self.rows.append(row)

    async def _table_stats(self) -> dict[str, float]:
        """Postgres tables that grow or bloat with the load: live and dead rows."""
        rows = await self.pool.fetch(
            "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) AS bytes"
            " FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
            ["latest_metrics", "applied_events", "runs"],
        )
        out: dict[str, float] = {}
        for r in rows:
            out[f"{r['relname']}_live"] = r["n_live_tup"]
            out[f"{r['relname']}_dead"] = r["n_dead_tup"]
            out[f"{r['relname']}_mb"] = round(r["bytes"] / 2**20, 1)
        # Cumulative autovacuum runs of the tables the load rewrites: which vacuum lines up with
        # a slow minute (a vacuum of a bloated table takes most of a core for seconds).
        vacuums = await self.pool.fetch(
            "SELECT relname, autovacuum_count FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
            _VACUUMED_TABLES,
        )
        out |= {f"vacuums_{r['relname']}": r["autovacuum_count"] for r in vacuums}
        return out

    async def _sample(self) -> None:
        while True:
            began = time.monotonic()
            await self._sample_once()
            await asyncio.sleep(max(0.0, self.fleet.sample_s - (time.monotonic() - began)))


async def _wait_for(check: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> float:
    """Poll the coroutine function `check` every 50 ms until true; the time.time() it was."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await check():
            return time.time()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {limit_s} s")


_MEMORY_COLUMNS = (
    "services_rss_mb",
    "services_main_rss_mb",
    "services_children_rss_mb",
    "broker_rss_mb",
    "postgres_pss_mb",
    "postgres_pss_backends_mb",
    "postgres_pss_autovacuum_mb",
    "postgres_pss_other_mb",
)


def _cumulative_across_restarts(totals: list[float]) -> float:
    """What a cumulative counter grew by over samples, counting a drop as a restart from 0."""
    grown = 0.0
    for before, now in itertools.pairwise(totals):
        grown += now - before if now >= before else now
    return grown


def _memory_summary(rows: list[dict[str, float]], column: str, fleet: Fleet) -> dict[str, float | None]:
    """Start (before the load), end (after the drain), max, and the slope over the load's second half."""
    values = [r[column] for r in rows]
    late = [(r["t_s"], r[column]) for r in rows if fleet.duration_s / 2 <= r["t_s"] <= fleet.duration_s]
    slope = None
    if len(late) >= 3:
        ts, vs = zip(*late, strict=True)
        slope = round(float(np.polyfit(ts, vs, 1)[0]) * 60, 2)
    return {
        "start_mb": values[0],
        "end_mb": values[-1],
        "max_mb": max(values),
        "slope_second_half_mb_per_min": slope,
    }


def _write_memory(rows: list[dict[str, float]], name: str) -> list[str]:
    """CSV of the samples; a PNG as well when matplotlib is importable (not a dependency)."""
    OUT.mkdir(exist_ok=True)
    written = [OUT / f"{name}_memory.csv"]
    with written[0].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return [str(p) for p in written]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ts = [r["t_s"] for r in rows]
    for column in _MEMORY_COLUMNS:
        ax.plot(ts, [r[column] for r in rows], label=column.removesuffix("_mb"))
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("MiB")
    ax.legend()
    fig.tight_layout()
    written.append(OUT / f"{name}_memory.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return [str(p) for p in written]


async def _drive(stack: Supervisor, fleet: Fleet, name: str) -> dict[str, Any]:
    """Start the producers, run the load, measure, and summarise."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    spool = stack.settings.state_dir / "fleet-spool"
    procs = [
        ctx.Process(
            target=_producer,
            args=(
                fleet,
                i,
                stack.kafka_bootstrap,
                stack.api_key,
                str(spool / str(i)),
                ready,
                go,
                start_at,
                results,
            ),
        )
        for i in range(fleet.producers)
    ]
    for p in procs:
        p.start()
    try:
        hello = await asyncio.to_thread(_collect, ready, procs, fleet.producers, 300)
        runs: dict[int, str] = {}
        for h in hello:
            runs.update(h["runs"])
        run_ids = list(runs.values())
        probed = [runs[i] for i in sorted(runs) if fleet.timed(i)]
        async with asyncpg.create_pool(stack.postgres_dsn, min_size=2, max_size=3) as pool:

            async def all_started() -> bool:
                n = await pool.fetchval(
                    "SELECT count(*) FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
                    TENANT,
                    run_ids,
                )
                return bool(n == fleet.runs)

            await _wait_for(all_started, 120, "all runs started")
            monitor = Monitor(stack, fleet, pool, probed)
            monitor.start()
            t0 = time.time() + 2.0
            monitor.t0 = t0
            start_at.value = t0
            go.set()
            await asyncio.sleep(max(0.0, t0 - time.time()))
            before = await monitor.metrics()
            parts = monitor.parts()
            cpu_before = {k: cpu_seconds(v) for k, v in parts.items()}
            machine_before = psutil.cpu_times()
            self_before = cpu_seconds([psutil.Process()])
            done = await asyncio.to_thread(_collect, results, procs, fleet.producers, fleet.duration_s + 300)
            last_log = max(d["last_log"] for d in done)

            async def all_queryable() -> bool:
                at_last = await pool.fetchval(
                    "SELECT count(*) FROM latest_metrics WHERE tenant_id = $1 AND run_id = ANY($2::text[])"
                    " AND step = $3",
                    TENANT,
                    run_ids,
                    fleet.steps - 1,
                )
                finished = await pool.fetchval(
                    "SELECT count(*) FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::text[])"
                    " AND status = 'FINISHED'",
                    TENANT,
                    run_ids,
                )
                return bool(at_last == fleet.runs * fleet.keys and finished == fleet.runs)

            drained = await _wait_for(all_queryable, 300, "every point queryable")
            load_end = time.time()
            cpu_after = {k: cpu_seconds(v) for k, v in parts.items()}
            machine_after = psutil.cpu_times()
            self_after = cpu_seconds([psutil.Process()])
            scraped: dict[str, dict[str, float]] = {}

            async def all_counted() -> bool:
                # The projector counts a batch just after committing it.
                scraped["after"] = await monitor.metrics()
                return scraped["after"].get("runledger_points_projected_total", 0) >= fleet.points

            with contextlib.suppress(TimeoutError):
                await _wait_for(all_counted, 30, "points counted")
            counted = time.time()
            after = scraped["after"]
            await monitor.stop()
            # Every run's probe key from ClickHouse: an event lost anywhere leaves a step missing.
            history = await _history_counts(stack.api_url, stack.api_key, run_ids, fleet.probe_key)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()

    wall = load_end - t0
    samples: list[tuple[str, int, float]] = [(r, s, t) for d in done for r, s, t in d["samples"]]
    lateness = [x for d in done for x in d["lateness_s"]]
    calls = [x for d in done for x in d["call_s"]]
    cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
    if stack.rotations:
        # The broker processes replaced during the load took their CPU time with them: add
        # it up from the samples (what the last interval before each replacement used is lost).
        cpu["broker"] = _cumulative_across_restarts(
            [r["broker_cpu_s"] for r in monitor.rows if 0 <= r["t_s"] <= load_end - t0]
        )
    cpu["producers"] = sum(d["cpu_s"] for d in done)  # their whole life, start-up included
    cpu["bench_observer"] = self_after - self_before
    busy = sum(
        getattr(machine_after, f) - getattr(machine_before, f)
        for f in ("user", "system", "nice", "irq", "softirq")
    )
    cpu["machine_total"] = busy
    batches = after.get("runledger_projector_batch_seconds_count", 0) - before.get(
        "runledger_projector_batch_seconds_count", 0
    )
    batch_s = after.get("runledger_projector_batch_seconds_sum", 0) - before.get(
        "runledger_projector_batch_seconds_sum", 0
    )
    batch_points = after.get("runledger_projector_batch_points_sum", 0) - before.get(
        "runledger_projector_batch_points_sum", 0
    )
    during_load = [r for r in monitor.rows if 0 <= r["t_s"] <= fleet.duration_s]
    lags = [r["ingest_lag_s"] for r in during_load]
    analysis_lags = [r["analysis_lag_s"] for r in during_load]
    files = _write_memory(monitor.rows, name)
    return {
        "fleet": {
            **asdict(fleet),
            "runs": fleet.runs,
            "steps_per_run": fleet.steps,
            "points": fleet.points,
            "points_per_s": fleet.points_per_s,
            "steps_per_s": fleet.runs / fleet.interval_s,
        },
        "freshness_postgres": {
            "runs_probed": len(probed),
            "poll_s": fleet.poll_s,
            **monitor.db.freshness(samples, probed, t0, fleet.duration_s / 2),
            "probe_query_p50_ms": _pct([x * 1000 for x in monitor.db_query_s], 50, 2),
            "p99_by_partition_s": {
                p: monitor.db.freshness(
                    [x for x in samples if _partition(x[0], monitor.partitions) == p],
                    probed,
                    t0,
                    fleet.duration_s / 2,
                )["p99_s"]
                for p in range(monitor.partitions)
            },
        },
        "freshness_api": {
            "runs_probed": len(monitor.api_probed),
            "poll_s": fleet.api_poll_s,
            **monitor.api.freshness(samples, monitor.api_probed, t0, fleet.duration_s / 2),
            **{
                f"get_run_{k}": v
                for k, v in _percentiles([x * 1000 for x in monitor.api_request_s], "ms", 1).items()
            },
        },
        "ingest_lag_seconds_gauge": {
            "samples": len(lags),
            "max_s": round(max(lags), 3) if lags else None,
            "p50_s": _pct(lags, 50, 3),
        },
        "analysis_lag_seconds_gauge": {
            "max_s": round(max(analysis_lags), 3) if analysis_lags else None,
            "p50_s": _pct(analysis_lags, 50, 3),
            "at_end_of_load_s": analysis_lags[-1] if analysis_lags else None,
        },
        "keeps_up": {
            "points_logged": fleet.points,
            "points_projected": int(after.get("runledger_points_projected_total", 0)),
            "dead_letters": int(
                after.get("runledger_dead_letters_total", 0) - before.get("runledger_dead_letters_total", 0)
            ),
            # The consumers' view of their input: offsets that skipped ahead (gap) or back
            # (repeat), and events dropped for an event id seen before, by where.
            "offset_anomalies": {
                k: int(v)
                for k, v in after.items()
                if k.startswith(("offset_gap", "offset_repeat", "analysis_offset_"))
            },
            "repeated_events": {k: int(v) for k, v in after.items() if k.startswith("repeated_")},
            "all_keys_at_last_step_and_runs_finished": True,  # else _wait_for raised
            "drain_after_last_log_s": round(drained - last_log, 3),
            "counter_complete_after_last_log_s": round(counted - last_log, 3),
            "sdk_flush_after_last_step_s": round(max(d["flush_s"] for d in done), 3),
            "sdk_all_acked": all(d["acked"] for d in done),
            "api_history_probe_key_points": {
                "runs": len(history),
                "expected_each": fleet.steps,
                "complete": sum(n == fleet.steps for _, n in history),
                "incomplete": [(run, n) for run, n in history if n != fleet.steps][:20],
            },
        },
        "producers": {
            "schedule_lateness": _percentiles([x * 1000 for x in lateness], "ms", 2),
            "log_metrics_call": _percentiles([x * 1e6 for x in calls], "us", 1),
        },
        "projector": {
            "batches": int(batches),
            "mean_batch_points": round(batch_points / batches) if batches else None,
            "mean_batch_write_ms": round(batch_s / batches * 1000, 1) if batches else None,
            "writer_busy_fraction": round(batch_s / wall, 3),
        },
        "memory": {
            "services": _memory_summary(monitor.rows, "services_rss_mb", fleet),
            "services_main_process": _memory_summary(monitor.rows, "services_main_rss_mb", fleet),
            "services_children": _memory_summary(monitor.rows, "services_children_rss_mb", fleet),
            "broker": _memory_summary(monitor.rows, "broker_rss_mb", fleet),
            "postgres_all_processes_pss": _memory_summary(monitor.rows, "postgres_pss_mb", fleet),
            **{
                f"postgres_pss_{kind}": _memory_summary(monitor.rows, f"postgres_pss_{kind}_mb", fleet)
                for kind in ("backends", "autovacuum", "other")
            },
            "files": files,
        },
        "broker_rotations": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()}
            for r in stack.rotations
        ],
        "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        "cpu_cores_used": {k: round(v / wall, 2) for k, v in cpu.items() if k != "producers"},
        "load_wall_s": round(wall, 1),
    }


def _auth(api_key: str) -> dict[str, str]:
    """HTTP headers of the stack's bootstrap key (every API route needs a key)."""
    return {"Authorization": f"Bearer {api_key}"}


async def _history_counts(api: str, api_key: str, run_ids: list[str], key: str) -> list[tuple[str, int]]:
    """(run, points of `key`) per run through the API's history route (ClickHouse)."""
    async with httpx.AsyncClient(base_url=api, timeout=30, trust_env=False, headers=_auth(api_key)) as http:
        counts = []
        for run_id in run_ids:
            response = await http.get(f"/api/v1/runs/{run_id}/metrics/{key}/history")
            response.raise_for_status()
            counts.append((run_id, len(response.json()["steps"])))
        return counts


def main() -> None:
    """Run the fleet against a fresh embedded stack and print the summary."""
    defaults = Fleet()
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--producers", type=int, default=defaults.producers)
    parser.add_argument("--runs-per-producer", type=int, default=defaults.runs_per_producer)
    parser.add_argument("--keys", type=int, default=defaults.keys)
    parser.add_argument(
        "--interval", type=float, default=defaults.interval_s, help="seconds per step per run"
    )
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds of logging")
    parser.add_argument("--sample-every", type=int, default=defaults.sample_every)
    parser.add_argument("--api-runs", type=int, default=defaults.api_runs)
    parser.add_argument("--name", default="fleet", help="output file prefix under bench/out/")
    args = parser.parse_args()
    fleet = Fleet(
        producers=args.producers,
        runs_per_producer=args.runs_per_producer,
        keys=args.keys,
        interval_s=args.interval,
        duration_s=args.duration,
        sample_every=args.sample_every,
        api_runs=args.api_runs,
    )
    with embedded_stack() as stack:
        report = asyncio.run(_drive(stack, fleet, args.name))
    report["machine"] = f"{platform.machine()}, {mp.cpu_count()} cores"
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
