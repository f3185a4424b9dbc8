"""SQL of the exports: Postgres pages (keyset) and ClickHouse chunks, always tenant-scoped.

The runs wide table is assembled per page of run ids (from the run search's keyset SQL):
attributes, then params, tags and latest metrics pivoted by Postgres into index arrays
(run position, key position, value), min/max of each metric from ClickHouse's rollup.
"""

from __future__ import annotations

import asyncio
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


async def keys_in(
    pool: asyncpg.Pool[Any], kind: str, tenant_id: str, experiments: list[str], lifecycle: str | None
) -> list[str]:
    """Sorted distinct keys of params/tags/metrics among runs of `experiments` (and lifecycle).

    A loose index scan walks the tenant's distinct keys; each is kept when one run of the
    experiments has it (an EXISTS that stops at the first match).
    """
    table = _KEY_TABLES[kind]
    stage = "" if lifecycle is None else " AND r.lifecycle_stage = $3"
    sql = (
        "WITH RECURSIVE k(key) AS ("
        f" SELECT min(key) FROM {table} WHERE tenant_id = $1"
        f" UNION ALL SELECT (SELECT min(key) FROM {table} WHERE tenant_id = $1 AND key > k.key)"
        " FROM k WHERE k.key IS NOT NULL)"
        " SELECT key FROM k WHERE key IS NOT NULL AND EXISTS ("
        f"  SELECT 1 FROM {table} x JOIN runs r ON r.tenant_id = x.tenant_id AND r.run_id = x.run_id"
        f"  WHERE x.tenant_id = $1 AND x.key = k.key AND r.experiment_id = ANY($2::text[]){stage})"
        " ORDER BY key"
    )
    args: list[Any] = [tenant_id, experiments] + ([lifecycle] if lifecycle is not None else [])
    return [r["key"] for r in await pool.fetch(sql, *args)]


async def run_attributes(pool: asyncpg.Pool[Any], tenant_id: str, run_ids: list[str]) -> list[asyncpg.Record]:
    """The runs' attribute rows, in the order of `run_ids`."""
    return await pool.fetch(
        "SELECT r.run_id, r.experiment_id, r.name, r.status, r.start_time, r.end_time, r.user_id,"
        " r.parent_run_id, r.lifecycle_stage FROM unnest($2::text[]) WITH ORDINALITY u(run_id, i)"
        " JOIN runs r ON r.tenant_id = $1 AND r.run_id = u.run_id ORDER BY u.i",
        tenant_id,
        run_ids,
    )


async def pivot(
    pool: asyncpg.Pool[Any], kind: str, tenant_id: str, run_ids: list[str], keys: list[str]
) -> tuple[list[int], list[int], list[Any]]:
    """(run positions, key positions, values) of the runs' params/tags/latest metrics."""
    if not keys or not run_ids:
        return [], [], []
    row = await pool.fetchrow(
        "SELECT coalesce(array_agg(u.i - 1), '{}') AS ri, coalesce(array_agg(k.i - 1), '{}') AS ki,"
        " array_agg(x.value) AS v"
        " FROM unnest($2::text[]) WITH ORDINALITY u(run_id, i)"
        f" JOIN {_KEY_TABLES[kind]} x ON x.tenant_id = $1 AND x.run_id = u.run_id"
        " JOIN unnest($3::text[]) WITH ORDINALITY k(key, i) ON k.key = x.key",
        tenant_id,
        run_ids,
        keys,
    )
    assert row is not None
    return list(row["ri"]), list(row["ki"]), list(row["v"] or [])


async def metric_ranges(clickhouse: ClickHouse, tenant_id: str, run_ids: list[str]) -> pa.Table:
    """min and max of every finite value of each (run, key), from the rollup (64-step buckets)."""
    sql = (
        "SELECT run_id, toString(key) AS key, min(min_value) AS lo, max(max_value) AS hi"
        f" FROM {clickhouse.table(METRIC_ROLLUP.name)}"
        " WHERE tenant_id = {tenant:String} AND run_id IN {runs:Array(String)} GROUP BY run_id, key"
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
