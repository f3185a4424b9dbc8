"""RunLedger benchmarks on the embedded stack: `make bench` (python -m bench.run).

1. ingest: P producer processes log S steps x K metrics each through the SDK
   (Kafka transport); measured from the first log call until every point is
   queryable (the projector has committed it to ClickHouse and Postgres).
2. history: one run logs a 1,000,000-point series; the API's history route is
   timed full (columnar JSON, Arrow IPC) and downsampled to 1,000 points.
Figures go to stdout and bench/out/results.json; copy them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np

from bench.stack import embedded_stack

OUT = Path(__file__).parent / "out"


def _producer(
    index: int,
    bootstrap: str,
    api_key: str,
    spool: str,
    steps: int,
    keys: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    import runledger_sdk as rl

    rl.init(transport="kafka", kafka_bootstrap=bootstrap, api_key=api_key, spool_dir=spool)
    names = [f"layer{k // 10}/metric{k}" for k in range(keys)]
    values = np.random.default_rng(index).random((steps, keys))
    rows = [dict(zip(names, row, strict=True)) for row in values.tolist()]
    with rl.start_run(experiment="bench-ingest", name=f"producer-{index}") as run:
        ready.put(run.run_id)
        go.wait()
        started = time.perf_counter()
        for step, row in enumerate(rows):
            rl.log_metrics(row, step=step)
        logged = time.perf_counter()
    rl.flush()
    results.put({"producer": index, "log_s": logged - started, "acked_s": time.perf_counter() - started})


async def _wait_projected(dsn: str, run_ids: list[str], keys: int, last_step: int, limit_s: float) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            done = await conn.fetchval(
                "SELECT count(*) FROM latest_metrics WHERE run_id = ANY($1::text[]) AND step = $2",
                run_ids,
                last_step,
            )
            if done == len(run_ids) * keys:
                return time.perf_counter()
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    raise TimeoutError("points were not projected in time")


def bench_ingest(
    bootstrap: str, api_key: str, dsn: str, spool: Path, producers: int, steps: int, keys: int
) -> dict[str, Any]:
    """End-to-end ingest throughput: SDK log calls to points queryable."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=_producer,
            args=(i, bootstrap, api_key, str(spool / str(i)), steps, keys, ready, go, results),
        )
        for i in range(producers)
    ]
    for p in procs:
        p.start()
    run_ids = [ready.get(timeout=120) for _ in procs]
    started = time.perf_counter()
    go.set()
    finished = asyncio.run(_wait_projected(dsn, run_ids, keys, steps - 1, limit_s=600))
    per_producer = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    points = producers * steps * keys
    elapsed = finished - started
    return {
        "producers": producers,
        "steps": steps,
        "keys": keys,
        "points": points,
        "seconds_to_queryable": round(elapsed, 3),
        "points_per_s_end_to_end": round(points / elapsed),
        "sdk_log_points_per_s_per_producer": round(
            statistics.median(steps * keys / r["log_s"] for r in per_producer)
        ),
    }


def _log_series(bootstrap: str, api_key: str, spool: str, points: int, results: Any) -> None:
    import runledger_sdk as rl

    rl.init(transport="kafka", kafka_bootstrap=bootstrap, api_key=api_key, spool_dir=spool)
    values = np.cumsum(np.random.default_rng(0).normal(size=points)).tolist()
    values[points // 2] = 1e6  # a spike the downsampled read must keep
    with rl.start_run(experiment="bench-read", name="long-series") as run:
        for step, value in enumerate(values):
            rl.log_metric("loss", value, step=step)
    rl.flush()
    results.put(run.run_id)


def _timed(client: httpx.Client, url: str, params: dict[str, Any], repeat: int) -> dict[str, float]:
    client.get(url, params=params).raise_for_status()  # warm
    times = []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(url, params=params)
        times.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
        size = len(response.content)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
        "bytes": size,
    }


def bench_history(
    api: str, api_key: str, bootstrap: str, dsn: str, spool: Path, points: int, repeat: int
) -> dict[str, Any]:
    """History read latency of a long series, full and downsampled."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_log_series, args=(bootstrap, api_key, str(spool / "series"), points, results))
    proc.start()
    run_id = results.get(timeout=600)
    proc.join()
    asyncio.run(_wait_projected(dsn, [run_id], 1, points - 1, limit_s=600))
    url = f"{api}/api/v1/runs/{run_id}/metrics/loss/history"
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {api_key}"}) as client:
        downsampled = client.get(url, params={"max_points": 1000}).json()
        kept_spike = 1e6 in downsampled.get("values", [])
        return {
            "series_points": points,
            "full_json": _timed(client, url, {}, max(3, repeat // 4)),
            "full_arrow": _timed(client, url, {"format": "arrow"}, max(3, repeat // 4)),
            "downsampled_1000_minmax": _timed(client, url, {"max_points": 1000}, repeat),
            "downsampled_1000_lttb": _timed(client, url, {"max_points": 1000, "method": "lttb"}, repeat),
            "downsampled_keeps_spike": kept_spike,
        }


def main() -> None:
    """Run both benchmarks on a fresh embedded stack and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--series-points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-history", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {mp.cpu_count()} cores", "args": vars(args)}
    with embedded_stack() as stack:
        spool = stack.settings.state_dir / "bench-spool"
        if not args.skip_ingest:
            report["ingest"] = bench_ingest(
                stack.kafka_bootstrap,
                stack.api_key,
                stack.postgres_dsn,
                spool,
                args.producers,
                args.steps,
                args.keys,
            )
            print(json.dumps(report["ingest"], indent=2), flush=True)
        if not args.skip_history:
            report["history"] = bench_history(
                stack.api_url,
                stack.api_key,
                stack.kafka_bootstrap,
                stack.postgres_dsn,
                spool,
                args.series_points,
                args.repeat,
            )
            print(json.dumps(report["history"], indent=2), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
