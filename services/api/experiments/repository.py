"""Experiment reads from Postgres, always scoped to the principal's tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from services.api.experiments.schemas import Experiment, LifecycleFilter
from services.api.principal import Principal
from services.api.sql import Conditions

_COLUMNS = "experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time"


@dataclass(frozen=True, slots=True)
class ExperimentFilters:
    """What GET /experiments filters on."""

    name_contains: str | None = None
    lifecycle: LifecycleFilter = LifecycleFilter.ACTIVE


class ExperimentRepository:
    """Reads experiments of one tenant; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], principal: Principal) -> None:
        """Bind the repository to the caller's tenant."""
        self._pool = pool
        self._tenant_id = principal.tenant_id

    async def get(self, experiment_id: str) -> Experiment | None:
        """One experiment with its tags, or None."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM experiments WHERE tenant_id = $1 AND experiment_id = $2",
            self._tenant_id,
            experiment_id,
        )
        if row is None:
            return None
        return (await self._with_tags([row]))[0]

    async def get_by_name(self, name: str) -> Experiment | None:
        """The experiment called `name`, or None."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM experiments WHERE tenant_id = $1 AND name = $2", self._tenant_id, name
        )
        if row is None:
            return None
        return (await self._with_tags([row]))[0]

    async def page(
        self, filters: ExperimentFilters, after: tuple[int, str] | None, limit: int
    ) -> list[Experiment]:
        """Experiments by (creation_time DESC, experiment_id), after a keyset position."""
        where = Conditions()
        where.add(f"tenant_id = {where.param(self._tenant_id)}")
        if filters.lifecycle is not LifecycleFilter.ALL:
            where.add(f"lifecycle_stage = {where.param(filters.lifecycle.value)}")
        if filters.name_contains:
            # strpos, not LIKE: the user's text needs no escaping of % and _.
            where.add(f"strpos(lower(name), lower({where.param(filters.name_contains)})) > 0")
        if after is not None:
            created, experiment_id = after
            c, i = where.param(created), where.param(experiment_id)
            where.add(f"(creation_time < {c} OR (creation_time = {c} AND experiment_id > {i}))")
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM experiments WHERE {where.sql}"
            f" ORDER BY creation_time DESC, experiment_id LIMIT {where.param(limit)}",
            *where.args,
        )
        return await self._with_tags(rows)

    async def _with_tags(self, rows: list[asyncpg.Record]) -> list[Experiment]:
        if not rows:
            return []
        tag_rows = await self._pool.fetch(
            "SELECT experiment_id, key, value FROM experiment_tags"
            " WHERE tenant_id = $1 AND experiment_id = ANY($2::text[])",
            self._tenant_id,
            [r["experiment_id"] for r in rows],
        )
        tags: dict[str, dict[str, str]] = {}
        for t in tag_rows:
            tags.setdefault(t["experiment_id"], {})[t["key"]] = t["value"]
        return [Experiment(**dict(r), tags=tags.get(r["experiment_id"], {})) for r in rows]
