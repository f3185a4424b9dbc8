"""The projector's view of the tenants' metric retention, for metric_points.retention_days,
and the ingestion time of each point (metric_points.ingested_at), which its age is measured from.

Each inserted point carries its tenant's retention in days (0 = forever), which the
ClickHouse TTL reads. Policies are reloaded at most every REFRESH_S seconds, and at once
after this process projects a tenant.retention_policy_set event. A point inserted with
a stale value (another replica's policy change, less than REFRESH_S ago) is corrected by
the sweeper's reconciliation, which rewrites every row of a tenant whose retention_days
differs from its policy (services/api/retention/store.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runledger.retention import DEFAULT_METRIC_POINTS_DAYS

REFRESH_S = 5.0
COLUMN = "retention_days"
INGESTED_AT = "ingested_at"


class RetentionDays:
    """Tenant -> retention_days, cached."""

    def __init__(self, pool: asyncpg.Pool[Any] | None, refresh_s: float = REFRESH_S) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._days: dict[str, int] = {}
        self._loaded_at = -float("inf")

    def invalidate(self) -> None:
        """Reload before the next lookup (a policy was just projected here)."""
        self._loaded_at = -float("inf")

    async def days(self, tenants: Iterable[str]) -> dict[str, int]:
        """The retention of each tenant (the default for a tenant without a policy)."""
        if self._pool is not None and time.monotonic() - self._loaded_at > self._refresh_s:
            rows = await self._pool.fetch("SELECT tenant_id, metric_points_days FROM retention_policies")
            self._days = {r["tenant_id"]: int(r["metric_points_days"] or 0) for r in rows}
            self._loaded_at = time.monotonic()
        return {t: self._days.get(t, DEFAULT_METRIC_POINTS_DAYS) for t in tenants}


def with_retention(points: pa.Table, days: Mapping[str, int]) -> pa.Table:
    """`points` with the retention_days column, from each row's tenant."""
    tenants = points.column("tenant_id").combine_chunks()
    if isinstance(tenants, pa.DictionaryArray):
        names = tenants.dictionary.to_pylist()
        per_name = pa.array([days.get(n, DEFAULT_METRIC_POINTS_DAYS) for n in names], pa.uint16())
        column = pc.take(per_name, tenants.indices)
    else:
        names = tenants.to_pylist()
        column = pa.array(np.array([days.get(n, DEFAULT_METRIC_POINTS_DAYS) for n in names], np.uint16))
    if COLUMN in points.column_names:
        points = points.drop_columns([COLUMN])
    return points.append_column(COLUMN, column)


def with_ingested_at(points: pa.Table, at: datetime) -> pa.Table:
    """`points` with the ingested_at column: `at` (second precision) on every row.

    The projector passes the time its batch was projected, the ingested_at of the batch's
    events_archive rows, and replay passes that archived time again: a replayed point keeps
    the age it had, so the points a sweep deleted (and recorded) are not brought back for a
    whole new retention period. One value per insert: it compresses to almost nothing.
    """
    column = pa.array([at], pa.timestamp("s", tz="UTC"))
    if INGESTED_AT in points.column_names:
        points = points.drop_columns([INGESTED_AT])
    return points.append_column(INGESTED_AT, pa.repeat(column[0], points.num_rows))
