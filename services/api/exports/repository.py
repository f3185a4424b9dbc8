"""SQL of the exports: Postgres pages (keyset) and ClickHouse chunks, always tenant-scoped.

The runs wide table is assembled per page of run ids (from the run search's keyset SQL):
attributes, tags and latest metrics as long rows (run position, key, value) in CSV from COPY,
for pyarrow to parse, params as each run's document (NDJSON from COPY, for pyarrow's JSON
reader), and min/max of each metric from ClickHouse's rollup.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import pyarrow as pa

from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.tables import METRIC_POINTS, METRIC_ROLLUP
from services.api.odata.compile import ClickHouseDialect, SortColumn, after, array_text
from services.api.odata.model import METRIC_POINTS_SET

_KEY_TABLES = {"params": "params", "tags": "tags", "metrics": "latest_metrics"}

# Metric points in their sort-key order (after tenant_id): the chunks' keyset.
_POINT_ORDER = [
    SortColumn(METRIC_POINTS_SET.by_name[name], False)
    for name in ("RunId", "Key", "Step", "Timestamp", "Value")
]


async def experiment_ids(pool: asyncpg.Pool[Any], tenant_id: str) -> list[str]:
    """Every experiment id of a tenant."""
    rows = await pool.fetch("SELECT experiment_id FROM experiments WHERE tenant_id = $1", tenant_id)
    return [r["experiment_id"] for r in rows]


# Up to this many runs in the selected experiments, their keys are read run by run (primary key
# ranges); above it, each of the tenant's distinct keys is probed for one run of the selection.
KEYS_BY_RUN_MAX = 5000


async def keys_in(
    pool: asyncpg.Pool[Any], kind: str, tenant_id: str, experiments: list[str], lifecycle: str | None
) -> list[str]:
    """Sorted distinct keys of params/tags/metrics among runs of `experiments` (and lifecycle).

    Two plans, picked by the number of selected runs: few runs, read their keys through the
    primary key (cost: their rows); many runs, a loose index scan over the tenant's distinct
    keys, each kept when one selected run has it. The probe is a LATERAL ... LIMIT 1 so that
    it stops at the first match: written as EXISTS, Postgres turned it into one semi-join
    over every row of the table (3.4 s for 5M params, most of the time before the first byte).
    """
    table = _KEY_TABLES[kind]
    stage = "" if lifecycle is None else " AND r.lifecycle_stage = $3"
    args: list[Any] = [tenant_id, experiments] + ([lifecycle] if lifecycle is not None else [])
    selected = await pool.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM runs r WHERE r.tenant_id = $1"
        f" AND r.experiment_id = ANY($2::text[]){stage} LIMIT {KEYS_BY_RUN_MAX + 1}) s",
        *args,
    )
    if selected <= KEYS_BY_RUN_MAX:
        sql = (
            f"SELECT DISTINCT x.key FROM runs r JOIN {table} x ON x.tenant_id = r.tenant_id"
            f" AND x.run_id = r.run_id WHERE r.tenant_id = $1 AND r.experiment_id = ANY($2::text[]){stage}"
        )
    else:
        sql = (
            "WITH RECURSIVE k(key) AS ("
            f" SELECT min(key) FROM {table} WHERE tenant_id = $1"
            f" UNION ALL SELECT (SELECT min(key) FROM {table} WHERE tenant_id = $1 AND key > k.key)"
            " FROM k WHERE k.key IS NOT NULL)"
            " SELECT k.key FROM k CROSS JOIN LATERAL ("
            f"  SELECT 1 FROM {table} x JOIN runs r ON r.tenant_id = x.tenant_id AND r.run_id = x.run_id"
            f"  WHERE x.tenant_id = $1 AND x.key = k.key AND r.experiment_id = ANY($2::text[]){stage}"
            "  LIMIT 1) hit WHERE k.key IS NOT NULL"
        )
    # Sorted here, by code point, as the column names are: the database's collation may differ.
    return sorted(r["key"] for r in await pool.fetch(sql, *args))


@dataclass(frozen=True)
class PageLiterals:
    """A page's tenant and run ids as SQL literals, quoted by Postgres (quote_literal).

    COPY takes no bound parameters: asyncpg inlines them with two round trips per statement
    (prepare, then quote on the server). A page's four COPY statements share one quoting.
    """

    tenant: str
    run_ids: str


async def page_literals(pool: asyncpg.Pool[Any], tenant_id: str, run_ids: list[str]) -> PageLiterals:
    """The literals of a page (one round trip)."""
    row = await pool.fetchrow(
        "SELECT quote_literal($1::text) AS tenant, quote_literal($2::text[]::text) AS run_ids",
        tenant_id,
        run_ids,
    )
    assert row is not None
    return PageLiterals(row["tenant"], row["run_ids"])


async def copy_csv(
    pool: asyncpg.Pool[Any], sql: str, delimiter: str | None = None, quote: str | None = None
) -> bytes:
    """The rows of `sql` as CSV (COPY ... TO STDOUT): parsed by pyarrow, never cell by cell in Python.

    NULL is an unquoted empty field and the empty string a quoted one (""), so the two stay apart.
    `delimiter` and `quote` replace COPY's (comma, double quote).
    """
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    async with pool.acquire() as conn, conn.transaction(readonly=True):
        # A page's estimate (thousands of index ranges) passes jit_optimize_above_cost: 90 ms of
        # LLVM compilation for a query that runs 150 ms. Nothing here runs long enough to gain.
        await conn.execute("SET LOCAL jit = off")
        await conn.copy_from_query(sql, output=sink, format="csv", delimiter=delimiter, quote=quote)
    return b"".join(chunks)


async def run_attributes_csv(pool: asyncpg.Pool[Any], page: PageLiterals) -> bytes:
    """CSV of (position in the page's run ids from 1, attributes...) of the tenant's runs among them,
    in the page's order (a join may return them in any).

    A run deleted since its id was read is absent; the position says where each row belongs.
    """
    return await copy_csv(
        pool,
        "SELECT u.i, r.run_id, r.experiment_id, r.name, r.status, r.start_time, r.end_time, r.user_id,"
        f" r.parent_run_id, r.lifecycle_stage FROM unnest({page.run_ids}::text[]) WITH ORDINALITY u(run_id, i)"
        f" JOIN runs r ON r.tenant_id = {page.tenant}::text AND r.run_id = u.run_id ORDER BY u.i",
    )


async def run_values_csv(pool: asyncpg.Pool[Any], kind: str, page: PageLiterals) -> bytes:
    """CSV of (position in the page's run ids from 1, key, value) of the runs' params/tags/latest metrics.

    Long rows, pivoted by the caller with numpy: a pivot in SQL would need one output column
    per key (Postgres allows 1,664) or a JSON object per run built at read time, both dearer
    (so was mapping keys to positions here, by a join: 40 ms more per 250k rows than sending
    the key). The LATERAL with OFFSET 0 is not flattened, so each run is one range of the
    primary key (cost: the page's rows), never a hash join over the whole table, which the
    planner picked for tags. Params are read this way only when PARAMS_FROM_DOCUMENTS is off:
    their documents are kept by triggers (run_params_ndjson).
    """
    value = "x.value::text" if kind == "metrics" else "x.value"  # float8 text round-trips exactly
    return await copy_csv(
        pool,
        f"SELECT u.i, x.key, x.value FROM unnest({page.run_ids}::text[]) WITH ORDINALITY u(run_id, i)"
        f" CROSS JOIN LATERAL (SELECT x.key, {value} AS value FROM {_KEY_TABLES[kind]} x"
        f"  WHERE x.tenant_id = {page.tenant}::text AND x.run_id = u.run_id OFFSET 0) x",
    )


async def run_params_ndjson(pool: asyncpg.Pool[Any], page: PageLiterals) -> bytes:
    """NDJSON, a line per run of the page: {"i": position in the page's run ids from 1, "p": params}.

    `p` is the run's params document (runs.params_doc, kept equal to its params rows by
    triggers on params, so the projector's inserts maintain it): one row read per run instead
    of one per param (for 50 params, Postgres spends 34 ms of CPU on a page of 2,500 runs
    instead of 123 ms). Written by COPY as CSV whose quote and delimiter
    (0x01, 0x02) never occur in JSON text (jsonb escapes every control character), so no line
    is ever quoted: the output is the NDJSON itself, for pyarrow's JSON reader.
    """
    return await copy_csv(
        pool,
        """SELECT '{"i":' || u.i || ',"p":' || r.params_doc::text || '}'"""
        f" FROM unnest({page.run_ids}::text[]) WITH ORDINALITY u(run_id, i)"
        f" JOIN runs r ON r.tenant_id = {page.tenant}::text AND r.run_id = u.run_id",
        delimiter="\x02",
        quote="\x01",
    )


async def metric_ranges(clickhouse: ClickHouse, tenant_id: str, run_ids: list[str]) -> pa.Table:
    """min and max of every finite value of each (run, key), from the rollup (64-step buckets)."""
    sql = (
        "SELECT run_id, toString(key) AS key, min(min_value) AS lo, max(max_value) AS hi"
        f" FROM {clickhouse.table(METRIC_ROLLUP.name)}"
        " WHERE tenant_id = {tenant:String} AND run_id IN {runs:Array(String)} GROUP BY run_id, key"
        # The rollup is sorted by (tenant_id, run_id, key): aggregate in that order, no hash table.
        " SETTINGS optimize_aggregation_in_order = 1"
    )
    params = {"tenant": tenant_id, "runs": array_text(run_ids)}
    return await asyncio.to_thread(clickhouse.query_arrow, sql, params)


async def points_chunk(
    clickhouse: ClickHouse,
    tenant_id: str,
    run_ids: list[str],
    keys: list[str],
    position: list[Any] | None,
    limit: int,
) -> pa.Table:
    """Up to `limit` points of the runs (and keys), in sort-key order, after `position`."""
    ch = ClickHouseDialect()
    tenant = ch.param(tenant_id, "String")
    clauses = [f"tenant_id = {tenant}", f"run_id IN {ch.param(run_ids, 'Array(String)')}"]
    if keys:
        clauses.append(f"key IN {ch.param(keys, 'Array(String)')}")
    if position is not None:
        clauses.append(after(_POINT_ORDER, position, ch, row_values=False))
    sql = (
        "SELECT run_id, experiment_id, toString(key) AS key, step, timestamp, value"
        f" FROM {clickhouse.table(METRIC_POINTS.name)} WHERE {' AND '.join(clauses)}"
        f" ORDER BY run_id, key, step, timestamp, value LIMIT {ch.param(limit, 'UInt64')}"
    )
    return await asyncio.to_thread(clickhouse.query_arrow, sql, ch.params)


def point_position(table: pa.Table) -> list[Any]:
    """The keyset position of a chunk's last point (ms for the timestamp)."""
    last = table.slice(table.num_rows - 1).to_pylist()[0]
    stamp = table.column("timestamp").cast(pa.int64())[table.num_rows - 1].as_py()
    return [last["run_id"], last["key"], last["step"], stamp, last["value"]]


async def experiments_page(
    pool: asyncpg.Pool[Any],
    tenant_id: str,
    experiments: list[str],
    where_sql: str,
    where_args: list[Any],
    after_id: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of experiments (by id) with their tags as a JSON object."""
    args: list[Any] = [tenant_id, experiments, after_id or "", limit, *where_args]
    return await pool.fetch(
        "SELECT e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage, e.creation_time,"
        " e.last_update_time, (SELECT coalesce(array_agg(t.key ORDER BY t.key), '{}') FROM experiment_tags t"
        "  WHERE t.tenant_id = e.tenant_id AND t.experiment_id = e.experiment_id) AS tag_keys,"
        " (SELECT coalesce(array_agg(t.value ORDER BY t.key), '{}') FROM experiment_tags t"
        "  WHERE t.tenant_id = e.tenant_id AND t.experiment_id = e.experiment_id) AS tag_values"
        " FROM experiments e WHERE e.tenant_id = $1 AND e.experiment_id = ANY($2::text[])"
        f" AND e.experiment_id > $3 AND {where_sql} ORDER BY e.experiment_id LIMIT $4",
        *args,
    )


async def experiment_tag_keys(pool: asyncpg.Pool[Any], tenant_id: str, experiments: list[str]) -> list[str]:
    rows = await pool.fetch(
        "SELECT DISTINCT key FROM experiment_tags WHERE tenant_id = $1 AND experiment_id = ANY($2::text[])"
        " ORDER BY key",
        tenant_id,
        experiments,
    )
    return [r["key"] for r in rows]
