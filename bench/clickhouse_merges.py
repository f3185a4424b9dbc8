"""chdb's merge CPU under the projector's insert stream, by MergeTree merge setting.

The projector writes a part per table several times a second. How often ClickHouse merges
those parts, and how much it rewrites each time, is CPU the embedded stack's other work
competes with. This writes the projector's tables in chdb as a flood does (`--rate` rounds a
second, each one insert of `--points` unique points into metric_points, feeding the rollup
view, and one of points/200 events into events_archive) for `--seconds`, then idles 20 s, and
reports every 10 s the CPU of each kind of thread (from /proc/self/task: chdb's MergeMutate
merge threads, its ThreadPool insert and query threads, Python), the active parts per table
and the mean insert time; then the time of three reads on the parts left. Each value of
`--variants` (`setting = value`, applied to the three tables)
runs in a fresh process and data directory, one after the other ("" keeps the tables'
declared settings; list a variant twice, in A B B A order, to see the drift between runs):

    python -m bench.clickhouse_merges --seconds 90 --variants "merge_selector_base = 5" \
        "merge_selector_base = 20" "merge_selector_base = 20" "merge_selector_base = 5"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from runledger.stores.clickhouse.adapter import ClickHouse, open_clickhouse
from runledger.stores.clickhouse.tables import ALL_TABLES

KEYS = 200  # metrics per event, as the noisy tenant's 200-point writes
RUNS = 16
WINDOW_S = 10.0


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, summed by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def _points(round_no: int, count: int, runs: list[str]) -> pa.Table:
    now_ms = int(time.time() * 1000)
    return pa.table(
        {
            "tenant_id": ["noisy"] * count,
            "experiment_id": ["e"] * count,
            "run_id": [runs[(round_no + i // KEYS) % len(runs)] for i in range(count)],
            "key": [f"m{i % KEYS}" for i in range(count)],
            "step": pa.array([round_no] * count, pa.int64()),
            "timestamp": pa.array([now_ms] * count, pa.timestamp("ms", tz="UTC")),
            "value": pa.array([float(round_no + i) for i in range(count)]),
            "retention_days": pa.array([365] * count, pa.uint16()),
        }
    )


def _events(round_no: int, count: int, runs: list[str]) -> pa.Table:
    now_ms = int(time.time() * 1000)
    return pa.table(
        {
            "tenant_id": ["noisy"] * count,
            "event_id": [str(uuid.uuid4()) for _ in range(count)],
            "type": ["run.metrics_logged"] * count,
            "schema_version": pa.array([1] * count, pa.uint16()),
            "occurred_at": pa.array([now_ms] * count, pa.timestamp("ms", tz="UTC")),
            "experiment_id": ["e"] * count,
            "run_id": [runs[round_no % len(runs)]] * count,
            "ingested_at": pa.array([now_ms] * count, pa.timestamp("ms", tz="UTC")),
            "source": ["sdk"] * count,
            "offset": pa.array(list(range(count)), pa.uint64()),
            "body": [os.urandom(3000).hex() for _ in range(count)],  # ~6 kB, as a 200-point event
        }
    )


def _parts(store: ClickHouse) -> dict[str, int]:
    rows = store.query_arrow(
        "SELECT table, count() AS n FROM system.parts WHERE database = {db:String} AND active GROUP BY table",
        {"db": store.database},
    ).to_pylist()
    return {str(r["table"]): int(r["n"]) for r in rows}


def _read_ms(store: ClickHouse, sql: str, repeats: int = 200) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.query_arrow(sql)
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "p50": round(statistics.median(times) * 1000, 2),
        "p95": round(times[int(0.95 * repeats)] * 1000, 2),
    }


def _variant(setting: str, rate: float, points: int, seconds: float) -> dict[str, Any]:
    """One variant in this (fresh) process: the windows of the load and the reads after."""
    store = open_clickhouse("", Path(tempfile.mkdtemp(prefix="merges-")) / "chdb")
    if setting:
        for table in ALL_TABLES:
            store.command(f"ALTER TABLE {store.table(table.name)} MODIFY SETTING {setting}")
    runs = [uuid.uuid4().hex for _ in range(RUNS)]
    windows: list[dict[str, Any]] = []
    round_no = 0
    load_until = time.monotonic() + seconds
    idle_until = load_until + 20.0
    while time.monotonic() < idle_until:
        before, began, inserted, spent = _thread_cpu(), time.monotonic(), 0, 0.0
        while time.monotonic() < min(began + WINDOW_S, idle_until):
            if time.monotonic() >= load_until:
                time.sleep(0.5)
                continue
            batch, events = _points(round_no, points, runs), _events(round_no, points // KEYS, runs)
            started = time.perf_counter()
            store.insert_arrow("metric_points", batch, f"r{round_no}.p")
            store.insert_arrow("events_archive", events, f"r{round_no}.a")
            spent += time.perf_counter() - started
            round_no, inserted = round_no + 1, inserted + 1
            time.sleep(max(0.0, began + inserted / rate - time.monotonic()))
        after, elapsed = _thread_cpu(), time.monotonic() - began
        cores = {name: round((after[name] - before.get(name, 0.0)) / elapsed, 2) for name in after}
        windows.append(
            {
                "t_s": round(began - (load_until - seconds), 1),
                "rounds": inserted,
                "insert_ms": round(spent / inserted * 1000, 1) if inserted else None,
                "cores": {name: c for name, c in cores.items() if c >= 0.01},
                "parts": _parts(store),
            }
        )
    points_table, rollup = store.table("metric_points"), store.table("metric_rollup")
    series = f"tenant_id = 'noisy' AND run_id = '{runs[3]}'"
    reads = {
        "series_history": _read_ms(
            store, f"SELECT step, value FROM {points_table} WHERE {series} AND key = 'm7' ORDER BY step"
        ),
        "run_latest_per_key": _read_ms(
            store, f"SELECT key, argMax(value, step) FROM {points_table} WHERE {series} GROUP BY key"
        ),
        "series_rollup": _read_ms(
            store,
            f"SELECT bucket, min(min_value), max(max_value) FROM {rollup} WHERE {series} AND key = 'm7' GROUP BY bucket",
        ),
    }
    store.close()
    loaded = [w for w in windows if w["rounds"]]
    merge_cores = [w["cores"].get("MergeMutate", 0.0) for w in loaded]
    return {
        "setting": setting or "(as declared)",
        "points_written": round_no * points,
        "mean_merge_cores_under_load": round(statistics.fmean(merge_cores), 2) if merge_cores else None,
        "mean_chdb_cores_under_load": round(
            statistics.fmean(
                w["cores"].get("MergeMutate", 0.0) + w["cores"].get("ThreadPool", 0.0) for w in loaded
            ),
            2,
        )
        if loaded
        else None,
        "mean_insert_ms": round(statistics.fmean(w["insert_ms"] for w in loaded), 1) if loaded else None,
        "reads_ms": reads,
        "windows": windows,
    }


def _child(setting: str, rate: float, points: int, seconds: float, results: Any) -> None:
    results.put(_variant(setting, rate, points, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="rounds (one insert per table) a second")
    parser.add_argument("--points", type=int, default=800, help="points per round")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the load per variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["merge_selector_base = 5", "merge_selector_base = 20"],
        help="MergeTree settings to compare ('' = the tables as declared); 5 is ClickHouse's default base",
    )
    args = parser.parse_args()
    ctx = mp.get_context("spawn")  # one chdb engine per process: a fresh one per variant
    out = []
    for setting in args.variants:
        results = ctx.Queue()
        child = ctx.Process(target=_child, args=(setting, args.rate, args.points, args.seconds, results))
        child.start()
        out.append(results.get(timeout=args.seconds + 600))
        child.join(60)
    print(json.dumps({"rate": args.rate, "points_per_round": args.points, "variants": out}, indent=2))


if __name__ == "__main__":
    main()
