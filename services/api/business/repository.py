"""Business metric declarations and the stakeholder roll-up, in Postgres, of one tenant.

`version_rows_sql` is the one roll-up query: `business_rollup` runs it for the JSON/CSV
report, and the OData entity set BusinessMetrics uses it as a CTE under its compiled
$filter/$orderby/paging, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from runledger.stores.postgres import PgConnection
from services.api.business.schemas import BusinessMetric, DeclaredBusinessMetric

VERSION_COLUMNS = (
    "model_name", "version", "stage", "run_id", "experiment_id", "metric", "category", "unit",
    "currency", "owner", "direction", "value", "step", "timestamp",
)  # fmt: skip
ROLLUP_COLUMNS = (
    "model_name", "stage", "metric", "category", "unit", "currency", "owner", "direction",
    "versions", "latest_version", "latest_value", "mean", "min", "max", "best_version", "best_value",
)  # fmt: skip


def columns(level: str) -> tuple[str, ...]:
    """The row columns of a report level (model level: no stage)."""
    if level == "version":
        return VERSION_COLUMNS
    if level == "model":
        return tuple(c for c in ROLLUP_COLUMNS if c != "stage")
    return ROLLUP_COLUMNS


Bind = Callable[[Any, str], str]
"""Binds a value as the next query parameter with an SQL cast; returns its placeholder (`$3::text`).

The caller owns the numbering, so the roll-up can sit inside a larger statement (OData)."""

# Non-finite values become NULL here, in SQL, so every reader (report, CSV, OData) sees the
# same null and a numeric filter or sort never meets NaN (Postgres sorts NaN above every number).
_VERSION_ROWS = """
SELECT mv.model_name, mv.version, mv.stage, mv.run_id, r.experiment_id, b.key AS metric, b.category,
       b.unit, b.currency, b.owner, b.direction,
       CASE WHEN lm.value IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE lm.value END AS value,
       lm.step, lm.timestamp
FROM model_versions mv
JOIN runs r ON r.tenant_id = mv.tenant_id AND r.run_id = mv.run_id AND r.lifecycle_stage = 'active'
JOIN latest_metrics lm ON lm.tenant_id = mv.tenant_id AND lm.run_id = mv.run_id
JOIN business_metrics b ON b.tenant_id = lm.tenant_id AND b.key = lm.key
WHERE {where}"""
_VERSION_ORDER = " ORDER BY mv.model_name, mv.version, b.key"


def version_rows_sql(
    bind: Bind,
    tenant_id: str,
    *,
    readable: frozenset[str] | None,
    model_name: str | None = None,
    stage: str | None = None,
    metrics: Sequence[str] | None = None,
) -> str:
    """The SELECT of the version-level roll-up (`VERSION_COLUMNS`), without ORDER BY.

    Only model versions of `tenant_id` whose source run is active and in a `readable`
    experiment (None: all of the tenant's) count; values that are not finite are NULL.
    Every value is bound through `bind`; a filter left out adds no clause, so the planner
    sees only the predicates that apply.
    """
    clauses = [f"mv.tenant_id = {bind(tenant_id, 'text')}"]
    if readable is not None:
        clauses.append(f"r.experiment_id = ANY({bind(sorted(readable), 'text[]')})")
    if model_name is not None:
        clauses.append(f"mv.model_name = {bind(model_name, 'text')}")
    if stage is not None:
        clauses.append(f"mv.stage = {bind(stage, 'text')}")
    if metrics:
        clauses.append(f"b.key = ANY({bind(list(metrics), 'text[]')})")
    return _VERSION_ROWS.format(where="\n  AND ".join(clauses))


class _Args:
    """A `Bind` numbering asyncpg's $n placeholders from 1, for a statement of its own."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}"


async def business_rollup(
    conn: PgConnection | asyncpg.Pool[Any],
    tenant_id: str,
    *,
    readable: frozenset[str] | None,
    level: str = "version",
    model_name: str | None = None,
    stage: str | None = None,
    metrics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The stakeholder report of `tenant_id`: rows of `columns(level)`.

    Only model versions whose source run is active and in a `readable` experiment (None: all)
    count; versions registered without a run have no metrics and no rows.
    - level "version": one row per (model, version, business metric) with the source run's
      latest value (None when not finite);
    - level "stage": one row per (model, stage, metric) over that stage's versions: versions,
      latest_version / latest_value (the highest version), mean, min, max of the finite values,
      best_version / best_value by the metric's direction;
    - level "model": the same per (model, metric) over every stage.
    """
    if level not in ("version", "stage", "model"):
        raise ValueError(f"unknown level {level!r}")
    args = _Args()
    sql = version_rows_sql(
        args, tenant_id, readable=readable, model_name=model_name, stage=stage, metrics=metrics
    )
    rows = await conn.fetch(sql + _VERSION_ORDER, *args.values)
    versions = [dict(r) for r in rows]
    if level == "version":
        return versions
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in versions:
        key = (row["model_name"], row["stage"] if level == "stage" else "", row["metric"])
        groups.setdefault(key, []).append(row)
    out = []
    for (model, stage_name, metric), members in groups.items():
        first = members[0]
        latest = max(members, key=lambda m: m["version"])
        finite = [m for m in members if m["value"] is not None]
        values = np.array([m["value"] for m in finite], dtype=np.float64)
        pick = max if first["direction"] == "max" else min
        best = pick(finite, key=lambda m: m["value"]) if finite else None
        row = {
            "model_name": model,
            "stage": stage_name,
            "metric": metric,
            **{c: first[c] for c in ("category", "unit", "currency", "owner", "direction")},
            "versions": len(members),
            "latest_version": latest["version"],
            "latest_value": latest["value"],
            "mean": float(values.mean()) if values.size else None,
            "min": float(values.min()) if values.size else None,
            "max": float(values.max()) if values.size else None,
            "best_version": best["version"] if best else None,
            "best_value": best["value"] if best else None,
        }
        if level == "model":
            row.pop("stage")
        out.append(row)
    return out


class BusinessRepository:
    """Declarations of one tenant; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], tenant_id: str) -> None:
        self.pool = pool
        self._tenant_id = tenant_id

    async def list(self) -> list[DeclaredBusinessMetric]:
        """Every declaration of the tenant, by key."""
        rows = await self.pool.fetch(
            "SELECT key, category, unit, currency, owner, description, direction,"
            " (extract(epoch from updated_at) * 1000)::bigint AS updated_at, updated_by"
            " FROM business_metrics WHERE tenant_id = $1 ORDER BY key",
            self._tenant_id,
        )
        return [DeclaredBusinessMetric(**dict(r)) for r in rows]

    async def put(self, conn: PgConnection, metric: BusinessMetric, actor: str) -> bool:
        """Create or replace a declaration; True when it is new."""
        created: bool = await conn.fetchval(
            "INSERT INTO business_metrics (tenant_id, key, category, unit, currency, owner, description,"
            " direction, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (tenant_id, key) DO UPDATE SET category = excluded.category, unit = excluded.unit,"
            " currency = excluded.currency, owner = excluded.owner, description = excluded.description,"
            " direction = excluded.direction, updated_by = excluded.updated_by, updated_at = now()"
            " RETURNING (xmax = 0)",
            self._tenant_id,
            metric.key,
            metric.category,
            metric.unit,
            metric.currency,
            metric.owner,
            metric.description,
            metric.direction,
            actor,
        )
        return created

    async def delete(self, conn: PgConnection, key: str) -> bool:
        """Remove a declaration; False when there was none."""
        status = await conn.execute(
            "DELETE FROM business_metrics WHERE tenant_id = $1 AND key = $2", self._tenant_id, key
        )
        return bool(status == "DELETE 1")
