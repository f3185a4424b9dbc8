"""Metric histories for metrics/get-history and get-history-bulk-interval, read from ClickHouse.

ClickHouse renders each point as a JSON object (as services/api/metrics does), so a
25,000-point page or a 1M-point history costs no Python per point. Points are
distinct by (timestamp, step, value): MLflow's dedup rule, whether or not the
table has merged duplicates yet. A page of get-history is a range read in time
order, deduplicated within the page.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow.compute as pc

from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.tables import METRIC_POINTS
from services.api.metrics.repository import concatenated_strings

_TS = "toUnixTimestamp64Milli(timestamp)"
_VALUE_JSON = "multiIf(isFinite(value), toString(value), isNaN(value), '\"NaN\"', value > 0, '\"Infinity\"', '\"-Infinity\"')"
# NaN compares false with everything: the keyset orders it after the numbers of its
# (timestamp, step) and compares 0 in its place.
_ORDER = "ts, step, isNaN(value), if(isNaN(value), 0, value)"
# The same key over the stored columns, for filtering before the rows are renamed.
_STORED_ORDER = f"{_TS}, step, isNaN(value), if(isNaN(value), 0, value)"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a history page ended: the last point's sort key."""

    timestamp: int
    step: int
    nan: int
    value: float

    def as_list(self) -> list[Any]:
        """The position for a page token. JSON has no infinities (orjson writes null, which
        no token could be resumed from), so they travel as the strings float() reads back."""
        value: float | str = self.value
        if math.isinf(self.value):
            value = "Infinity" if self.value > 0 else "-Infinity"
        return [self.timestamp, self.step, self.nan, value]


class HistoryReader:
    """Reads metric histories of one tenant."""

    def __init__(self, clickhouse: ClickHouse, tenant_id: str) -> None:
        """Bind the reader to the tenant holding the runs."""
        self._ch = clickhouse
        self._tenant_id = tenant_id
        self._points = clickhouse.table(METRIC_POINTS.name)

    async def page(
        self, run_id: str, key: str, after: Position | None, limit: int | None
    ) -> tuple[bytes, Position | None]:
        """Up to `limit` points (all when None) after `after`, ordered by (timestamp, step, value),
        as the body of a JSON array; and the position of the last one when more may follow.

        A page reads only its own range: the first limit + 1 stored rows after `after` in
        time order (a top-N of the rest of the series), deduplicated among themselves. Duplicates are equal in every sorted
        column, so they are adjacent in that order: a cut inside a run of copies leaves the
        rest to the next page, whose keyset (strictly after the last point) skips them. A
        page with duplicates therefore holds fewer than `limit` points but still a token;
        the client follows tokens, not page sizes. (The whole-series DISTINCT this replaces
        read and sorted all of a 1M-point series for each of its 40 pages.)
        """
        params: dict[str, Any] = {
            "tenant": self._tenant_id,
            "run": run_id,
            "key": key,
            "keyjson": orjson.dumps(key).decode(),
        }
        keyset = ""
        if after is not None:
            # The bound on the bare column prunes granules early; the tuple comparison is the
            # exact keyset.
            keyset = (
                " AND timestamp >= fromUnixTimestamp64Milli({t:Int64}, 'UTC')"
                f" AND ({_STORED_ORDER}) > ({{t:Int64}}, {{s:Int64}}, {{n:UInt8}}, {{v:Float64}})"
            )
            params |= {"t": after.timestamp, "s": after.step, "n": after.nan, "v": after.value}
        range_sql = ""
        if limit is not None:
            # Bare columns, not _ORDER's expressions (those made the top-N ~3x slower); the same
            # order, since ClickHouse sorts NaN after every number as _ORDER does.
            range_sql = " ORDER BY timestamp, step, value LIMIT {raw:UInt64}"
            params["raw"] = limit + 1  # one more tells whether a next page exists
        sql = (
            "SELECT concat('{\"key\":', {keyjson:String}, ',\"value\":', " + _VALUE_JSON + ","
            " ',\"timestamp\":', toString(ts), ',\"step\":', toString(step), '},') AS row,"
            " ts, step, isNaN(value) AS nan, if(isNaN(value), 0, value) AS v, copies FROM ("
            # GROUP BY rather than DISTINCT: the copies add up to the rows read, which says
            # whether the range was cut off by the LIMIT.
            " SELECT ts, step, value, count() AS copies FROM ("
            f"  SELECT {_TS} AS ts, step, value FROM {self._points}"
            "   WHERE tenant_id = {tenant:String} AND run_id = {run:String} AND key = {key:String}"
            f"{keyset}{range_sql}"
            f" ) GROUP BY ts, step, value) ORDER BY {_ORDER}"
        )
        table = await asyncio.to_thread(self._ch.query_arrow, sql, params)
        read = pc.sum(table.column("copies")).as_py() or 0  # null for no rows
        cut = limit is not None and read > limit
        if not cut:
            return concatenated_strings(table.column("row"))[:-1], None
        assert limit is not None
        table = table.slice(0, limit)
        body = concatenated_strings(table.column("row"))[:-1]
        last = table.num_rows - 1
        position = Position(
            int(table.column("ts")[last].as_py()),
            int(table.column("step")[last].as_py()),
            int(table.column("nan")[last].as_py()),
            float(table.column("v")[last].as_py()),
        )
        return body, position

    async def sampled(
        self, run_ids: list[str], key: str, start_step: int, end_step: int, max_results: int
    ) -> bytes:
        """Each run's points at up to `max_results` of its steps in [start_step, end_step], evenly
        spaced by rank plus its first and last step (MLflow's sampling, per run), ordered by run
        (as given), step, timestamp; as the body of a JSON array of MetricWithRunId."""
        params: dict[str, Any] = {
            "tenant": self._tenant_id,
            # The text form of Array(String) (what both adapters pass through); run ids are
            # [A-Za-z0-9_.-] (checked before they get here), so quoting needs no escaping.
            "runs": "[" + ",".join(f"'{r}'" for r in run_ids) + "]",
            "key": key,
            "keyjson": orjson.dumps(key).decode(),
            "lo": start_step,
            "hi": end_step,
            "m": max_results,
            "cap": max_results + 2,  # sampled steps plus first and last; bounds a step holding many points
        }
        # Rank r of a step among the run's n distinct steps: MLflow keeps index floor(i*n/m)
        # for i < m, i.e. rank r when ceil(r*m/n)*n < (r+1)*m; and always the last one.
        sql = (
            "SELECT concat('{\"key\":', {keyjson:String}, ',\"value\":', " + _VALUE_JSON + ","
            " ',\"timestamp\":', toString(ts), ',\"step\":', toString(step), ',\"run_id\":\"', run_id, '\"},') AS row"
            " FROM (SELECT run_id, ts, step, value, r, max(r) OVER (PARTITION BY run_id) + 1 AS n FROM ("
            "  SELECT run_id, ts, step, value, dense_rank() OVER (PARTITION BY run_id ORDER BY step) - 1 AS r FROM ("
            f"   SELECT DISTINCT run_id, {_TS} AS ts, step, value FROM {self._points}"
            "    WHERE tenant_id = {tenant:String} AND run_id IN {runs:Array(String)} AND key = {key:String}"
            "    AND step BETWEEN {lo:Int64} AND {hi:Int64})))"
            " WHERE n <= {m:Int64} OR r = n - 1 OR intDiv(r * {m:Int64} + n - 1, n) * n < (r + 1) * {m:Int64}"
            " ORDER BY indexOf({runs:Array(String)}, run_id), step, ts, value"
            " LIMIT {cap:UInt64} BY run_id"
        )
        table = await asyncio.to_thread(self._ch.query_arrow, sql, params)
        return concatenated_strings(table.column("row"))[:-1]
