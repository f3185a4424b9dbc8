"""Where a long metric history read through the MLflow API spends its time (`python -m bench.mlflow_history`).

On the embedded stack: log N points to one run through the MLflow REST API (log-batch,
1,000 per call), then read the series back exactly as the mlflow client pages it
(metrics/get-history, max_results=25000, following next_page_token), timing the
server's answer (bytes received) apart from decoding the JSON in Python. Compare with
the client-side figure of bench/mlflow_compat.py to see what the client itself costs.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx
import orjson

from bench.stack import embedded_stack

_PAGE = 25_000  # what the mlflow client asks for


def _log(client: httpx.Client, run_id: str, points: int) -> float:
    started = time.perf_counter()
    now = int(time.time() * 1000)
    for first in range(0, points, 1000):
        metrics = [
            {"key": "loss", "value": 1.0 / (step + 1), "timestamp": now + step, "step": step}
            for step in range(first, min(points, first + 1000))
        ]
        client.post(
            "/api/2.0/mlflow/runs/log-batch", json={"run_id": run_id, "metrics": metrics}
        ).raise_for_status()
    return time.perf_counter() - started


def _read(client: httpx.Client, run_id: str) -> dict[str, Any]:
    token: str | None = None
    server_s = decode_s = 0.0
    pages = received = 0
    while True:
        params: dict[str, Any] = {"run_id": run_id, "metric_key": "loss", "max_results": _PAGE}
        if token:
            params["page_token"] = token
        started = time.perf_counter()
        response = client.get("/api/2.0/mlflow/metrics/get-history", params=params)
        response.raise_for_status()
        body = response.content
        server_s += time.perf_counter() - started
        started = time.perf_counter()
        page = orjson.loads(body)
        decode_s += time.perf_counter() - started
        received += len(page.get("metrics", []))
        pages += 1
        token = page.get("next_page_token")
        if not token:
            break
    return {
        "points": received,
        "pages": pages,
        "server_s": round(server_s, 3),
        "orjson_decode_s": round(decode_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=300_000)
    args = parser.parse_args()
    with embedded_stack() as stack:
        key = json.loads(stack.settings.connection_file.read_text())["api_key"]
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120, trust_env=False) as client:
            experiment = client.post("/api/2.0/mlflow/experiments/create", json={"name": "history-bench"})
            experiment.raise_for_status()
            run = client.post(
                "/api/2.0/mlflow/runs/create", json={"experiment_id": experiment.json()["experiment_id"]}
            )
            run.raise_for_status()
            run_id = run.json()["run"]["info"]["run_id"]
            log_s = _log(client, run_id, args.points)
            reads = [_read(client, run_id) for _ in range(3)]
    print(json.dumps({"points_logged": args.points, "log_s": round(log_s, 1), "reads": reads}, indent=2))


if __name__ == "__main__":
    main()
