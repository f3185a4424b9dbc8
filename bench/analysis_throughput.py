"""Points per second the analysis service's detectors sustain, for two shapes of traffic.

`python -m bench.analysis_throughput [--runs 1000] [--keys 100] [--steps 30]`
`python -m bench.analysis_throughput --runs 500 --gc-compare 2`

--gc-compare N runs the fleet traffic N times under each garbage-collector setting, alternating:
CPython's default thresholds and the analysis service's (runledger.heap
relax_gc_for_detector_state), after the start-up heap is frozen as the service does, and
reports the collections per generation and their CPU time (a gc.callbacks probe).

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
import gc
import statistics
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from runledger.heap import ANALYSIS_GC_THRESHOLDS
from services.analysis.detectors import BatchInput, DetectorBank
from services.analysis.store import StateKey

_DEFAULT_GC_THRESHOLDS = (700, 10, 10)  # CPython's


class GcPauses:
    """CPU seconds of every collection, per generation, while installed (thread CPU time)."""

    def __init__(self) -> None:
        self.seconds: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds[info["generation"]].append(time.thread_time() - self._started)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for generation, pauses in self.seconds.items():
            out[f"gen{generation}_collections"] = len(pauses)
            out[f"gen{generation}_cpu_s"] = round(sum(pauses), 2)
            out[f"gen{generation}_max_ms"] = round(1000 * max(pauses, default=0.0), 1)
        return out


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
        bank.take_dirty()  # what a checkpoint serialises
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


def gc_compare(runs: int, keys: int, steps: int, runs_per_batch: int, repeats: int) -> None:
    """The fleet traffic under both collector settings, alternating, in this process."""
    gc.collect()
    gc.freeze()  # as the service does after start-up
    settings = {"default": _DEFAULT_GC_THRESHOLDS, "analysis service": ANALYSIS_GC_THRESHOLDS}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for n in range(repeats):
        for name in list(settings) if n % 2 == 0 else list(reversed(settings)):
            gc.collect()
            gc.set_threshold(*settings[name])
            probe = GcPauses()
            gc.callbacks.append(probe)
            cpu = time.process_time()
            try:
                r = asyncio.run(fleet(runs, keys, steps, runs_per_batch))
            finally:
                gc.callbacks.remove(probe)
                gc.set_threshold(*_DEFAULT_GC_THRESHOLDS)
            results[name].append({"cpu_s": round(time.process_time() - cpu, 1), **probe.summary()})
            print(name, {"points": r["points"], **results[name][-1]}, flush=True)
    print(
        "| collector | gen0 / gen1 / gen2 collections | CPU in collections (s) | longest collection (ms) | process CPU (s) |"
    )
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        counts = " / ".join(f"{med[f'gen{g}_collections']:.0f}" for g in range(3))
        collected = sum(med[f"gen{g}_cpu_s"] for g in range(3))
        print(
            f"| {name} {settings[name]} | {counts} | {collected:.2f} | {max(med[f'gen{g}_max_ms'] for g in range(3)):.0f} | {med['cpu_s']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs-per-batch", type=int, default=50)
    parser.add_argument("--gc-compare", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.gc_compare:
        gc_compare(args.runs, args.keys, args.steps, args.runs_per_batch, args.gc_compare)
        return
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
