"""Pool release cost: asyncpg's default reset (one more round trip per release) against the
pool every service opens (`runledger.stores.postgres.pool.open_pool`, no reset query).

`python -m bench.pg_pool [--cycles N] [--rounds R]` starts an embedded PostgreSQL and times
acquire -> one indexed SELECT -> release, both pools in alternating rounds (a loaded machine
slows them alike). Prints per-cycle microseconds (median of the rounds) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.postgres.pool import open_pool


async def _cycles(pool: asyncpg.Pool[Any], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        async with pool.acquire() as conn:
            await conn.fetchrow("SELECT id, v FROM probe WHERE id = $1", i % 1000)
    return (time.perf_counter() - started) / n * 1e6


async def _bench(dsn: str, cycles: int, rounds: int) -> dict[str, Any]:
    default = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    ours = await open_pool(dsn, min_size=1, max_size=1)
    assert default is not None
    try:
        async with default.acquire() as conn:
            await conn.execute("CREATE TABLE probe (id int PRIMARY KEY, v text)")
            await conn.execute("INSERT INTO probe SELECT g, md5(g::text) FROM generate_series(0, 999) g")
        pools = {"asyncpg default reset": default, "open_pool (no reset query)": ours}
        times: dict[str, list[float]] = {name: [] for name in pools}
        for r in range(rounds):
            for name in list(pools) if r % 2 == 0 else list(pools)[::-1]:
                times[name].append(await _cycles(pools[name], cycles))
    finally:
        await default.close()
        await ours.close()
    medians = {name: round(statistics.median(ts), 1) for name, ts in times.items()}
    before, after = medians.values()
    return {
        "cycles_per_round": cycles,
        "rounds": rounds,
        "us_per_cycle": medians,
        "ratio": round(before / after, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="runledger-bench-pool-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    server = EmbeddedPostgres(root / "pg" / "data", 0, fsync=False)
    server.start()
    try:
        print(json.dumps(asyncio.run(_bench(server.dsn, args.cycles, args.rounds)), indent=2))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
