"""What a comparison reads: runs, params and latest metrics (Postgres), series summaries
(ClickHouse). Every query names the tenant that holds the rows (the caller's, or the owner
of an experiment shared with it, decided by the service)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from runledger.compare.model import RunData, SeriesStat
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.tables import METRIC_POINTS, METRIC_ROLLUP

# A run's model artifacts: under model/ or models/, or under the source path of a model
# version registered from the run (runs:/<run_id>/<path> or a plain relative path).
_MODEL_SIZES = """
SELECT a.run_id, sum(a.size)::bigint AS size FROM artifacts a
WHERE a.tenant_id = $1 AND a.run_id = ANY($2::text[]) AND (
    split_part(a.path, '/', 1) IN ('model', 'models')
    OR EXISTS (
        SELECT 1 FROM model_versions mv
        WHERE mv.tenant_id = a.tenant_id AND mv.run_id = a.run_id AND mv.source <> ''
          AND (a.path = regexp_replace(mv.source, '^runs:/[^/]+/', '')
               OR starts_with(a.path, regexp_replace(mv.source, '^runs:/[^/]+/', '') || '/'))))
GROUP BY a.run_id
"""


def _array(values: Sequence[str]) -> str:
    """The text form of an Array(String) parameter (what both adapters pass through), quoted."""
    quoted = (v.replace("\\", "\\\\").replace("'", "\\'") for v in values)
    return "[" + ",".join(f"'{v}'" for v in quoted) + "]"


class CompareRepository:
    """Reads for comparisons; the tenant of each read is passed explicitly."""

    def __init__(self, pool: asyncpg.Pool[Any], clickhouse: ClickHouse) -> None:
        self.pool = pool
        self._ch = clickhouse
        self._points = clickhouse.table(METRIC_POINTS.name)
        self._rollup = clickhouse.table(METRIC_ROLLUP.name)

    async def locate_runs(
        self, tenant_id: str, run_ids: Sequence[str], shared: dict[str, str]
    ) -> list[asyncpg.Record]:
        """(tenant_id, run_id, experiment_id) of the active runs among `run_ids` in the tenant or
        in a shared experiment (experiment id -> owner tenant)."""
        return await self.pool.fetch(
            "SELECT tenant_id, run_id, experiment_id FROM runs WHERE run_id = ANY($1::text[])"
            " AND lifecycle_stage = 'active' AND (tenant_id = $2"
            " OR (tenant_id, experiment_id) IN (SELECT * FROM unnest($3::text[], $4::text[])))",
            list(run_ids),
            tenant_id,
            list(shared.values()),
            list(shared),
        )

    async def experiment_exists(self, tenant_id: str, experiment_id: str) -> bool:
        """Whether the tenant holds the experiment."""
        found = await self.pool.fetchval(
            "SELECT 1 FROM experiments WHERE tenant_id = $1 AND experiment_id = $2", tenant_id, experiment_id
        )
        return found is not None

    async def experiment_run_ids(self, tenant_id: str, experiment_id: str, limit: int) -> list[str]:
        """The experiment's active runs, newest first."""
        rows = await self.pool.fetch(
            "SELECT run_id FROM runs WHERE tenant_id = $1 AND experiment_id = $2 AND lifecycle_stage = 'active'"
            " ORDER BY start_time DESC, run_id LIMIT $3",
            tenant_id,
            experiment_id,
            limit,
        )
        return [r["run_id"] for r in rows]

    async def values(self, tenant_id: str, run_ids: Sequence[str], entity: str) -> dict[str, dict[str, str]]:
        """run id -> {key: value} of the runs' params (entity 'params') or tags ('tags')."""
        table = {"params": "params", "tags": "tags"}[entity]
        rows = await self.pool.fetch(
            f"SELECT run_id, key, value FROM {table} WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
            tenant_id,
            list(run_ids),
        )
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r["run_id"], {})[r["key"]] = r["value"]
        return out

    async def runs(self, tenant_id: str, run_ids: Sequence[str], *, model_sizes: bool) -> dict[str, RunData]:
        """The runs with their params and latest metrics (and model sizes when asked)."""
        ids = list(run_ids)
        infos = await self.pool.fetch(
            "SELECT run_id, experiment_id, name, status, start_time, end_time FROM runs"
            " WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
            tenant_id,
            ids,
        )
        params = await self.values(tenant_id, ids, "params")
        metrics: dict[str, dict[str, float]] = {}
        for r in await self.pool.fetch(
            "SELECT run_id, key, value FROM latest_metrics WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
            tenant_id,
            ids,
        ):
            metrics.setdefault(r["run_id"], {})[r["key"]] = r["value"]
        sizes: dict[str, int] = {}
        if model_sizes:
            sizes = {r["run_id"]: int(r["size"]) for r in await self.pool.fetch(_MODEL_SIZES, tenant_id, ids)}
        return {
            r["run_id"]: RunData(
                run_id=r["run_id"],
                experiment_id=r["experiment_id"],
                name=r["name"],
                status=r["status"],
                start_time=r["start_time"],
                end_time=r["end_time"],
                params=params.get(r["run_id"], {}),
                metrics=metrics.get(r["run_id"], {}),
                model_size_bytes=sizes.get(r["run_id"]),
            )
            for r in infos
        }

    async def system_series(self, tenant_id: str, run_ids: Sequence[str]) -> dict[str, dict[str, SeriesStat]]:
        """run id -> {system/* key: min, max, mean, count over its finite points}."""
        sql = (
            "SELECT run_id, key, min(value) AS lo, max(value) AS hi, avg(value) AS mean, count() AS n"
            f" FROM {self._points} WHERE tenant_id = {{tenant:String}} AND run_id IN {{runs:Array(String)}}"
            " AND startsWith(key, 'system/') AND isFinite(value) GROUP BY run_id, key"
        )
        return await self._stats(sql, {"tenant": tenant_id, "runs": _array(run_ids)})

    async def extremes(
        self, tenant_id: str, run_ids: Sequence[str], keys: Sequence[str]
    ) -> dict[str, dict[str, SeriesStat]]:
        """run id -> {key: min and max over the run's finite points} (from the rollup; mean unknown)."""
        if not keys:
            return {}
        sql = (
            "SELECT run_id, key, min(min_value) AS lo, max(max_value) AS hi, nan AS mean, toUInt64(0) AS n"
            f" FROM {self._rollup} WHERE tenant_id = {{tenant:String}} AND run_id IN {{runs:Array(String)}}"
            " AND key IN {keys:Array(String)} GROUP BY run_id, key"
        )
        return await self._stats(sql, {"tenant": tenant_id, "runs": _array(run_ids), "keys": _array(keys)})

    async def _stats(self, sql: str, params: dict[str, Any]) -> dict[str, dict[str, SeriesStat]]:
        table = await asyncio.to_thread(self._ch.query_arrow, sql, params)
        out: dict[str, dict[str, SeriesStat]] = {}
        for row in table.to_pylist():
            out.setdefault(row["run_id"], {})[row["key"]] = SeriesStat(
                float(row["lo"]), float(row["hi"]), float(row["mean"]), int(row["n"])
            )
        return out
