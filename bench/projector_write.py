"""The projector's Postgres write on fleet-shaped batches, variants side by side.

`python -m bench.projector_write` starts an embedded PostgreSQL (fsync on, as `runledger up`
and bench/fleet.py run it), gives every variant its own migrated database, and writes the
same sequence of batches to each, round-robin, so a loaded machine slows them alike.

A batch is what the projector writes in bench/fleet.py: `--runs-per-batch` runs x `--keys`
metrics, one step each (15,000 distinct series), plus the batch's bookkeeping (applied event
ids, tenant usage, checkpoint). The runs rotate through `--runs` (1,000), each run's step
advancing by one per visit, so after a first pass every row is an update, as in a fleet.

Per variant and batch it times (ms, median and p90 over the measured batches):
- `encode`: client CPU of building the upsert's arguments (.tolist() etc.) and of asyncpg
  encoding and sending them (thread CPU time, so it excludes waiting for the server);
- `upsert`: wall time of the latest_metrics write (including `encode`);
- `rest`: ensure_tenants, already_applied, applied_events, usage, checkpoint (+ NOTIFY);
- `commit`: COMMIT (a WAL flush with fsync on);
- `txn`: the whole transaction.
Then EXPLAIN (ANALYZE, BUFFERS, WAL) of one more batch's upsert (rolled back), and
pg_stat_user_tables' n_tup_upd / n_tup_hot_upd of latest_metrics and its size.

`--writer` instead drives the whole `BatchWriter.write` (real chdb, events encoded and decoded
as the projector gets them) and compares `sequential` (the ClickHouse inserts, then the
Postgres transaction: the order before this benchmark, emulated by inserting first and handing
the writer a ClickHouse that does nothing) with `overlapped` (the writer as it is: the inserts
run in a thread while Postgres applies the batch). It reports ms per batch: `clickhouse` (the
inserts alone), `write` (all of it), and `batch` (what the writer is busy for).

Variants (`--variants`, comma separated): see VARIANTS below; a `:ffNN` suffix sets the
table's fillfactor, `:nokey` drops the (tenant_id, key, value, run_id) search index,
`:keyrun` replaces it by (tenant_id, key, run_id) (no value, so updates can be HOT), `:vacN` runs
VACUUM latest_metrics after every N batches (its time is reported as `vacuum`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.postgres.migrate import migrate
from runledger.stores.postgres.usage import add_usage
from services.ingest import checkpoints
from services.ingest.checkpoints import Member, PartitionKey
from services.ingest.latest_writer import UPSERT_SQL, stage_latest, upsert_latest
from services.ingest.metadata_writer import already_applied, ensure_tenants, record_applied
from services.ingest.projection import LatestMetrics

TENANT = "fleet"

# The upsert as it was before this benchmark (kept here as the baseline).
_BASELINE_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int8[], $6::int8[],"
    " $7::int8[])"
    " ON CONFLICT (tenant_id, run_id, key) DO UPDATE SET"
    " first_step = LEAST(latest_metrics.first_step, excluded.first_step),"
    " value = CASE WHEN (excluded.step, excluded.timestamp, excluded.value)"
    "  > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
    "  THEN excluded.value ELSE latest_metrics.value END,"
    " timestamp = CASE WHEN (excluded.step, excluded.timestamp, excluded.value)"
    "  > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
    "  THEN excluded.timestamp ELSE latest_metrics.timestamp END,"
    " step = GREATEST(latest_metrics.step, excluded.step)"
)

_NEWER = (
    "(excluded.step, excluded.timestamp, excluded.value)"
    " > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)
_SET_WHERE = (
    " ON CONFLICT (tenant_id, run_id, key) DO UPDATE SET"
    " first_step = LEAST(latest_metrics.first_step, excluded.first_step),"
    f" value = CASE WHEN {_NEWER} THEN excluded.value ELSE latest_metrics.value END,"
    f" timestamp = CASE WHEN {_NEWER} THEN excluded.timestamp ELSE latest_metrics.timestamp END,"
    " step = GREATEST(latest_metrics.step, excluded.step)"
    f" WHERE {_NEWER} OR excluded.first_step < latest_metrics.first_step"
)
_WHERE_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int8[], $6::int8[],"
    " $7::int8[])" + _SET_WHERE
)
# Strings as dictionaries + int32 indexes: a batch repeats ~150 run ids and ~100 keys 15k times.
_DICT_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    " SELECT ($1::text[])[t], ($2::text[])[r], ($3::text[])[k], v, s, ts, f FROM unnest($4::int4[], $5::int4[],"
    " $6::int4[], $7::float8[], $8::int8[], $9::int8[], $10::int8[]) AS u(t, r, k, v, s, ts, f)" + _SET_WHERE
)
_STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS latest_stage (tenant_id text, run_id text, key text, value float8,"
    " step int8, timestamp int8, first_step int8) ON COMMIT DELETE ROWS"
)
_STAGE_COLUMNS = ["tenant_id", "run_id", "key", "value", "step", "timestamp", "first_step"]
_FROM_STAGE_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    " SELECT * FROM latest_stage" + _SET_WHERE
)
# The same, rows in the search index's order (tenant, key, value) instead of the primary key's.
_FROM_STAGE_SORTED_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    " SELECT * FROM latest_stage ORDER BY tenant_id, key, value" + _SET_WHERE
)
# Existing series by a plain UPDATE ... FROM (no ON CONFLICT: no speculative insertion, no row
# lock WAL record before each update), then the batch's new series by the guarded upsert.
_UPDATE_SQL = (
    "UPDATE latest_metrics m SET first_step = LEAST(m.first_step, s.first_step),"
    " value = CASE WHEN (s.step, s.timestamp, s.value) > (m.step, m.timestamp, m.value) THEN s.value ELSE m.value END,"
    " timestamp = CASE WHEN (s.step, s.timestamp, s.value) > (m.step, m.timestamp, m.value)"
    "  THEN s.timestamp ELSE m.timestamp END,"
    " step = GREATEST(m.step, s.step)"
    " FROM latest_stage s WHERE m.tenant_id = s.tenant_id AND m.run_id = s.run_id AND m.key = s.key"
    " AND ((s.step, s.timestamp, s.value) > (m.step, m.timestamp, m.value) OR s.first_step < m.first_step)"
)
_INSERT_NEW_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    " SELECT * FROM latest_stage s WHERE NOT EXISTS (SELECT 1 FROM latest_metrics m"
    " WHERE m.tenant_id = s.tenant_id AND m.run_id = s.run_id AND m.key = s.key)" + _SET_WHERE
)
_MERGE_SQL = (
    "MERGE INTO latest_metrics m USING latest_stage s"
    " ON m.tenant_id = s.tenant_id AND m.run_id = s.run_id AND m.key = s.key"
    " WHEN MATCHED AND (s.step, s.timestamp, s.value) > (m.step, m.timestamp, m.value) THEN UPDATE SET"
    " value = s.value, step = s.step, timestamp = s.timestamp, first_step = LEAST(m.first_step, s.first_step)"
    " WHEN MATCHED AND s.first_step < m.first_step THEN UPDATE SET first_step = s.first_step"
    " WHEN NOT MATCHED THEN INSERT VALUES (s.tenant_id, s.run_id, s.key, s.value, s.step, s.timestamp,"
    " s.first_step)"
)


def _lists(latest: LatestMetrics) -> tuple[Any, ...]:
    return (
        latest.tenant_ids,
        latest.run_ids,
        latest.keys,
        latest.values.tolist(),
        latest.steps.tolist(),
        latest.timestamps.tolist(),
        latest.first_steps.tolist(),
    )


async def _unnest(conn: Any, latest: LatestMetrics, sql: str, explain: str = "") -> Any:
    return (
        await conn.fetch(explain + sql, *_lists(latest))
        if explain
        else await conn.execute(sql, *_lists(latest))
    )


async def baseline(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """The upsert as the projector ran it (unnest of 7 arrays, every conflict rewritten)."""
    return await _unnest(conn, latest, _BASELINE_SQL, explain)


async def where(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """The same with a WHERE on DO UPDATE: rows the batch does not advance are not rewritten."""
    return await _unnest(conn, latest, _WHERE_SQL, explain)


def _codes(values: list[str]) -> tuple[list[str], list[int]]:
    index: dict[str, int] = {}
    codes = [index.setdefault(v, len(index) + 1) for v in values]  # Postgres arrays are 1-based
    return list(index), codes


async def dictionary(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """Strings sent once each (dictionary + int4 codes), the rest as `where`."""
    tenants, t = _codes(latest.tenant_ids)
    runs, r = _codes(latest.run_ids)
    keys, k = _codes(latest.keys)
    args = (tenants, runs, keys, t, r, k, *_lists(latest)[3:])
    return await conn.fetch(explain + _DICT_SQL, *args) if explain else await conn.execute(_DICT_SQL, *args)


async def _stage(conn: Any, latest: LatestMetrics) -> None:
    await conn.execute(_STAGE_DDL)
    records = zip(*_lists(latest), strict=True)
    await conn.copy_records_to_table("latest_stage", records=records, columns=_STAGE_COLUMNS)


async def copy(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """Binary COPY into a temporary staging table, then one INSERT ... SELECT ... ON CONFLICT."""
    await _stage(conn, latest)
    return await conn.fetch(explain + _FROM_STAGE_SQL) if explain else await conn.execute(_FROM_STAGE_SQL)


async def sorted_copy(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """`copy`, inserting in the search index's order."""
    await _stage(conn, latest)
    sql = _FROM_STAGE_SORTED_SQL
    return await conn.fetch(explain + sql) if explain else await conn.execute(sql)


async def update(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """Binary COPY into the staging table, UPDATE ... FROM for existing series, upsert for new ones."""
    await _stage(conn, latest)
    if explain:
        return await conn.fetch(explain + _UPDATE_SQL)
    await conn.execute(_UPDATE_SQL)
    return await conn.execute(_INSERT_NEW_SQL)


async def merge(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """Binary COPY into the staging table, then MERGE (Postgres >= 15)."""
    await _stage(conn, latest)
    return await conn.fetch(explain + _MERGE_SQL) if explain else await conn.execute(_MERGE_SQL)


Upsert = Callable[[Any, LatestMetrics, str], Awaitable[Any]]
VARIANTS: dict[str, Upsert] = {
    "baseline": baseline,
    "where": where,
    "dictionary": dictionary,
    "copy": copy,
    "merge": merge,
    "sorted": sorted_copy,
    "update": update,
}


async def current(conn: Any, latest: LatestMetrics, explain: str = "") -> Any:
    """The projector's own upsert as it is now (services/ingest/latest_writer.py)."""
    if not explain:
        return await upsert_latest(conn, latest)
    await stage_latest(conn, latest)
    return await conn.fetch(explain + UPSERT_SQL)


VARIANTS["current"] = current


@dataclass
class Variant:
    """One variant: its upsert, table options, database, and timings per stage."""

    spec: str
    upsert: Upsert
    fillfactor: int | None = None
    index: str = "key"  # key: as the schema; nokey: none; keyrun: (tenant_id, key, run_id)
    vacuum_every: int = 0  # batches between explicit VACUUMs of latest_metrics (0: autovacuum only)
    dsn: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, *options = spec.split(":")
        variant = cls(spec, VARIANTS[name])
        for option in options:
            if option.startswith("ff"):
                variant.fillfactor = int(option[2:])
            elif option in ("nokey", "keyrun"):
                variant.index = option
            elif option.startswith("vac"):
                variant.vacuum_every = int(option[3:])
            else:
                raise SystemExit(f"unknown option {option!r} in {spec!r}")
        return variant

    def add(self, stage: str, seconds: float) -> None:
        self.times.setdefault(stage, []).append(seconds * 1000)


class Fleet:
    """Fleet-shaped batches: runs rotate, each visit is the run's next step of every key."""

    def __init__(self, runs: int, keys: int, runs_per_batch: int) -> None:
        self.run_ids = [uuid.uuid4().hex for _ in range(runs)]
        self.keys = sorted(f"train/metric_{k:03d}" for k in range(keys))
        self.runs_per_batch = runs_per_batch
        self.steps = np.zeros(runs, dtype=np.int64)
        self.cursor = 0
        self.rng = np.random.default_rng(7)

    def next_batch(self) -> tuple[LatestMetrics, list[str]]:
        """The batch's latest rows (as build_projection makes them) and its event ids."""
        picked = [(self.cursor + i) % len(self.run_ids) for i in range(self.runs_per_batch)]
        self.cursor = (self.cursor + self.runs_per_batch) % len(self.run_ids)
        # In (tenant, run, key) order, as build_projection emits them.
        picked.sort(key=lambda i: self.run_ids[i])
        n_keys = len(self.keys)
        steps = np.repeat(self.steps[picked], n_keys)
        self.steps[picked] += 1
        n = len(picked) * n_keys
        latest = LatestMetrics(
            tenant_ids=[TENANT] * n,
            run_ids=[self.run_ids[i] for i in picked for _ in range(n_keys)],
            keys=self.keys * len(picked),
            values=self.rng.random(n),
            steps=steps,
            timestamps=1_700_000_000_000 + steps * 4000,
            first_steps=steps.copy(),
        )
        return latest, [str(uuid.uuid4()) for _ in picked]  # one metrics event per run and step


async def _prepare_database(server: EmbeddedPostgres, variant: Variant) -> None:
    name = "v_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    variant.dsn = server.dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(variant.dsn)
    try:
        await migrate(conn)
        if variant.fillfactor is not None:
            await conn.execute(f"ALTER TABLE latest_metrics SET (fillfactor = {variant.fillfactor})")
        if variant.index != "key":
            await conn.execute("DROP INDEX latest_metrics_by_key")
        if variant.index == "keyrun":
            await conn.execute(
                "CREATE INDEX latest_metrics_by_key_run ON latest_metrics (tenant_id, key, run_id)"
            )
    finally:
        await conn.close()


async def _write(
    conn: Any, variant: Variant, latest: LatestMetrics, ids: list[str], key: PartitionKey
) -> None:
    """One batch's transaction as BatchWriter.write runs it (metric events only)."""
    started = time.perf_counter()
    await already_applied(conn, ids)
    await checkpoints.mark_pending(conn, key, [Member(key.partition, 1, 1)], "bench")
    pre = time.perf_counter()
    tr = conn.transaction()
    await tr.start()
    t0 = time.perf_counter()
    await ensure_tenants(conn, {TENANT})
    t1, cpu = time.perf_counter(), time.thread_time()
    await variant.upsert(conn, latest, "")
    t2, cpu = time.perf_counter(), time.thread_time() - cpu
    await record_applied(conn, ids)
    await add_usage(conn, {TENANT: len(latest.keys)})
    row = await conn.fetchrow(
        "SELECT committed FROM projector_checkpoints WHERE consumer_group = $1", key.group
    )
    committed = row["committed"]
    await checkpoints.advance(conn, key, [Member(key.partition, committed + 1, committed + 1)])
    t3 = time.perf_counter()
    await tr.commit()
    t4 = time.perf_counter()
    variant.add("upsert", t2 - t1)
    variant.add("encode", cpu)
    variant.add("rest", (t1 - t0) + (t3 - t2) + (pre - started))
    variant.add("commit", t4 - t3)
    variant.add("txn", t4 - started)


async def _explain(conn: Any, variant: Variant, latest: LatestMetrics) -> list[str]:
    tr = conn.transaction()
    await tr.start()
    try:
        rows = await variant.upsert(conn, latest, "EXPLAIN (ANALYZE, BUFFERS, WAL) ")
    finally:
        await tr.rollback()
    return [r[0] for r in rows]


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
    }


async def _bench(server: EmbeddedPostgres, args: argparse.Namespace) -> dict[str, Any]:
    variants = [Variant.parse(s) for s in args.variants.split(",")]
    for variant in variants:
        await _prepare_database(server, variant)
    conns = [await asyncpg.connect(v.dsn) for v in variants]
    key = PartitionKey("bench", "static", "events", 0)
    for conn in conns:
        await checkpoints.mark_pending(conn, key, [Member(key.partition, 1, 0)], "bench")
        await conn.execute("UPDATE projector_checkpoints SET committed = 0")
    fleet = Fleet(args.runs, args.keys, args.runs_per_batch)
    warmup = -(-args.runs // args.runs_per_batch) + args.warmup  # first pass inserts every row
    for i in range(warmup + args.batches):
        latest, ids = fleet.next_batch()
        order = list(zip(variants, conns, strict=True))
        if i % 2:  # alternate who goes first, so neither always meets a just-flushed cache
            order.reverse()
        for variant, conn in order:
            await _write(conn, variant, latest, ids, key)
            if variant.vacuum_every and (i + 1) % variant.vacuum_every == 0:
                started = time.perf_counter()
                await conn.execute("VACUUM latest_metrics")
                variant.add("vacuum", time.perf_counter() - started)
        if i + 1 == warmup:
            for variant in variants:
                variant.times.clear()
    latest, _ = fleet.next_batch()
    out: dict[str, Any] = {
        "batch_rows": len(latest.keys),
        "batches": args.batches,
        "runs": args.runs,
        "keys": args.keys,
        "variants": {},
    }
    await asyncio.sleep(1.0)  # cumulative stats reach the shared view within ~1 s
    for variant, conn in zip(variants, conns, strict=True):
        plan = await _explain(conn, variant, latest)
        stats = await conn.fetchrow(
            "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, autovacuum_count,"
            " pg_total_relation_size('latest_metrics') AS bytes"
            " FROM pg_stat_user_tables WHERE relname = 'latest_metrics'"
        )
        out["variants"][variant.spec] = {
            **{stage: _summary(values) for stage, values in variant.times.items()},
            "stats": dict(stats or {}),
            "explain": plan if args.plans else [line for line in plan if "Time" in line or "WAL" in line],
        }
        await conn.close()
    return out


class _NoClickHouse:
    """A ClickHouse that has already got the batch (the `sequential` emulation)."""

    def insert_arrow(self, table: str, data: Any, dedup_token: str | None = None) -> None:
        return None


class _TimedClickHouse:
    """Wraps the real store; adds each insert's seconds to `spent`."""

    def __init__(self, store: Any) -> None:
        self.store, self.spent = store, 0.0

    def insert_arrow(self, table: str, data: Any, dedup_token: str | None = None) -> None:
        started = time.perf_counter()
        self.store.insert_arrow(table, data, dedup_token)
        self.spent += time.perf_counter() - started


def _records(fleet: Fleet, latest: LatestMetrics, first_offset: int) -> list[Any]:
    """The batch as the projector polls it: one metrics event per run (all keys, one step)."""
    from runledger.events.codec import encode, envelope_dict, metric_columns, producer
    from runledger.events.models import EventType

    n_keys = len(fleet.keys)
    records: list[Any] = []
    for i in range(0, len(latest.run_ids), n_keys):
        raw = encode(
            envelope_dict(
                tenant_id=TENANT,
                type=EventType.METRICS_LOGGED,
                run_id=latest.run_ids[i],
                experiment_id="fleet",
                producer=producer("bench"),
                payload=metric_columns(
                    fleet.keys,
                    np.arange(n_keys, dtype=np.int32),
                    latest.values[i : i + n_keys],
                    latest.steps[i : i + n_keys],
                    latest.timestamps[i : i + n_keys],
                ),
            )
        )
        offset = first_offset + len(records)
        records.append(type("Record", (), {"value": raw, "offset": offset, "key": None, "timestamp": 0})())
    return records


async def _bench_writer(server: EmbeddedPostgres, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from kafka import TopicPartition

    from runledger.stores.clickhouse.adapter import ChdbClickHouse
    from services.ingest.batch_writer import BatchWriter, assemble, prepare
    from services.ingest.partition_buffer import PartitionBuffer

    class _DeadLetters:
        def flush(self) -> None:
            return None

    store = ChdbClickHouse(root / "chdb")
    store.migrate()
    timed = _TimedClickHouse(store)
    names = ["sequential", "overlapped"]
    variants = {name: Variant(name, baseline) for name in names}
    pools, writers, states = {}, {}, {}
    for name, variant in variants.items():
        await _prepare_database(server, variant)
        pools[name] = await asyncpg.create_pool(variant.dsn, min_size=1, max_size=2)
        clickhouse = _NoClickHouse() if name == "sequential" else timed
        writers[name] = BatchWriter(clickhouse, pools[name], _DeadLetters())  # type: ignore[arg-type]
        key = PartitionKey("bench", "static", f"events-{name}", 0)  # own dedup tokens per variant
        states[name] = PartitionBuffer(key=key, tp=TopicPartition(key.topic, 0), committed=-1)
    fleet = Fleet(args.runs, args.keys, args.runs_per_batch)
    warmup = -(-args.runs // args.runs_per_batch) + args.warmup
    offset = 0
    for i in range(warmup + args.batches):
        latest, _ = fleet.next_batch()
        records = _records(fleet, latest, offset)
        offset += len(records)
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            batch = assemble([prepare(states[name], records, _DeadLetters())])  # type: ignore[arg-type]
            started = time.perf_counter()
            timed.spent = 0.0
            if name == "sequential":
                token = batch.token
                for table, data in (
                    ("metric_points", batch.projection.points),
                    ("events_archive", batch.projection.archive),
                ):
                    timed.insert_arrow(table, data, token + (".p" if table == "metric_points" else ".a"))
            inserted = time.perf_counter()
            await writers[name].write(batch)
            done = time.perf_counter()
            variants[name].add("clickhouse", timed.spent)
            variants[name].add("write", done - inserted)
            variants[name].add("batch", done - started)
        if i + 1 == warmup:
            for variant in variants.values():
                variant.times.clear()
    for pool in pools.values():
        await pool.close()
    store.close()
    return {
        "batch_rows": len(latest.keys),
        "batches": args.batches,
        "variants": {
            name: {stage: _summary(values) for stage, values in v.times.items()}
            for name, v in variants.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline,where,copy,current")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--runs-per-batch", type=int, default=150)
    parser.add_argument("--batches", type=int, default=40, help="measured batches per variant")
    parser.add_argument("--warmup", type=int, default=7, help="batches after the first pass, not measured")
    parser.add_argument("--no-fsync", action="store_true", help="Postgres with fsync off (tests' setting)")
    parser.add_argument("--plans", action="store_true", help="the whole EXPLAIN output, not only its totals")
    parser.add_argument(
        "--writer", action="store_true", help="BatchWriter.write with chdb: sequential vs overlapped"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="runledger-bench-projector-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    server = EmbeddedPostgres(root / "pg" / "data", 0, fsync=not args.no_fsync)
    server.start()
    try:
        summary = asyncio.run(_bench_writer(server, root, args) if args.writer else _bench(server, args))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = Path(__file__).parent / "out" / "projector_write.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(_table(summary))
    print(f"(details and plans: {out})")


def _table(summary: dict[str, Any]) -> str:
    """One line per variant: p50 (p90) ms per stage, HOT updates, table size."""
    if "stats" not in next(iter(summary["variants"].values())):  # --writer
        lines = [f"{summary['batch_rows']} rows per batch, {summary['batches']} batches; ms p50 (p90)"]
        for spec, v in summary["variants"].items():
            lines.append(
                f"{spec:<12}" + "".join(f"{s:>12} {v[s]['p50']:>7.1f} ({v[s]['p90']:>4.0f})" for s in v)
            )
        return "\n".join(lines)
    stages = ["encode", "upsert", "rest", "commit", "txn"]
    lines = [
        f"{summary['batch_rows']} rows per batch, {summary['batches']} batches; ms p50 (p90)",
        f"{'variant':<22}" + "".join(f"{s:>15}" for s in stages) + f"{'exec ms':>9}{'hot/upd':>15}{'MiB':>7}",
    ]
    for spec, v in summary["variants"].items():
        cells = "".join(f"{v[s]['p50']:>8.1f} ({v[s]['p90']:>4.0f})" for s in stages)
        if "vacuum" in v:
            cells += f"  vacuum {v['vacuum']['p50']:.0f} ms"
        execution = next((x.split(":")[1].split()[0] for x in v["explain"] if x.startswith("Execution")), "?")
        st = v["stats"]
        hot = f"{st['n_tup_hot_upd']}/{st['n_tup_upd']}"
        lines.append(f"{spec:<22}{cells}{execution:>9}{hot:>15}{st['bytes'] / 2**20:>7.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
