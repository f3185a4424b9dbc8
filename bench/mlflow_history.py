"""Where a long metric history read through the MLflow API spends its time (`python -m bench.mlflow_history`).

On the embedded stack: log N points to one run through the MLflow REST API (log-batch,
1,000 per call), then read the series back exactly as the mlflow client pages it
(metrics/get-history, max_results=25000, following next_page_token), timing the
server's answer (bytes received) apart from decoding the JSON in Python. Compare with
the client-side figure of bench/mlflow_compat.py to see what the client itself costs.

Then the stack is stopped and its chdb opened here, to time the page query itself
side by side (interleaved, same data, same process, so a loaded machine skews both
alike): the earlier page read (each page a DISTINCT over the whole series) against
HistoryReader.page now (a top-N of the rest of the series, deduplicated within the
page), paging the whole series each time, and checking that both answer the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx
import orjson

from bench.stack import embedded_stack
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from services.api.metrics.repository import concatenated_strings
from services.api.mlflow.history import _ORDER, _TS, _VALUE_JSON, HistoryReader, Position

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


def _previous_page(
    ch: ClickHouse, tenant: str, run_id: str, key: str, after: Position | None, limit: int
) -> tuple[bytes, Position | None]:
    """The page read as it was before (kept here as the baseline): DISTINCT
    over the run's whole series, then the keyset, ORDER BY and LIMIT."""
    params: dict[str, Any] = {
        "tenant": tenant,
        "run": run_id,
        "key": key,
        "keyjson": orjson.dumps(key).decode(),
    }
    keyset = ""
    if after is not None:
        keyset = f" WHERE ({_ORDER}) > ({{t:Int64}}, {{s:Int64}}, {{n:UInt8}}, {{v:Float64}})"
        params |= {"t": after.timestamp, "s": after.step, "n": after.nan, "v": after.value}
    params["limit"] = limit + 1
    sql = (
        "SELECT concat('{\"key\":', {keyjson:String}, ',\"value\":', " + _VALUE_JSON + ","
        " ',\"timestamp\":', toString(ts), ',\"step\":', toString(step), '},') AS row,"
        " ts, step, isNaN(value) AS nan, if(isNaN(value), 0, value) AS v FROM ("
        f" SELECT DISTINCT {_TS} AS ts, step, value FROM {ch.table('metric_points')}"
        " WHERE tenant_id = {tenant:String} AND run_id = {run:String} AND key = {key:String}"
        f"){keyset} ORDER BY {_ORDER} LIMIT {{limit:UInt64}}"
    )
    table = ch.query_arrow(sql, params)
    more = table.num_rows > limit
    table = table.slice(0, limit)
    body = concatenated_strings(table.column("row"))[:-1]
    if not more:
        return body, None
    row = table.slice(table.num_rows - 1).to_pylist()[0]
    return body, Position(row["ts"], row["step"], row["nan"], row["v"])


def _page_through(read: Any) -> dict[str, Any]:
    """Every page of the series through `read(after)`: total and slowest page, and the bytes."""
    after: Position | None = None
    pages: list[float] = []
    body = b""
    while True:
        started = time.perf_counter()
        page, after = read(after)
        pages.append(time.perf_counter() - started)
        body += page + b","
        if after is None:
            return {"total_s": sum(pages), "max_page_s": max(pages), "pages": len(pages), "body": body}


def _compare_sql(ch: ClickHouse, run_id: str, rounds: int) -> dict[str, Any]:
    tenant = ch.query_arrow(
        f"SELECT any(tenant_id) AS t FROM {ch.table('metric_points')} WHERE run_id = {{r:String}}",
        {"r": run_id},
    ).to_pylist()[0]["t"]
    reader = HistoryReader(ch, tenant)
    loop = asyncio.new_event_loop()  # one loop throughout, as in the server
    variants = {
        "previous": lambda after: _previous_page(ch, tenant, run_id, "loss", after, _PAGE),
        "current": lambda after: loop.run_until_complete(reader.page(run_id, "loss", after, _PAGE)),
    }
    out: list[dict[str, Any]] = []
    for round_ in range(rounds):
        # Alternate which goes first, so neither always meets a warmer cache.
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        got = {name: _page_through(variants[name]) for name in names}
        assert len({g["body"] for g in got.values()}) == 1, "the reads answer different points"
        out.append(
            {
                **{
                    f"{name}_{k}": round(v, 3)
                    for name in variants
                    for k, v in got[name].items()
                    if k.endswith("_s")
                },
                "pages": got["current"]["pages"],
                "speedup": round(got["previous"]["total_s"] / got["current"]["total_s"], 1),
            }
        )
    loop.close()
    return {"page_query_side_by_side": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds of the page query")
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
        # chdb allows one process per data path: stop the services, then open it here.
        stack.stop()
        ch = ChdbClickHouse(stack.settings.chdb_path)
        try:
            compared = _compare_sql(ch, run_id, args.rounds)
        finally:
            ch.close()
    result = {"points_logged": args.points, "log_s": round(log_s, 1), "reads": reads, **compared}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
