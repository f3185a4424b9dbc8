"""BI feed benchmark: the runs wide export, a 10M-point export and OData pages, over real HTTP.

Seeds one tenant with --runs runs x --params params x --metrics metrics (latest values in
Postgres, --points points per series in ClickHouse/chdb, so the rollup holds min/max),
serves the API with uvicorn in this process, and measures for each export the time to
first byte, the total time, the bytes and the process's peak RSS growth (sampled every
10 ms); for OData, the latency of pages of 1,000 runs.

    .venv/bin/python -m bench.bi                      # 100k runs x 50 params x 20 metrics, 10M points
    .venv/bin/python -m bench.bi --runs 10000 --points 5
    .venv/bin/python -m bench.bi --data /tmp/bi-100k --only runs   # seed once, then reuse the data
    .venv/bin/python -m bench.bi --data /tmp/bi-100k --compare 3   # params: documents vs rows

--compare N exports the runs wide table (parquet, then csv) N times each way, reading params
from the runs' documents (runs.params_doc) and from the params rows alternately on the same
data, and reports each export's CPU seconds in this process and in Postgres (its backends,
ended ones included), which a shared machine's load does not inflate as it does wall times.

--data keeps the seeded Postgres and chdb directories in DIR (with a seeded.json saying
what they hold) and reuses them when a later run asks for the same sizes; seeding 100k
runs takes about 190 s on a 2-core machine, an export of the wide table a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import psutil
import pyarrow as pa
import uvicorn

from runledger.auth.keys import generate_key
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres.migrate import migrate
from services.api.app import create_app
from tests.unit.test_api_errors import RecordingPublisher

TENANT = "bench-bi"
EXPERIMENTS = 10


def _run_id(i: int) -> str:
    return f"{i:032x}"


async def _seed_postgres(dsn: str, runs: int, params: int, metrics: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.copy_records_to_table(
            "experiments",
            records=[
                (TENANT, f"e{e}", f"exp-{e}", 1_700_000_000_000, 1_700_000_000_000)
                for e in range(EXPERIMENTS)
            ],
            columns=["tenant_id", "experiment_id", "name", "creation_time", "last_update_time"],
        )
        await conn.copy_records_to_table(
            "runs",
            records=[
                (TENANT, _run_id(i), f"e{i % EXPERIMENTS}", f"run-{i}", "FINISHED", 1_700_000_000_000 + i)
                for i in range(runs)
            ],
            columns=["tenant_id", "run_id", "experiment_id", "name", "status", "start_time"],
        )
        for chunk in range(0, runs, 10_000):
            ids = range(chunk, min(runs, chunk + 10_000))
            # The params triggers fill runs.params_doc from these rows, as for the projector's.
            await conn.copy_records_to_table(
                "params",
                records=[
                    (TENANT, _run_id(i), f"param_{p:02d}", str((i * 7 + p) % 13))
                    for i in ids
                    for p in range(params)
                ],
            )
            await conn.copy_records_to_table(
                "tags", records=[(TENANT, _run_id(i), t, f"v{i % 5}") for i in ids for t in ("team", "stage")]
            )
            await conn.copy_records_to_table(
                "latest_metrics",
                records=[
                    (
                        TENANT,
                        _run_id(i),
                        f"metric_{m:02d}",
                        float((i + m) % 100) / 100,
                        99,
                        1_700_000_000_099,
                        0,
                    )
                    for i in ids
                    for m in range(metrics)
                ],
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _seed_clickhouse(store: ChdbClickHouse, runs: int, metrics: int, points: int) -> int:
    total = 0
    per_insert = max(1, 2_000_000 // (metrics * points))
    for start in range(0, runs, per_insert):
        ids = np.arange(start, min(runs, start + per_insert))
        n = len(ids) * metrics * points
        run_idx = np.repeat(ids, metrics * points)
        metric_idx = np.tile(np.repeat(np.arange(metrics), points), len(ids))
        step = np.tile(np.arange(points, dtype=np.int64), len(ids) * metrics)
        run_ids = pa.array([_run_id(int(i)) for i in ids]).take(pa.array(run_idx - start))
        keys = pa.array([f"metric_{m:02d}" for m in range(metrics)]).take(pa.array(metric_idx))
        experiments = pa.array([f"e{e}" for e in range(EXPERIMENTS)]).take(pa.array(run_idx % EXPERIMENTS))
        table = pa.table(
            {
                "tenant_id": pa.array([TENANT] * n),
                "experiment_id": experiments,
                "run_id": run_ids,
                "key": keys,
                "step": step,
                "timestamp": pa.array(1_700_000_000_000 + step, pa.int64()).cast(
                    pa.timestamp("ms", tz="UTC")
                ),
                "value": np.sin(step + run_idx).astype(np.float64),
            }
        )
        store.insert_arrow("metric_points", table)
        total += n
    return total


class _PeakRss:
    """Peak RSS of this process while active, sampled every 10 ms."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.base = self._process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _export(client: httpx.Client, path: str, params: dict[str, Any]) -> dict[str, Any]:
    with _PeakRss() as rss:
        started = time.perf_counter()
        first: float | None = None
        size = 0
        with client.stream("GET", path, params=params) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_bytes():
                if first is None and chunk:
                    first = time.perf_counter() - started
                size += len(chunk)
        total = time.perf_counter() - started
    return {
        "path": path,
        "params": params,
        "ttfb_s": round(first or total, 3),
        "total_s": round(total, 2),
        "mb": round(size / 1e6, 1),
        "peak_rss_growth_mb": round((rss.peak - rss.base) / 1e6, 1),
    }


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds of a process and its children, ended ones included (those it waited for)."""
    own = process.cpu_times()
    total = own.user + own.system + own.children_user + own.children_system
    for child in process.children():
        with suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def _compare(client: httpx.Client, postgres: psutil.Process, repeat: int) -> list[dict[str, Any]]:
    """The runs wide table with params from documents and from rows, alternately: CPU per export."""
    from services.api.exports import service

    api = psutil.Process()
    results = []
    for i in range(repeat):
        for fmt in ("parquet", "csv"):
            for documents in (True, False) if i % 2 == 0 else (False, True):  # neither always first
                service.PARAMS_FROM_DOCUMENTS = documents
                api_before, pg_before = api.cpu_times(), _cpu_s(postgres)
                result = _export(client, "/api/v1/exports/runs", {"format": fmt})
                api_after = api.cpu_times()
                result["params_from"] = "documents" if documents else "rows"
                result["cpu_api_s"] = round(
                    api_after.user + api_after.system - api_before.user - api_before.system, 2
                )
                result["cpu_postgres_s"] = round(_cpu_s(postgres) - pg_before, 2)
                result["load_1m"] = round(psutil.getloadavg()[0], 1)
                results.append(result)
                print(json.dumps(result), flush=True)
    service.PARAMS_FROM_DOCUMENTS = True
    return results


def _odata(client: httpx.Client, repeat: int, runs: int) -> list[dict[str, Any]]:
    cases = [
        ("Runs, first page of 1000", "/odata/Runs", {"$top": "1000"}),
        ("Runs, $filter + $orderby, 1000", "/odata/Runs", {"$top": "1000", "$filter": "ExperimentId eq 'e3' and startswith(Name, 'run-1')", "$orderby": "StartTime desc"}),
        ("Runs, $count=true, 1000", "/odata/Runs", {"$top": "1000", "$count": "true"}),
        ("RunParams, 1000 of 5M", "/odata/RunParams", {"$top": "1000", "$filter": "Key eq 'param_07'"}),
        ("MetricPoints, 1000 of one run", "/odata/MetricPoints", {"$top": "1000", "$filter": f"RunId eq '{_run_id(4242)}'"}),
    ]  # fmt: skip
    # A deep page: the nextLink after 50 pages of 1000.
    url: str | None = "/odata/Runs"
    deep = min(50, runs // 1000 - 1)
    for _ in range(deep):
        assert url is not None
        url = client.get(url).json().get("@odata.nextLink")
    if deep > 0 and url is not None:
        cases.append((f"Runs, page {deep + 1} via $skiptoken", url, {}))
    results = []
    for name, path, params in cases:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            r = client.get(path, params=params)
            times.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text
        rows = len(r.json()["value"])
        ordered = sorted(times)
        results.append(
            {
                "case": name,
                "rows": rows,
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
            }
        )
    return results


def _serve(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(30)


@contextmanager
def _stopping(serving: Iterator[str]) -> Iterator[None]:
    try:
        yield
    finally:
        next(serving, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--params", type=int, default=50)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument(
        "--points", type=int, default=5, help="points per series (runs x metrics x points in all)"
    )
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--data",
        type=Path,
        help="keep the seeded databases in this directory and reuse them when the sizes match",
    )
    parser.add_argument(
        "--only", choices=["all", "runs"], default="all", help="runs: only the runs wide table exports"
    )
    parser.add_argument(
        "--compare",
        type=int,
        default=0,
        metavar="N",
        help="only the runs wide table, N times each way: params from documents and from rows",
    )
    args = parser.parse_args()
    sizes = {"runs": args.runs, "params": args.params, "metrics": args.metrics, "points": args.points}
    if args.data is not None:
        root = args.data.resolve()
        marker = root / "seeded.json"
        reuse = marker.is_file() and json.loads(marker.read_text()) == sizes
        if not reuse:  # other sizes, or a seeding cut short: start again
            shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="runledger-bench-bi-"))
        marker, reuse = root / "seeded.json", False
    root.chmod(0o755)
    pg = EmbeddedPostgres(root / "pg" / "data", 0, fsync=False)
    pg.start()
    store = ChdbClickHouse(root / "clickhouse")
    summary: dict[str, Any] = {"runs": args.runs, "params": args.params, "metrics": args.metrics}
    try:
        store.migrate()
        if reuse:
            summary["points"] = args.runs * args.metrics * args.points
            summary["seed_s"] = "reused " + str(root)
        else:
            started = time.perf_counter()
            asyncio.run(_seed_postgres(pg.dsn, args.runs, args.params, args.metrics))
            summary["points"] = _seed_clickhouse(store, args.runs, args.metrics, args.points)
            summary["seed_s"] = round(time.perf_counter() - started, 1)
            marker.write_text(json.dumps(sizes))
        key = generate_key()
        settings = Settings(postgres_dsn=pg.dsn, default_tenant=TENANT, bootstrap_api_key=key.token)
        app = create_app(settings, store, publisher=RecordingPublisher())
        serving = _serve(app)
        base = next(serving)
        with (
            _stopping(serving),
            httpx.Client(base_url=base, auth=(key.key_id, key.secret), timeout=600) as client,
        ):
            if args.compare:
                assert pg.pid is not None
                summary["compare"] = _compare(client, psutil.Process(pg.pid), args.compare)
            else:
                summary["exports"] = [
                    _export(client, "/api/v1/exports/runs", {"format": "parquet"}),
                    _export(client, "/api/v1/exports/runs", {"format": "csv"}),
                    _export(
                        client, "/api/v1/exports/runs", {"format": "arrow", "filter": "params.param_03 = '5'"}
                    ),
                ]
            if args.only == "all" and not args.compare:
                summary["exports"] += [
                    _export(client, "/api/v1/exports/metric-points", {"format": "parquet"}),
                    _export(client, "/api/v1/exports/metric-points", {"format": "csv"}),
                ]
                summary["odata"] = _odata(client, args.repeat, args.runs)
    finally:
        store.close()
        pg.stop()
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
