"""Latency of MLflow run writes, answered at the broker's ack or once projected.

`python -m bench.mlflow_writes`. One client, as the mlflow client sends them (JSON over
HTTP, one call at a time): runs/create then runs/log-batch (a param and a metric), again
and again; every 10 runs a runs/get of the last one, which waits for that client's writes
to be projected. Each RUNLEDGER_MLFLOW_WRITE_ACK mode gets a fresh embedded stack, the modes
alternating `--rounds` times so drift hits both alike. Prints JSON: p50/p90 per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx

from bench.stack import embedded_stack

API = "/api/2.0/mlflow"


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def _ok(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()


def measure(write_ack: str, runs: int, warmup: int) -> dict[str, Any]:
    """One stack with RUNLEDGER_MLFLOW_WRITE_ACK=`write_ack`; the calls' latencies in ms."""
    with embedded_stack(mlflow_write_ack=write_ack) as stack:
        key = json.loads(stack.settings.connection_file.read_text())["api_key"]
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
            experiment = _ok(client.post(f"{API}/experiments/create", json={"name": "writes"}))
            timings: dict[str, list[float]] = {"create_run": [], "log_batch": [], "get_run": []}
            for i in range(warmup + runs):
                now = int(time.time() * 1000)
                started = time.perf_counter()
                body = {
                    "experiment_id": experiment["experiment_id"],
                    "start_time": now,
                    "run_name": f"r{i}",
                }
                run_id = _ok(client.post(f"{API}/runs/create", json=body))["run"]["info"]["run_id"]
                created = time.perf_counter()
                batch = {
                    "run_id": run_id,
                    "params": [{"key": "lr", "value": "0.1"}],
                    "metrics": [{"key": "acc", "value": 0.5, "timestamp": now, "step": 0}],
                }
                _ok(client.post(f"{API}/runs/log-batch", json=batch))
                logged = time.perf_counter()
                if i >= warmup:
                    timings["create_run"].append(created - started)
                    timings["log_batch"].append(logged - created)
                if i % 10 == 9:
                    started = time.perf_counter()
                    _ok(client.get(f"{API}/runs/get", params={"run_id": run_id}))
                    if i >= warmup:
                        timings["get_run"].append(time.perf_counter() - started)
    return {
        call: {
            "p50_ms": _ms(values, 0.5),
            "p90_ms": _ms(values, 0.9),
            "mean_ms": round(statistics.fmean(values) * 1000, 1),
        }
        for call, values in timings.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=150, help="timed runs per stack")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    parser.add_argument("--rounds", type=int, default=2, help="times each mode runs, alternating")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"broker": [], "projection": []}
    for round_ in range(args.rounds):
        order = ["broker", "projection"] if round_ % 2 == 0 else ["projection", "broker"]
        for mode in order:
            results[mode].append(measure(mode, args.runs, args.warmup))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
