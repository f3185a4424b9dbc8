"""MLflow runs/search over 100k runs: latency of typical searches (`make bench-mlflow-search`).

Loads synthetic runs straight into a fresh embedded PostgreSQL (COPY into the projection
tables, after the real migration, so every index the schema declares is there), then times
services/api/mlflow/search_repository.search_run_ids (the one SQL query of runs/search,
ids only: loading the page's runs is the endpoint's separate, per-page cost).

Each run has ~10 params, ~5 tags and ~5 latest metrics; one noisy neighbour tenant holds
20% more rows. Prints a JSON summary (p50/p99 ms per search).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.postgres.migrate import migrate
from services.api.mlflow.search import parse_filter, parse_order_by
from services.api.mlflow.search_repository import search_run_ids

TENANT, NEIGHBOUR, EXPERIMENT = "bench", "neighbour", "1"
LRS = ["0.1", "0.05", "0.01", "0.005", "0.001", "0.0005", "0.0001", "0.00005", "0.00001", "0.000005"]
MODELS = ["resnet18", "resnet50", "vit-b16", "vit-l14", "bert-base"]
TEAMS = ["vision", "nlp", "speech", "infra"]
STATUSES = ["FINISHED"] * 8 + ["FAILED", "KILLED"]


def _rows(tenant: str, count: int, seed: int) -> dict[str, list[tuple[Any, ...]]]:
    """Synthetic projection rows of `count` runs (deterministic)."""
    rnd = random.Random(seed)
    rows: dict[str, list[tuple[Any, ...]]] = {"runs": [], "params": [], "tags": [], "latest_metrics": []}
    t0 = 1_700_000_000_000
    for i in range(count):
        run_id = f"{rnd.getrandbits(128):032x}"
        start = t0 + i * 1000 + rnd.randrange(1000)
        deleted = rnd.random() < 0.05
        rows["runs"].append(
            (
                tenant,
                run_id,
                EXPERIMENT,
                None,
                f"run-{i}",
                "alice",
                rnd.choice(STATUSES),
                start,
                start + 60_000,
                "deleted" if deleted else "active",
            )
        )
        params = {
            "lr": rnd.choice(LRS),
            "model": rnd.choice(MODELS),
            "batch_size": str(rnd.choice([16, 32, 64, 128])),
            "epochs": str(rnd.randrange(1, 100)),
            "seed": str(rnd.randrange(1_000_000)),
            "optimizer": rnd.choice(["adam", "sgd", "adamw"]),
            "dropout": f"{rnd.random():.2f}",
            "weight_decay": rnd.choice(["0", "0.01", "0.0001"]),
            "warmup": str(rnd.randrange(0, 1000, 100)),
            "dataset": rnd.choice(["imagenet", "cifar10", "coco", "wiki"]),
        }
        rows["params"] += [(tenant, run_id, k, v) for k, v in params.items()]
        tags = {
            "mlflow.runName": f"run-{i}",
            "mlflow.user": "alice",
            "team": rnd.choice(TEAMS),
            "mlflow.source.type": "LOCAL",
            "git_commit": f"{rnd.getrandbits(40):010x}",
        }
        rows["tags"] += [(tenant, run_id, k, v) for k, v in tags.items()]
        metrics = {
            "accuracy": rnd.random(),
            "loss": rnd.expovariate(1.0),
            "val_accuracy": rnd.random(),
            "val_loss": rnd.expovariate(1.0),
            "epoch_time": rnd.uniform(10, 100),
        }
        if rnd.random() < 0.1:  # some runs never logged accuracy: they sort last
            del metrics["accuracy"]
        rows["latest_metrics"] += [(tenant, run_id, k, v, 100, start + 50_000, 0) for k, v in metrics.items()]
    return rows


_COLUMNS = {
    "runs": [
        "tenant_id",
        "run_id",
        "experiment_id",
        "parent_run_id",
        "name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "lifecycle_stage",
    ],
    "params": ["tenant_id", "run_id", "key", "value"],
    "tags": ["tenant_id", "run_id", "key", "value"],
    "latest_metrics": ["tenant_id", "run_id", "key", "value", "step", "timestamp", "first_step"],
}

# (name, filter, order_by, max_results, pages): pages > 1 times paging on with the token.
SEARCHES: list[tuple[str, str, list[str], int, int]] = [
    ("default order, 1000 runs (MlflowClient default)", "", [], 1000, 1),
    ("default order, 100 runs, page 5", "", [], 100, 5),
    (
        "metric + param filter, order by metric, 1000",
        "metrics.accuracy > 0.9 AND params.lr = '0.001'",
        ["metrics.val_loss ASC"],
        1000,
        1,
    ),
    (
        "metric + param filter, order by metric, 100, page 3",
        "metrics.accuracy > 0.5 AND params.model = 'resnet50'",
        ["metrics.accuracy DESC"],
        100,
        3,
    ),
    (
        "metric filter only, order by metric, 100",
        "metrics.val_accuracy > 0.99",
        ["metrics.val_accuracy DESC"],
        100,
        1,
    ),
    ("order by metric, no filter, 100 (top-k of all)", "", ["metrics.accuracy DESC"], 100, 1),
    ("order by param, no filter, 100", "", ["params.seed ASC"], 100, 1),
    (
        "param LIKE + tag + status, 1000",
        "params.model LIKE 'vit%' AND tags.team = 'vision' AND status = 'FINISHED'",
        [],
        1000,
        1,
    ),
    ("tag ILIKE, order by run_name, 100", "tags.team ILIKE 'NLP'", ["attributes.run_name ASC"], 100, 1),
    ("time range, 1000", "attributes.start_time >= 1700050000000 AND created < 1700060000000", [], 1000, 1),
    (
        "selective: metric range + 2 params, 1000",
        "metrics.loss < 0.01 AND params.optimizer = 'adam' AND params.batch_size = '32'",
        [],
        1000,
        1,
    ),
    ("mlflow.search_runs(): all runs, 50000 per page", "", [], 50_000, 3),
]


async def _load(dsn: str, runs: int) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        counts: dict[str, int] = {}
        for tenant, count, seed in ((TENANT, runs, 1), (NEIGHBOUR, runs // 5, 2)):
            for table, records in _rows(tenant, count, seed).items():
                await conn.copy_records_to_table(table, records=records, columns=_COLUMNS[table])
                counts[table] = counts.get(table, 0) + len(records)
        await conn.execute("VACUUM ANALYZE")
        return counts
    finally:
        await conn.close()


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def _time_search(
    conn: asyncpg.Connection[Any],
    filter_string: str,
    order_by: list[str],
    max_results: int,
    pages: int,
    repeat: int,
) -> dict[str, Any]:
    conditions, order = parse_filter(filter_string), parse_order_by(order_by)
    # The token of the page before the one timed, so a later page is timed on its own.
    token: str | None = None
    for _ in range(pages - 1):
        _, token = await search_run_ids(
            conn, TENANT, [EXPERIMENT], conditions, order, "ACTIVE_ONLY", max_results, token
        )
    latencies: list[float] = []
    rows = 0
    for i in range(repeat + 2):  # two warm-up rounds
        started = time.perf_counter()
        ids, _ = await search_run_ids(
            conn, TENANT, [EXPERIMENT], conditions, order, "ACTIVE_ONLY", max_results, token
        )
        if i >= 2:
            latencies.append(time.perf_counter() - started)
        rows = len(ids)
    return {
        "rows": rows,
        "n": len(latencies),
        "p50_ms": _ms(latencies, 0.5),
        "p99_ms": _ms(latencies, 0.99),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


# `--latest-index`: the search index of latest_metrics to time the searches with. The schema's
# has `value` in its key (range filters and top-k by a metric read it in order), which makes
# every update of a latest value non-HOT; `keyrun` leaves `value` out, so updates can be HOT.
LATEST_INDEXES = {
    "value": "(tenant_id, key, value, run_id)",
    "keyrun": "(tenant_id, key, run_id)",
}


async def _use_latest_index(conn: asyncpg.Connection[Any], variant: str) -> None:
    await conn.execute("DROP INDEX IF EXISTS latest_metrics_by_key")
    await conn.execute(f"CREATE INDEX latest_metrics_by_key ON latest_metrics {LATEST_INDEXES[variant]}")
    await conn.execute("ANALYZE latest_metrics")


async def _time_searches(conn: asyncpg.Connection[Any], repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, filter_string, order_by, max_results, pages in SEARCHES:
        n = max(3, repeat // 10) if max_results >= 10_000 else repeat
        results[name] = {
            "filter": filter_string,
            "order_by": order_by,
            "max_results": max_results,
            "page": pages,
        } | await _time_search(conn, filter_string, order_by, max_results, pages, n)
    return results


async def _bench(dsn: str, runs: int, repeat: int, explain: bool, indexes: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    counts = await _load(dsn, runs)
    load_s = round(time.perf_counter() - started, 1)
    conn = await asyncpg.connect(dsn)
    try:
        if not indexes:
            results: dict[str, Any] = await _time_searches(conn, repeat)
        else:  # each variant twice, alternating, so a change of load hits them alike
            results = {}
            for round_ in range(2):
                for variant in indexes if round_ == 0 else indexes[::-1]:
                    await _use_latest_index(conn, variant)
                    results[f"{variant}#{round_ + 1}"] = await _time_searches(conn, repeat)
        if explain:
            await _explain(conn)
    finally:
        await conn.close()
    return {"runs": runs, "rows_loaded": counts, "load_s": load_s, "searches": results}


class _Explaining:
    """Stands in for the connection: prints the plan of each query before running it."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        for row in await self.conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args):
            print(row[0], file=sys.stderr)
        return await self.conn.fetch(query, *args)


async def _explain(conn: asyncpg.Connection[Any]) -> None:
    """Print the plans of the searches (to stderr, not the JSON)."""
    for name, filter_string, order_by, max_results, _ in SEARCHES:
        print(f"--- {name}", file=sys.stderr)
        await search_run_ids(
            _Explaining(conn),  # type: ignore[arg-type]
            TENANT,
            [EXPERIMENT],
            parse_filter(filter_string),
            parse_order_by(order_by),
            "ACTIVE_ONLY",
            max_results,
            None,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30, help="timed repetitions per search")
    parser.add_argument("--explain", action="store_true", help="print the headline query's plan to stderr")
    parser.add_argument(
        "--latest-index",
        action="append",
        choices=sorted(LATEST_INDEXES),
        default=[],
        help="time the searches with this latest_metrics search index (repeat to compare side by side)",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="runledger-bench-search-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    server = EmbeddedPostgres(root / "pg" / "data", 0, fsync=False)
    server.start()
    try:
        summary = asyncio.run(_bench(server.dsn, args.runs, args.repeat, args.explain, args.latest_index))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
