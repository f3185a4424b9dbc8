"""Points per second the analysis service's detectors sustain, for two shapes of traffic.

`python -m bench.analysis_throughput [--runs 1000] [--keys 100] [--steps 30]`

- fleet: R runs x K metrics, each run logging one step of every metric per event, as the
  fleet benchmark does (`rl.log_metrics(row, step=)`): every polled batch touches R x K
  series with one point each (the per-series cost dominates);
- bulk: a few series with 1,000-point events (the per-point cost dominates).

It drives services/analysis/detectors.DetectorBank in-process (the whole detection path:
grouping, series and cohort detectors, dirty tracking, checkpoint states), without
Kafka or Postgres, so it measures detection alone. One CPU, this process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from services.analysis.detectors import BatchInput, DetectorBank
from services.analysis.store import StateKey


async def _nothing_stored(keys: Iterable[StateKey]) -> dict[StateKey, dict[str, Any]]:
    return {}


async def _no_keys(runs: list[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    return {}


def _curves(n: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.arange(steps)
    scale = rng.uniform(0.5, 3.0, (n, 1))
    return scale * np.exp(-x / rng.uniform(20, 200, (n, 1))) + 0.1 + rng.normal(0, 0.01, (n, steps))


async def fleet(runs: int, keys: int, steps: int, runs_per_batch: int) -> dict[str, float]:
    """R runs x K keys, one step per event; batches of `runs_per_batch` events."""
    bank = DetectorBank(_nothing_stored, _no_keys, max_cached=10_000_000)
    names = [f"metric_{k}/loss" for k in range(keys)]
    values = _curves(runs * keys, steps, 0).reshape(runs, keys, steps)
    key_index = np.arange(keys, dtype=np.int32)
    points = 0
    started = time.perf_counter()
    checkpoint_s = 0.0
    for step in range(steps):
        for first in range(0, runs, runs_per_batch):
            batch = BatchInput()
            for r in range(first, min(runs, first + runs_per_batch)):
                batch.add_metrics(
                    "t",
                    f"exp{r % 10}",
                    f"run{r}",
                    names,
                    key_index,
                    np.full(keys, step, dtype=np.int64),
                    values[r, :, step],
                )
                points += keys
            await bank.analyse(batch)
        mark = time.perf_counter()
        for row in bank.take_dirty():  # what a checkpoint serialises
            orjson.dumps(row.state, option=orjson.OPT_SERIALIZE_NUMPY)
        checkpoint_s += time.perf_counter() - mark
    elapsed = time.perf_counter() - started
    return {
        "points": points,
        "seconds": elapsed,
        "points_per_s": points / elapsed,
        "checkpoint_s": checkpoint_s,
    }


async def bulk(series: int, points_per_event: int, events: int) -> dict[str, float]:
    """A few long series, 1,000-point events."""
    bank = DetectorBank(_nothing_stored, _no_keys, max_cached=1_000_000)
    values = _curves(series, points_per_event * events, 1)
    points = 0
    started = time.perf_counter()
    for e in range(events):
        batch = BatchInput()
        lo, hi = e * points_per_event, (e + 1) * points_per_event
        for s in range(series):
            batch.add_metrics(
                "t",
                "exp",
                f"run{s}",
                ["val/loss"],
                np.zeros(points_per_event, dtype=np.int32),
                np.arange(lo, hi, dtype=np.int64),
                values[s, lo:hi],
            )
            points += points_per_event
        await bank.analyse(batch)
    elapsed = time.perf_counter() - started
    return {"points": points, "seconds": elapsed, "points_per_s": points / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs-per-batch", type=int, default=50)
    args = parser.parse_args()
    f = asyncio.run(fleet(args.runs, args.keys, args.steps, args.runs_per_batch))
    b = asyncio.run(bulk(10, 1000, 100))
    print("| traffic | points | seconds | points/s | µs/point |")
    print("|---|---|---|---|---|")
    for name, r in (("fleet (1 point per series per event)", f), ("bulk (1,000-point events)", b)):
        print(
            f"| {name} | {r['points']:,.0f} | {r['seconds']:.2f} | {r['points_per_s']:,.0f} |"
            f" {1e6 / r['points_per_s']:.1f} |"
        )
    print(f"\nfleet: checkpoint serialisation {f['checkpoint_s']:.2f} s of the total")


if __name__ == "__main__":
    main()
