"""What an analysis checkpoint costs Postgres: detector states as jsonb, or as bytea in half-full pages.

    .venv/bin/python -m bench.analysis_checkpoint                    # 1,000 runs x 100 metrics, 40 steps
    .venv/bin/python -m bench.analysis_checkpoint --runs 300 --rounds 5

Real states: a DetectorBank (services/analysis/detectors.py) analyses R runs x K metrics for
a few steps, then every series is dirty, as at fleet scale when each series logs within the
30 s checkpoint interval. Each round upserts all of them into two tables of one embedded
Postgres (fsync on, as `runledger up` runs it), one per layout, with the statement
services/analysis/store.py uses; the first round inserts, the later ones update, and the
order of the two layouts alternates. Reported per layout: wall time, the backend's CPU
seconds (psutil on its pid), this process's CPU for encoding, the table's size at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np
import psutil

from bench.analysis_throughput import _curves, _no_keys, _nothing_stored
from runledger.embedded.postgres import EmbeddedPostgres
from services.analysis.detectors import BatchInput, DetectorBank

# layout -> (state column type, table options, how one state is sent)
LAYOUTS = {
    "jsonb (before)": ("jsonb", "", "text"),
    "bytea, fillfactor 50 (now)": ("bytea", " WITH (fillfactor = 50)", "bytea"),
}


async def _states(runs: int, keys: int, steps: int) -> list[tuple[str, str, bytes]]:
    """(run, key, JSON state) of every series after `steps` steps of fleet-shaped traffic."""
    bank = DetectorBank(_nothing_stored, _no_keys, max_cached=10_000_000)
    names = [f"val/loss{k}" if k % 2 else f"train/acc{k}" for k in range(keys)]
    key_index = np.arange(keys, dtype=np.int32)
    values = _curves(runs * keys, steps, 0).reshape(runs, keys, steps)
    for step in range(steps):
        batch = BatchInput()
        for r in range(runs):
            steps_of = np.full(keys, step, dtype=np.int64)
            batch.add_metrics("t", f"exp{r % 10}", f"run{r}", names, key_index, steps_of, values[r, :, step])
        await bank.analyse(batch)
    return [
        (row.key.scope_id + "/" + row.member, row.key.key, row.state)
        for row in bank.take_dirty()
        if row.state is not None
    ]


async def _round(
    conn: asyncpg.Connection, table: str, kind: str, states: list[tuple[str, str, bytes]]
) -> float:
    """One checkpoint's upsert of every state; returns this process's CPU seconds for it."""
    started = time.process_time()
    payload = [s.decode() for _, _, s in states] if kind == "text" else [s for _, _, s in states]
    cast = "s::jsonb" if kind == "text" else "s"
    async with conn.transaction():
        await conn.execute(
            f"INSERT INTO {table} (tenant_id, scope, scope_id, key, member, state, updated_at)"
            f" SELECT t, sc, id, k, m, {cast}, now()"
            f" FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::{kind}[])"
            " AS w(t, sc, id, k, m, s)"
            " ON CONFLICT (tenant_id, scope, scope_id, key, member)"
            " DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            ["t"] * len(states),
            ["series"] * len(states),
            [run for run, _, _ in states],
            [key for _, key, _ in states],
            [""] * len(states),
            payload,
        )
    return time.process_time() - started


async def run(runs: int, keys: int, steps: int, rounds: int) -> dict[str, object]:
    states = await _states(runs, keys, steps)
    root = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    pg = EmbeddedPostgres(root / "pg", 0)
    pg.start()
    try:
        conn = await asyncpg.connect(pg.dsn)
        tables = {}
        for i, (layout, (column, options, _)) in enumerate(LAYOUTS.items()):
            tables[layout] = f"states_{i}"
            await conn.execute(
                f"CREATE TABLE states_{i} (tenant_id text, scope text, scope_id text, key text, member text,"
                f" state {column} NOT NULL, updated_at timestamptz,"
                f" PRIMARY KEY (tenant_id, scope, scope_id, key, member)){options}"
            )
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        measured: dict[str, list[tuple[float, float, float]]] = {layout: [] for layout in LAYOUTS}
        for n in range(rounds):
            order = list(LAYOUTS) if n % 2 == 0 else list(reversed(LAYOUTS))
            for layout in order:
                cpu_before = sum(backend.cpu_times()[:2])
                wall_before = time.perf_counter()
                client_cpu = await _round(conn, tables[layout], LAYOUTS[layout][2], states)
                wall = time.perf_counter() - wall_before
                measured[layout].append((wall, sum(backend.cpu_times()[:2]) - cpu_before, client_cpu))
        out: dict[str, object] = {
            "states": len(states),
            "mean_state_bytes": round(statistics.mean(len(s) for _, _, s in states)),
            "rounds": rounds,
        }
        for layout, table in tables.items():
            updates = measured[layout][1:]  # the first round inserts
            out[layout] = {
                "update_wall_s_median": round(statistics.median(w for w, _, _ in updates), 2),
                "update_backend_cpu_s_median": round(statistics.median(c for _, c, _ in updates), 2),
                "update_client_cpu_s_median": round(statistics.median(p for _, _, p in updates), 2),
                "insert_wall_s": round(measured[layout][0][0], 2),
                "table_mb": round(
                    await conn.fetchval(f"SELECT pg_total_relation_size('{table}')") / 2**20, 1
                ),
                "hot_updates": await conn.fetchval(
                    f"SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = '{table}'"
                ),
            }
        await conn.close()
        return out
    finally:
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.runs, args.keys, args.steps, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
