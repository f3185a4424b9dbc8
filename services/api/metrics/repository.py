"""Metric series reads from ClickHouse, always scoped to the principal's tenant.

Every statement is parameterised (`{name:Type}`) and filtered by tenant, run and
key, the leading columns of both tables' sort keys. The ClickHouse adapter blocks,
so calls run in worker threads.

Downsampled modes consider finite values only (the rollup holds no NaN/Infinity),
so the answer is the same whichever path serves it; method=raw returns every point.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pyarrow as pa

from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.tables import METRIC_POINTS, METRIC_ROLLUP, ROLLUP_STEPS
from services.api.metrics.downsample import (
    EmptyPlan,
    LttbPlan,
    MinMaxRawPlan,
    MinMaxRollupPlan,
    Plan,
    RawPlan,
    StepRange,
)
from services.api.principal import Principal

_SCOPE = "tenant_id = {tenant:String} AND run_id = {run:String} AND key = {key:String}"
_RANGE = "step BETWEEN {lo:Int64} AND {hi:Int64}"
_TS = "toUnixTimestamp64Milli(timestamp)"
_NO_RANGE = {"e1lo": 1, "e1hi": 0}

# Output columns of every plan's SQL: step Int64, timestamp Nullable(Int64) ms, value Float64.
SERIES_SCHEMA = pa.schema(
    [
        pa.field("step", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=True),
        pa.field("value", pa.float64(), nullable=False),
    ]
)


def plan_sql(plan: Plan, points_table: str, rollup_table: str) -> tuple[str, dict[str, Any]]:
    """SQL and parameters (without the scope ones) of a plan; columns step, ts (ms), value."""
    if isinstance(plan, RawPlan):
        return (
            f"SELECT step, {_TS} AS ts, value FROM {points_table}"
            f" WHERE {_SCOPE} AND {_RANGE} ORDER BY step, ts",
            _range(plan.range),
        )
    if isinstance(plan, MinMaxRawPlan):
        point = f"(step, {_TS}, value)"
        return (
            "SELECT p.1 AS step, p.2 AS ts, p.3 AS value FROM ("
            f" SELECT intDiv(step - {{lo:Int64}}, {{width:Int64}}) AS g,"
            f" argMin({point}, value) AS low, argMax({point}, value) AS high"
            f" FROM {points_table} WHERE {_SCOPE} AND {_RANGE} AND isFinite(value) GROUP BY g"
            ") ARRAY JOIN arrayDistinct([low, high]) AS p ORDER BY step, ts",
            {**_range(plan.range), "width": plan.width},
        )
    if isinstance(plan, MinMaxRollupPlan):
        return _rollup_sql(plan, points_table, rollup_table)
    if isinstance(plan, LttbPlan):
        # LTTB keeps (step, value) pairs; the timestamps are looked up by that pair.
        picked = (
            f"SELECT toInt64(p.1), p.2 FROM (SELECT largestTriangleThreeBuckets({{n:UInt64}})(step, value) AS pts"
            f" FROM {points_table} WHERE {_SCOPE} AND {_RANGE} AND isFinite(value)) ARRAY JOIN pts AS p"
        )
        return (
            f"SELECT step, min({_TS}) AS ts, value FROM {points_table}"
            f" WHERE {_SCOPE} AND {_RANGE} AND (step, value) IN ({picked})"
            " GROUP BY step, value ORDER BY step, ts",
            {**_range(plan.range), "n": plan.points},
        )
    raise TypeError(f"no SQL for {plan!r}")


def _range(rng: StepRange) -> dict[str, Any]:
    return {"lo": rng.lo, "hi": rng.hi}


def _rollup_sql(plan: MinMaxRollupPlan, points_table: str, rollup_table: str) -> tuple[str, dict[str, Any]]:
    # Whole rollup buckets give each group's extremes; the raw steps of the partial
    # buckets at the edges join the same groups, and the outer GROUP BY picks the winner.
    lower = plan.lower_edge or StepRange(1, 0)
    upper = plan.upper_edge or StepRange(1, 0)
    group = f"intDiv(intDiv(step, {ROLLUP_STEPS}) - {{first:Int64}}, {{group:Int64}})"
    sql = (
        "SELECT p.1 AS step, CAST(NULL, 'Nullable(Int64)') AS ts, p.2 AS value FROM ("
        " SELECT g, argMin((s_lo, v_lo), v_lo) AS low, argMax((s_hi, v_hi), v_hi) AS high FROM ("
        "  SELECT intDiv(bucket - {first:Int64}, {group:Int64}) AS g,"
        "   argMinMerge(min_at) AS s_lo, min(min_value) AS v_lo, argMaxMerge(max_at) AS s_hi, max(max_value) AS v_hi"
        f"  FROM {rollup_table} WHERE {_SCOPE} AND bucket BETWEEN {{full_lo:Int64}} AND {{full_hi:Int64}} GROUP BY g"
        "  UNION ALL"
        f"  SELECT {group} AS g, argMin(step, value), min(value), argMax(step, value), max(value)"
        f"  FROM {points_table} WHERE {_SCOPE} AND isFinite(value)"
        "   AND (step BETWEEN {e1lo:Int64} AND {e1hi:Int64} OR step BETWEEN {e2lo:Int64} AND {e2hi:Int64})"
        "  GROUP BY g"
        " ) GROUP BY g"
        ") ARRAY JOIN arrayDistinct([low, high]) AS p ORDER BY step"
    )
    params = {
        "first": plan.first_bucket,
        "group": plan.group,
        "full_lo": plan.full_lo,
        "full_hi": plan.full_hi,
        "e1lo": lower.lo,
        "e1hi": lower.hi,
        "e2lo": upper.lo,
        "e2hi": upper.hi,
    }
    return sql, params


def json_rows_sql(inner: str) -> str:
    """Wrap a plan's SQL so ClickHouse renders each point as a JSON object followed by ','.

    The Arrow string column then holds the whole JSON array body contiguously: a
    1M-point `points` answer costs no Python per point.
    """
    value = (
        "multiIf(isFinite(value), toString(value), isNaN(value), '\"NaN\"',"
        " value > 0, '\"Infinity\"', '\"-Infinity\"')"
    )
    return (
        "SELECT concat('{\"step\":', toString(step), ',\"timestamp\":', ifNull(toString(ts), 'null'),"
        f" ',\"value\":', {value}, '}},') AS row FROM ({inner}) ORDER BY step, ts"
    )


class MetricSeriesRepository:
    """Reads the metric series of one tenant."""

    def __init__(self, clickhouse: ClickHouse, principal: Principal) -> None:
        """Bind the repository to the caller's tenant."""
        self._ch = clickhouse
        self._tenant_id = principal.tenant_id
        self._points = clickhouse.table(METRIC_POINTS.name)
        self._rollup = clickhouse.table(METRIC_ROLLUP.name)

    def bound_to(self, tenant_id: str) -> MetricSeriesRepository:
        """The same reads over another tenant's series (a run of an experiment shared with the caller's)."""
        bound = copy.copy(self)
        bound._tenant_id = tenant_id
        return bound

    def _scope(self, run_id: str, key: str) -> dict[str, Any]:
        return {"tenant": self._tenant_id, "run": run_id, "key": key}

    async def _query(self, sql: str, params: dict[str, Any]) -> pa.Table:
        return await asyncio.to_thread(self._ch.query_arrow, sql, params)

    async def count(self, run_id: str, key: str, rng: StepRange) -> int:
        """Points of a series within a step range."""
        table = await self._query(
            f"SELECT count() AS n FROM {self._points} WHERE {_SCOPE} AND {_RANGE}",
            {**self._scope(run_id, key), **_range(rng)},
        )
        return int(table.column("n")[0].as_py())

    async def fetch(self, run_id: str, key: str, plan: Plan) -> pa.Table:
        """The points of a plan as an Arrow table in SERIES_SCHEMA, in step order."""
        if isinstance(plan, EmptyPlan):
            return SERIES_SCHEMA.empty_table()
        sql, params = plan_sql(plan, self._points, self._rollup)
        table = await self._query(sql, {**self._scope(run_id, key), **params})
        return pa.Table.from_arrays(
            [table.column(i).cast(field.type) for i, field in enumerate(SERIES_SCHEMA)], schema=SERIES_SCHEMA
        )

    async def fetch_json_rows(self, run_id: str, key: str, plan: Plan) -> bytes:
        """The points of a plan as the body of a JSON array (`{...},{...}`), built by ClickHouse."""
        if isinstance(plan, EmptyPlan):
            return b""
        sql, params = plan_sql(plan, self._points, self._rollup)
        table = await self._query(json_rows_sql(sql), {**self._scope(run_id, key), **params})
        return concatenated_strings(table.column("row"))[:-1]  # drop the trailing ','


def concatenated_strings(column: pa.ChunkedArray) -> bytes:
    """All strings of a column back to back, read straight from the Arrow data buffers."""
    parts: list[bytes] = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        wide = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
        offsets = chunk.buffers()[1]
        data = chunk.buffers()[2]
        width = 8 if wide else 4
        first = int.from_bytes(
            offsets[(chunk.offset) * width : (chunk.offset + 1) * width], "little", signed=True
        )
        end = chunk.offset + len(chunk)
        last = int.from_bytes(offsets[end * width : (end + 1) * width], "little", signed=True)
        parts.append(data[first:last].to_pybytes())
    return b"".join(parts)
