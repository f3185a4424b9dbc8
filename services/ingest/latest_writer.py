"""The latest_metrics upsert: one row per (tenant, run, key), the hottest write of the projector.

In a fleet (1,000 runs each logging 100 metrics every few seconds) nearly every point of a
batch is a distinct series, so a batch upserts ~15,000 rows and this statement dominated the
projector's Postgres time (bench/projector_write.py, "Fleet scale" in bench/RESULTS.md):
- The rows travel by binary COPY into a session-local staging table, then one
  INSERT ... SELECT ... ON CONFLICT. Encoding seven 15k-element arrays as unnest() parameters
  cost asyncpg ~50-60 ms of the writer's CPU per batch; COPY encodes the same rows in ~10 ms,
  and Postgres runs the upsert from a table ~15% faster than from unnest() of arrays.
- DO UPDATE has a WHERE: a row the batch does not advance (a replayed or re-sent batch, an
  out-of-order point) is left as it is instead of being rewritten, so it costs no new
  tuple version, no index entries and no WAL.
- What remains is Postgres' own per-row work: an advancing update is never HOT, because
  `value` is in the search index latest_metrics_by_key (schema.sql), so each row costs a new
  tuple version plus an entry in both indexes. An index without `value` made updates HOT and
  the upsert ~2x cheaper, but metric filters in MLflow searches 3-4x slower, so it stays; a
  lower fillfactor alone changes nothing (no update can be HOT).

Semantics are those of build_projection's per-batch latest: the latest point is the max by
(step, timestamp, value); first_step is the min step ever seen.
"""

from __future__ import annotations

from runledger.stores.postgres import PgConnection
from services.ingest.projection import LatestMetrics

STAGE_TABLE = "latest_metrics_stage"
_COLUMNS = ["tenant_id", "run_id", "key", "value", "step", "timestamp", "first_step"]

# ON COMMIT DELETE ROWS: empty at the start of every transaction, rolled back with it, and
# created once per connection (a temporary table is private to its session, so concurrent
# writers on other connections never see each other's rows).
_STAGE_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} (tenant_id text NOT NULL, run_id text NOT NULL,"
    " key text NOT NULL, value float8 NOT NULL, step int8 NOT NULL, timestamp int8 NOT NULL,"
    " first_step int8 NOT NULL) ON COMMIT DELETE ROWS"
)

_NEWER = (
    "(excluded.step, excluded.timestamp, excluded.value)"
    " > (latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)

#: The upsert from the staging table (public for bench/projector_write.py's EXPLAIN).
UPSERT_SQL = (
    "INSERT INTO latest_metrics (tenant_id, run_id, key, value, step, timestamp, first_step)"
    f" SELECT tenant_id, run_id, key, value, step, timestamp, first_step FROM {STAGE_TABLE}"
    " ON CONFLICT (tenant_id, run_id, key) DO UPDATE SET"
    " first_step = LEAST(latest_metrics.first_step, excluded.first_step),"
    f" value = CASE WHEN {_NEWER} THEN excluded.value ELSE latest_metrics.value END,"
    f" timestamp = CASE WHEN {_NEWER} THEN excluded.timestamp ELSE latest_metrics.timestamp END,"
    " step = GREATEST(latest_metrics.step, excluded.step)"
    f" WHERE {_NEWER} OR excluded.first_step < latest_metrics.first_step"
)


async def stage_latest(conn: PgConnection, latest: LatestMetrics) -> None:
    """COPY the batch's latest rows into this session's staging table (inside the transaction)."""
    await conn.execute(_STAGE_DDL)
    records = zip(
        latest.tenant_ids,
        latest.run_ids,
        latest.keys,
        latest.values.tolist(),
        latest.steps.tolist(),
        latest.timestamps.tolist(),
        latest.first_steps.tolist(),
        strict=True,
    )
    await conn.copy_records_to_table(STAGE_TABLE, records=records, columns=_COLUMNS)


async def upsert_latest(conn: PgConnection, latest: LatestMetrics) -> int:
    """Merge a batch's latest point per series into latest_metrics (call inside the batch's
    transaction; the staging rows go with it). Returns the rows inserted or advanced."""
    if not conn.is_in_transaction():  # outside one, the staged rows would vanish at the COPY's commit
        async with conn.transaction():
            return await upsert_latest(conn, latest)
    await stage_latest(conn, latest)
    status = await conn.execute(UPSERT_SQL)
    return int(status.rsplit(" ", 1)[1])
