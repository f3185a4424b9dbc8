"""Quality report of the anomaly detectors: ``python -m bench.anomaly_quality [--seed S] [--series N]``.

For each series kind, N seeded series with one planted anomaly (bench/anomaly_data.py) plus N
clean series go through a fresh :class:`SeriesDetector` in batches of 100 points (as the
service feeds them); ``outlier_run`` uses N experiments (3 in 4 with a planted outlier run)
fed to a :class:`CohortDetector` interleaved, 50 points per run at a time, then finished.

Scoring (per kind):

- a finding is a true positive if its kind is the planted kind and its reported step lies in
  the window [onset - EARLY, onset + LATE] points (the usual tolerance window of change-point
  benchmarks: an onset estimate a few points early is the same incident, e.g. the best-level
  step of a plateau, whose noise hides the exact point where progress stopped); only the first
  such finding counts, every other finding (other kinds, duplicates, anything on a clean
  series) is a false positive of its own kind;
- recall = planted anomalies with a true positive / planted anomalies;
- delay = reported step - onset (the brief's definition) and latency = the step whose
  arrival produced the finding (``evidence["detected_at_step"]``) - onset, both in points
  of the series; medians over true positives;
- outlier_run is scored per run: the planted outlier run flagged = TP (delay from the label,
  the first step the outlier is 6 sibling spreads away); any other run flagged = FP.

Throughput: one 1,000,000-point noisy loss series in batches of 1,000 and of 100,000 points.
Per-call mode (``--per-call``): the fleet pattern, where nearly every ``update`` carries ONE
point. 1,000 clean series get a 100-point warm-up each, then 10 rounds of one point per series;
reports the median / p90 microseconds per single-point call, the ``to_state()`` JSON size and
the time of ``to_state()`` + ``orjson.dumps`` / ``orjson.loads`` + ``from_state``, and the
in-memory footprint per detector (tracemalloc over 10,000 detectors).
Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections import defaultdict

import numpy as np
import orjson

from bench.anomaly_data import SERIES_KINDS, Series, clean_curve, experiment, planted
from runledger.analysis.cohort import CohortDetector
from runledger.analysis.detection import KINDS, DetectorConfig, SeriesDetector

EARLY = 5  # points before the onset ...
LATE = 20  # ... and after it within which a reported step matches the planted incident
BATCH = 100


def _points(s: Series, step: int) -> int:
    return int(np.searchsorted(s.steps, step))


def run_series(s: Series, config: DetectorConfig, batch: int = BATCH) -> list:  # type: ignore[type-arg]
    """All findings of one series fed in batches."""
    d = SeriesDetector(s.key, config)
    found = []
    for lo in range(0, len(s.values), batch):
        found += d.update(s.steps[lo : lo + batch], s.values[lo : lo + batch])
    return found


def evaluate(seed: int, n: int, config: DetectorConfig) -> dict[str, dict[str, float]]:
    """Precision/recall/delays per kind over seeded series."""
    rng = np.random.default_rng(seed)
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    planted_n: dict[str, int] = defaultdict(int)
    delays: dict[str, list[int]] = defaultdict(list)
    latency: dict[str, list[int]] = defaultdict(list)
    clean_with_fp = 0
    for kind in (None, *SERIES_KINDS):
        for _ in range(n):
            s = clean_curve(rng) if kind is None else planted(rng, kind)
            found = run_series(s, config)
            hit = False
            if kind is not None:
                planted_n[kind] += 1
            if kind is None and found:
                clean_with_fp += 1
            for a in found:
                if kind is not None and a.kind == kind and not hit and s.onset_step is not None:
                    o = _points(s, s.onset_step)
                    r = _points(s, a.step)
                    if o - EARLY <= r <= o + LATE:
                        hit = True
                        tp[kind] += 1
                        delays[kind].append(r - o)
                        latency[kind].append(_points(s, int(a.evidence["detected_at_step"])) - o)
                        continue
                fp[a.kind] += 1
    for e in range(n):
        ex = experiment(rng, with_outlier=e % 4 != 0)
        d = CohortDetector(ex.key, config)
        length = len(next(iter(ex.runs.values())).values)
        found_c = []
        for lo in range(0, length, 50):
            for rid, s in ex.runs.items():
                found_c += d.update(rid, s.steps[lo : lo + 50], s.values[lo : lo + 50])
        for rid in ex.runs:
            found_c += d.finish(rid)
        if ex.outlier is not None:
            planted_n["outlier_run"] += 1
        for rid, a in found_c:
            if rid == ex.outlier and ex.onset_step is not None:
                tp["outlier_run"] += 1
                ref = ex.runs[rid]
                delays["outlier_run"].append(_points(ref, a.step) - _points(ref, ex.onset_step))
                latency["outlier_run"].append(
                    _points(ref, int(a.evidence["detected_at_step"])) - _points(ref, ex.onset_step)
                )
            else:
                fp["outlier_run"] += 1
    table: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        t, f, p = tp[kind], fp[kind], planted_n[kind]
        table[kind] = {
            "planted": p,
            "tp": t,
            "fp": f,
            "precision": t / (t + f) if t + f else float("nan"),
            "recall": t / p if p else float("nan"),
            "delay": float(np.median(delays[kind])) if delays[kind] else float("nan"),
            "latency": float(np.median(latency[kind])) if latency[kind] else float("nan"),
        }
    table["_clean"] = {"series": n, "with_fp": clean_with_fp}
    return table


def throughput(config: DetectorConfig, n: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """Points per second on a long noisy decaying loss (the common, quiet case)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    values = 0.3 + 2.0 * np.exp(-t / (n / 4)) + 0.02 * rng.standard_normal(n)
    steps = np.arange(n, dtype=np.int64)
    out: dict[str, float] = {}
    for batch in (1_000, 100_000):
        d = SeriesDetector("train/loss", config)
        t0 = time.perf_counter()
        for lo in range(0, n, batch):
            d.update(steps[lo : lo + batch], values[lo : lo + batch])
        out[f"batch_{batch}"] = n / (time.perf_counter() - t0)
    return out


def per_call(
    config: DetectorConfig, series: int = 1_000, rounds: int = 10, seed: int = 0
) -> dict[str, float]:
    """Single-point ``update`` latency and state cost on clean series in their normal regime."""
    rng = np.random.default_rng(seed)
    warm = 100
    data = [clean_curve(rng, n=warm + rounds) for _ in range(series)]
    dets = [SeriesDetector(s.key, config) for s in data]
    for d, s in zip(dets, data, strict=True):
        d.update(s.steps[:warm], s.values[:warm])
    times: list[float] = []
    clock = time.perf_counter
    for r in range(warm, warm + rounds):
        for d, s in zip(dets, data, strict=True):
            st, va = s.steps[r : r + 1], s.values[r : r + 1]
            t0 = clock()
            d.update(st, va)
            times.append(clock() - t0)
    us = np.asarray(times) * 1e6
    dumps: list[float] = []
    loads: list[float] = []
    sizes: list[int] = []
    for d, s in zip(dets, data, strict=True):
        t0 = clock()
        blob = orjson.dumps(d.to_state())
        t1 = clock()
        SeriesDetector.from_state(s.key, config, orjson.loads(blob))
        t2 = clock()
        dumps.append(t1 - t0)
        loads.append(t2 - t1)
        sizes.append(len(blob))
    # footprint: detectors built (and warmed up) while tracemalloc watches; inputs made before
    n_mem = 10_000
    keys = [data[i % series].key for i in range(n_mem)]
    warm_data = [(data[i % series].steps, data[i % series].values) for i in range(n_mem)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held = []
    for key, (st, va) in zip(keys, warm_data, strict=True):
        d = SeriesDetector(key, config)
        d.update(st[:warm], va[:warm])
        for r in range(warm, warm + rounds):
            d.update(st[r : r + 1], va[r : r + 1])
        held.append(d)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "update_1pt_median_us": float(np.median(us)),
        "update_1pt_p90_us": float(np.percentile(us, 90)),
        "update_1pt_mean_us": float(us.mean()),
        "state_json_bytes_median": float(np.median(sizes)),
        "state_json_bytes_max": float(max(sizes)),
        "to_state_dumps_median_us": float(np.median(dumps) * 1e6),
        "loads_from_state_median_us": float(np.median(loads) * 1e6),
        "memory_bytes_per_detector": used / n_mem,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--series", type=int, default=100, help="series per kind (and clean series)")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--per-call", action="store_true", help="only the single-point update / state benchmark")
    args = ap.parse_args()
    config = DetectorConfig()
    if args.per_call:
        print("| per-call (1,000 series, 1-point updates) | value |\n|---|---|")
        for k, v in per_call(config, seed=args.seed).items():
            print(f"| {k} | {v:,.1f} |")
        return
    t0 = time.perf_counter()
    table = evaluate(args.seed, args.series, config)
    took = time.perf_counter() - t0
    print(
        f"## Anomaly detector quality (seed {args.seed}, {args.series} series per kind, "
        f"match window [onset - {EARLY}, onset + {LATE}] points)\n"
    )
    print("| kind | planted | TP | FP | precision | recall | median delay (pts) | median latency (pts) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        r = table[kind]
        print(
            f"| {kind} | {int(r['planted'])} | {int(r['tp'])} | {int(r['fp'])} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['delay']:.1f} | {r['latency']:.1f} |"
        )
    c = table["_clean"]
    print(
        f"\nClean series with any finding: {int(c['with_fp'])} / {int(c['series'])}. Evaluation took {took:.1f} s."
    )
    if not args.no_throughput:
        tp = throughput(config)
        print("\n| throughput (1M-point series) | points/s |\n|---|---|")
        for k, v in tp.items():
            print(f"| {k} | {v:,.0f} |")


if __name__ == "__main__":
    main()
