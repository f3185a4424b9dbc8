"""Experiment reads from Postgres, always scoped to the principal's tenant (or, for
experiments shared with it, to the owner tenant of exactly those experiments)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.api.experiments.schemas import Experiment, LifecycleFilter
from services.api.principal import Principal
from services.api.sql import Conditions

_COLUMNS = (
    "tenant_id, experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time"
)


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
        self._home = principal.tenant_id
        self._tenant_id = principal.tenant_id

    def bound_to(self, tenant_id: str) -> ExperimentRepository:
        """The same reads over another tenant's rows (an experiment shared with the caller's)."""
        bound = copy.copy(self)
        bound._tenant_id = tenant_id
        return bound

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
        self,
        filters: ExperimentFilters,
        after: tuple[int, str] | None,
        limit: int,
        readable: frozenset[str] | None = None,
        shared: dict[str, str] | None = None,
    ) -> list[Experiment]:
        """Experiments by (creation_time DESC, experiment_id), after a keyset position: the tenant's
        (only `readable` ones unless None) and the `shared` ones (id -> owner tenant) it lacks."""
        where = Conditions()
        tenant = where.param(self._home)
        own = f"tenant_id = {tenant}"
        if readable is not None:
            own += f" AND experiment_id = ANY({where.param(sorted(readable))}::text[])"
        if shared:
            owners, ids = where.param(list(shared.values())), where.param(list(shared))
            where.add(
                f"(({own}) OR ((tenant_id, experiment_id) IN (SELECT * FROM unnest({owners}::text[], {ids}::text[]))"
                f" AND NOT EXISTS (SELECT 1 FROM experiments o WHERE o.tenant_id = {tenant}"
                " AND o.experiment_id = experiments.experiment_id)))"
            )
        else:
            where.add(own)
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
            "SELECT t.tenant_id, t.experiment_id, t.key, t.value FROM experiment_tags t"
            " JOIN unnest($1::text[], $2::text[]) AS p(tenant_id, experiment_id)"
            " ON t.tenant_id = p.tenant_id AND t.experiment_id = p.experiment_id",
            [r["tenant_id"] for r in rows],
            [r["experiment_id"] for r in rows],
        )
        tags: dict[tuple[str, str], dict[str, str]] = {}
        for t in tag_rows:
            tags.setdefault((t["tenant_id"], t["experiment_id"]), {})[t["key"]] = t["value"]
        experiments = []
        for r in rows:
            fields = dict(r)
            owner = fields.pop("tenant_id")
            experiments.append(
                Experiment(
                    **fields,
                    tags=tags.get((owner, r["experiment_id"]), {}),
                    shared_from=None if owner == self._home else owner,
                )
            )
        return experiments
