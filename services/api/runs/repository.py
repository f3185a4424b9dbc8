"""Run reads from Postgres, always scoped to the principal's tenant (or, for runs of
experiments shared with it, to the owner tenant of exactly those experiments)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.api.principal import Principal
from services.api.runs.filters import KeyValueFilter
from services.api.runs.schemas import LatestMetric, Run, RunInfo, RunLifecycleFilter
from services.api.serialization import json_float
from services.api.sql import Conditions

_COLUMNS = (
    "run_id, experiment_id, parent_run_id, name, user_id, status, start_time, end_time, lifecycle_stage"
)


@dataclass(frozen=True, slots=True)
class RunFilters:
    """What GET /runs filters on (all AND-ed)."""

    experiment_ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    tags: list[KeyValueFilter] = field(default_factory=list)
    params: list[KeyValueFilter] = field(default_factory=list)
    lifecycle: RunLifecycleFilter = RunLifecycleFilter.ACTIVE


def _key_value_exists(where: Conditions, table: str, kv: KeyValueFilter) -> str:
    """EXISTS over params/tags for one filter (table is one of two literals, never user text)."""
    clause = (
        f"EXISTS (SELECT 1 FROM {table} x WHERE x.tenant_id = r.tenant_id AND x.run_id = r.run_id"
        f" AND x.key = {where.param(kv.key)}"
    )
    if kv.value is not None:
        clause += f" AND x.value = {where.param(kv.value)}"
    return clause + ")"


class RunRepository:
    """Reads runs of one tenant; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], principal: Principal) -> None:
        """Bind the repository to the caller's tenant."""
        self._pool = pool
        self._tenant_id = principal.tenant_id

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The connection pool (for reads that name their tenant explicitly)."""
        return self._pool

    def bound_to(self, tenant_id: str) -> RunRepository:
        """The same reads over another tenant's rows (a run of an experiment shared with the caller's)."""
        bound = copy.copy(self)
        bound._tenant_id = tenant_id
        return bound

    async def locate(self, run_id: str, shared: dict[str, str]) -> tuple[str, RunInfo] | None:
        """(tenant, run) of `run_id` in the bound tenant, else in a `shared` experiment (id -> owner)."""
        row = await self._pool.fetchrow(
            f"SELECT tenant_id, {_COLUMNS} FROM runs WHERE run_id = $1 AND (tenant_id = $2"
            " OR (tenant_id, experiment_id) IN (SELECT * FROM unnest($3::text[], $4::text[])))"
            " ORDER BY tenant_id = $2 DESC LIMIT 1",
            run_id,
            self._tenant_id,
            list(shared.values()),
            list(shared),
        )
        if row is None:
            return None
        fields = dict(row)
        return fields.pop("tenant_id"), RunInfo(**fields)

    async def get_info(self, run_id: str) -> RunInfo | None:
        """The run's own fields, or None."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = $2", self._tenant_id, run_id
        )
        return None if row is None else RunInfo(**dict(row))

    async def get(self, run_id: str) -> Run | None:
        """The run with params, tags and latest metrics, or None."""
        info = await self.get_info(run_id)
        if info is None:
            return None
        return (await self._with_data([(self._tenant_id, info)]))[0]

    async def page(
        self,
        filters: RunFilters,
        after: tuple[int, str] | None,
        limit: int,
        readable: frozenset[str] | None = None,
        shared: dict[str, str] | None = None,
    ) -> list[Run]:
        """Runs by (start_time DESC, run_id), after a keyset position, with their data: the
        tenant's (of `readable` experiments unless None) and those of `shared` experiments."""
        where = Conditions()
        own = f"r.tenant_id = {where.param(self._tenant_id)}"
        if readable is not None:
            own += f" AND r.experiment_id = ANY({where.param(sorted(readable))}::text[])"
        if shared:
            owners, ids = where.param(list(shared.values())), where.param(list(shared))
            where.add(
                f"(({own}) OR (r.tenant_id, r.experiment_id) IN"
                f" (SELECT * FROM unnest({owners}::text[], {ids}::text[])))"
            )
        else:
            where.add(own)
        if filters.experiment_ids:
            where.add(f"r.experiment_id = ANY({where.param(filters.experiment_ids)}::text[])")
        if filters.statuses:
            where.add(f"r.status = ANY({where.param(filters.statuses)}::text[])")
        if filters.parent_run_id is not None:
            where.add(f"r.parent_run_id = {where.param(filters.parent_run_id)}")
        if filters.lifecycle is not RunLifecycleFilter.ALL:
            where.add(f"r.lifecycle_stage = {where.param(filters.lifecycle.value)}")
        for kv in filters.tags:
            where.add(_key_value_exists(where, "tags", kv))
        for kv in filters.params:
            where.add(_key_value_exists(where, "params", kv))
        if after is not None:
            start, run_id = after
            s, r = where.param(start), where.param(run_id)
            where.add(f"(r.start_time < {s} OR (r.start_time = {s} AND r.run_id > {r}))")
        rows = await self._pool.fetch(
            f"SELECT r.tenant_id, {_COLUMNS} FROM runs r WHERE {where.sql}"
            f" ORDER BY r.start_time DESC, r.run_id LIMIT {where.param(limit)}",
            *where.args,
        )
        infos = []
        for row in rows:
            fields = dict(row)
            infos.append((fields.pop("tenant_id"), RunInfo(**fields)))
        return await self._with_data(infos)

    async def params(self, run_id: str, keys: list[str]) -> dict[str, str]:
        """The values already logged for these param keys."""
        rows = await self._pool.fetch(
            "SELECT key, value FROM params WHERE tenant_id = $1 AND run_id = $2 AND key = ANY($3::text[])",
            self._tenant_id,
            run_id,
            keys,
        )
        return {r["key"]: r["value"] for r in rows}

    async def has_tag(self, run_id: str, key: str) -> bool:
        """Whether the run has a tag `key`."""
        found = await self._pool.fetchval(
            "SELECT 1 FROM tags WHERE tenant_id = $1 AND run_id = $2 AND key = $3",
            self._tenant_id,
            run_id,
            key,
        )
        return found is not None

    async def step_extent(self, run_id: str, key: str) -> tuple[int, int] | None:
        """First and last step of a series, kept by the projector; None when it has no points.

        From Postgres (one indexed row) rather than the point store: planning a history
        read then costs no ClickHouse scan (~10 ms saved per downsampled read).
        """
        row = await self._pool.fetchrow(
            "SELECT first_step, step FROM latest_metrics WHERE tenant_id = $1 AND run_id = $2 AND key = $3",
            self._tenant_id,
            run_id,
            key,
        )
        return None if row is None else (row["first_step"], row["step"])

    async def latest_metrics(self, run_id: str) -> dict[str, LatestMetric]:
        """Latest point of each metric of a run, by key."""
        rows = await self._pool.fetch(
            "SELECT key, value, step, timestamp FROM latest_metrics WHERE tenant_id = $1 AND run_id = $2"
            " ORDER BY key",
            self._tenant_id,
            run_id,
        )
        return {
            r["key"]: LatestMetric(value=r["value"], step=r["step"], timestamp=r["timestamp"]) for r in rows
        }

    async def _with_data(self, infos: list[tuple[str, RunInfo]]) -> list[Run]:
        """Attach params, tags and latest metrics: three queries per page, not per run."""
        if not infos:
            return []
        tenants = [t for t, _ in infos]
        ids = [i.run_id for _, i in infos]
        params: dict[tuple[str, str], dict[str, str]] = {}
        tags: dict[tuple[str, str], dict[str, str]] = {}
        metrics: dict[tuple[str, str], dict[str, LatestMetric]] = {}
        pairs = "unnest($1::text[], $2::text[]) AS p(tenant_id, run_id)"
        async with self._pool.acquire() as conn:
            for table, target in (("params", params), ("tags", tags)):
                for row in await conn.fetch(
                    f"SELECT x.tenant_id, x.run_id, x.key, x.value FROM {table} x JOIN {pairs}"
                    " ON x.tenant_id = p.tenant_id AND x.run_id = p.run_id",
                    tenants,
                    ids,
                ):
                    target.setdefault((row["tenant_id"], row["run_id"]), {})[row["key"]] = row["value"]
            for row in await conn.fetch(
                "SELECT x.tenant_id, x.run_id, x.key, x.value, x.step, x.timestamp FROM latest_metrics x"
                f" JOIN {pairs} ON x.tenant_id = p.tenant_id AND x.run_id = p.run_id",
                tenants,
                ids,
            ):
                metrics.setdefault((row["tenant_id"], row["run_id"]), {})[row["key"]] = LatestMetric(
                    value=row["value"], step=row["step"], timestamp=row["timestamp"]
                )
        return [
            Run(
                info=i,
                params=params.get((t, i.run_id), {}),
                tags=tags.get((t, i.run_id), {}),
                metrics=metrics.get((t, i.run_id), {}),
            )
            for t, i in infos
        ]


@dataclass(slots=True)
class RunColumns:
    """Runs read as columns: one list per field, one entry per run (same order)."""

    tenant_id: list[str] = field(default_factory=list)
    run_id: list[str] = field(default_factory=list)
    experiment_id: list[str] = field(default_factory=list)
    parent_run_id: list[str | None] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    start_time: list[int] = field(default_factory=list)
    end_time: list[int | None] = field(default_factory=list)
    lifecycle_stage: list[str] = field(default_factory=list)
    params: dict[str, list[str | None]] = field(default_factory=dict)
    tags: dict[str, list[str | None]] = field(default_factory=dict)
    metrics: dict[str, list[float | str | None]] = field(default_factory=dict)
    truncated: bool = False  # more runs matched than the limit


async def experiment_exists(pool: asyncpg.Pool[Any], tenant_id: str, experiment_id: str) -> bool:
    """Whether the tenant holds the experiment (any lifecycle stage)."""
    found = await pool.fetchval(
        "SELECT 1 FROM experiments WHERE tenant_id = $1 AND experiment_id = $2", tenant_id, experiment_id
    )
    return found is not None


async def experiment_ids(pool: asyncpg.Pool[Any], tenant_id: str) -> list[str]:
    """Every experiment id of the tenant (any lifecycle stage)."""
    rows = await pool.fetch(
        "SELECT experiment_id FROM experiments WHERE tenant_id = $1 ORDER BY experiment_id", tenant_id
    )
    return [r["experiment_id"] for r in rows]


async def run_columns(
    pool: asyncpg.Pool[Any],
    scopes: list[tuple[str, str]],
    lifecycle: RunLifecycleFilter,
    runs: list[tuple[str, str]] | None,
    limit: int,
) -> RunColumns:
    """The runs of the (tenant, experiment) `scopes` (only the (tenant, run) `runs` unless None),
    newest start_time first then run_id, as columns with every param, tag and latest metric
    value: four queries whatever the number of runs."""
    out = RunColumns()
    if not scopes or runs == []:
        return out
    where = Conditions()
    if len(scopes) == 1:  # plain equalities: the index returns the rows in start_time order
        where.add(f"tenant_id = {where.param(scopes[0][0])}")
        where.add(f"experiment_id = {where.param(scopes[0][1])}")
    else:
        tenants, experiments = where.param([t for t, _ in scopes]), where.param([e for _, e in scopes])
        where.add(
            f"(tenant_id, experiment_id) IN (SELECT * FROM unnest({tenants}::text[], {experiments}::text[]))"
        )
    if lifecycle is not RunLifecycleFilter.ALL:
        where.add(f"lifecycle_stage = {where.param(lifecycle.value)}")
    if runs is not None:
        tenants, ids = where.param([t for t, _ in runs]), where.param([r for _, r in runs])
        where.add(f"(tenant_id, run_id) IN (SELECT * FROM unnest({tenants}::text[], {ids}::text[]))")
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT tenant_id, {_COLUMNS} FROM runs WHERE {where.sql}"
            f" ORDER BY start_time DESC, run_id LIMIT {where.param(limit + 1)}",
            *where.args,
        )
        out.truncated = len(rows) > limit
        for row in rows[:limit]:
            out.tenant_id.append(row["tenant_id"])
            out.run_id.append(row["run_id"])
            out.experiment_id.append(row["experiment_id"])
            out.parent_run_id.append(row["parent_run_id"])
            out.name.append(row["name"])
            out.user_id.append(row["user_id"])
            out.status.append(row["status"])
            out.start_time.append(row["start_time"])
            out.end_time.append(row["end_time"])
            out.lifecycle_stage.append(row["lifecycle_stage"])
        if not out.run_id:
            return out
        index = {pair: i for i, pair in enumerate(zip(out.tenant_id, out.run_id, strict=True))}
        n = len(out.run_id)
        pairs = "unnest($1::text[], $2::text[]) AS p(tenant_id, run_id)"
        for table, target in (("params", out.params), ("tags", out.tags)):
            for row in await conn.fetch(
                f"SELECT x.tenant_id, x.run_id, x.key, x.value FROM {table} x JOIN {pairs}"
                " ON x.tenant_id = p.tenant_id AND x.run_id = p.run_id",
                out.tenant_id,
                out.run_id,
            ):
                column = target.get(row["key"])
                if column is None:
                    column = target[row["key"]] = [None] * n
                column[index[row["tenant_id"], row["run_id"]]] = row["value"]
        for row in await conn.fetch(
            "SELECT x.tenant_id, x.run_id, x.key, x.value FROM latest_metrics x"
            f" JOIN {pairs} ON x.tenant_id = p.tenant_id AND x.run_id = p.run_id",
            out.tenant_id,
            out.run_id,
        ):
            metric = out.metrics.get(row["key"])
            if metric is None:
                metric = out.metrics[row["key"]] = [None] * n
            metric[index[row["tenant_id"], row["run_id"]]] = json_float(row["value"])
    return out
