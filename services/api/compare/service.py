"""What the comparison routes do: resolve runs and groups the caller may read, read their
data, and hand it to the pure computations of runledger.compare."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from runledger.compare.fairness import fairness
from runledger.compare.importance import hyperparameter_importance
from runledger.compare.model import RunData
from runledger.compare.performance import Entity, default_metrics, performance
from runledger.compare.resources import resources
from runledger.compare.stability import stability
from services.api.access import Access
from services.api.compare.repository import CompareRepository
from services.api.compare.schemas import (
    CompareRequest,
    CompareResponse,
    EntityInfo,
    ImportanceResponse,
    MetricImportance,
)
from services.api.errors import InvalidParameter, NotFound
from services.api.mlflow import search, search_repository

MAX_RUNS = 2_000  # runs of one comparison, all groups together
MAX_ENTITIES = 200
MAX_IMPORTANCE_RUNS = 5_000
DEFAULT_IMPORTANCE_METRICS = 5


class CompareService:
    """Comparisons and hyperparameter importance for one caller, independent of HTTP."""

    def __init__(self, repository: CompareRepository, access: Access) -> None:
        self._repo = repository
        self._access = access

    # ------------------------------------------------------------------ resolving

    async def _experiment_tenant(self, experiment_id: str) -> str:
        """The tenant holding a readable experiment (own first, then shared), else NotFound."""
        own = await self._repo.experiment_exists(self._access.tenant_id, experiment_id)
        return self._access.locate(own, experiment_id, f"experiment {experiment_id!r}").tenant_id

    async def _search(
        self, experiment_id: str, filter_string: str | None, what: str
    ) -> tuple[str, list[str]]:
        tenant = await self._experiment_tenant(experiment_id)
        if not filter_string:
            return tenant, await self._repo.experiment_run_ids(tenant, experiment_id, MAX_RUNS + 1)
        try:
            conditions = search.parse_filter(filter_string)
        except InvalidParameter as exc:
            raise InvalidParameter(f"{what}.filter: {exc}") from None
        ids: list[str] = []
        token: str | None = None
        while len(ids) <= MAX_RUNS:
            page, token = await search_repository.search_run_ids(
                self._repo.pool, tenant, [experiment_id], conditions, [], "ACTIVE_ONLY", 1_000, token
            )
            ids.extend(page)
            if token is None:
                break
        return tenant, ids

    async def _locate(self, run_ids: Sequence[str]) -> dict[str, str]:
        """run id -> the tenant holding it, for runs the caller may read; NotFound for any other."""
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return {}
        shared = self._access.shared()
        rows = await self._repo.locate_runs(self._access.tenant_id, wanted, shared)
        own = {r["run_id"]: r for r in rows if r["tenant_id"] == self._access.tenant_id}
        other = {r["run_id"]: r for r in rows if r["tenant_id"] != self._access.tenant_id}
        found: dict[str, str] = {}
        for run_id in wanted:
            if run_id in own:
                if self._access.can_read(own[run_id]["experiment_id"]):
                    found[run_id] = self._access.tenant_id
            elif run_id in other and shared.get(other[run_id]["experiment_id"]) == other[run_id]["tenant_id"]:
                found[run_id] = other[run_id]["tenant_id"]
            if run_id not in found:
                raise NotFound(f"run {run_id!r} does not exist")
        return found

    async def _entities(self, body: CompareRequest) -> tuple[list[Entity], dict[str, str]]:
        """The compared entities and run id -> tenant of every run in them."""
        explicit = list(body.runs) + [r for g in body.groups for r in g.run_ids]
        tenants = await self._locate(explicit)
        entities = [Entity(r, "run", (r,)) for r in dict.fromkeys(body.runs)]
        for i, group in enumerate(body.groups):
            ids = list(dict.fromkeys(group.run_ids))
            if group.filter:
                experiment_id = group.experiment_id or body.experiment_id
                if not experiment_id:
                    raise InvalidParameter(f"groups[{i}]: a filter needs an experiment_id")
                tenant, found = await self._search(experiment_id, group.filter, f"groups[{i}]")
                tenants.update(dict.fromkeys(found, tenant))
                ids += [r for r in found if r not in ids]
            elif group.experiment_id and not ids:
                tenant, found = await self._search(group.experiment_id, None, f"groups[{i}]")
                tenants.update(dict.fromkeys(found, tenant))
                ids = found
            if not ids:
                raise InvalidParameter(f"groups[{i}] ({group.name}): no run matches")
            entities.append(Entity(group.name, "group", tuple(ids)))
        if body.experiment_id and (body.group_by or not (body.runs or body.groups)):
            tenant, found = await self._search(body.experiment_id, body.filter, "request")
            tenants.update(dict.fromkeys(found, tenant))
            if body.group_by:
                entities += await self._grouped(tenant, found, body.group_by)
            else:
                entities += [Entity(r, "run", (r,)) for r in found]
        elif body.group_by or body.filter:
            raise InvalidParameter("group_by and filter need experiment_id")
        if not entities:
            raise InvalidParameter("nothing to compare: give runs, groups, or experiment_id")
        names = [e.name for e in entities]
        if len(set(names)) != len(names):
            raise InvalidParameter("entity names must be unique (a group named like a run, or a run twice)")
        if len(entities) > MAX_ENTITIES:
            raise InvalidParameter(f"at most {MAX_ENTITIES} columns: group the runs (group_by)")
        if len(tenants) > MAX_RUNS:
            raise InvalidParameter(f"at most {MAX_RUNS} runs in one comparison")
        if body.baseline is not None and body.baseline not in names:
            raise InvalidParameter(f"baseline {body.baseline!r} is not a compared run or group")
        return entities, tenants

    async def _grouped(self, tenant: str, run_ids: list[str], group_by: list[str]) -> list[Entity]:
        """The runs grouped by their values of `group_by` (params.<key> / tags.<key>)."""
        keys: list[tuple[str, str]] = []
        for key in group_by:
            kind, _, name = key.partition(".")
            kind = {"param": "params", "tag": "tags"}.get(kind, kind)
            if kind not in ("params", "tags") or not name:
                raise InvalidParameter(f"group_by {key!r}: use params.<key> or tags.<key>")
            keys.append((kind, name))
        values = {kind: await self._repo.values(tenant, run_ids, kind) for kind in {k for k, _ in keys}}
        groups: dict[str, list[str]] = {}
        for run_id in run_ids:
            label = ", ".join(
                f"{name}={values[kind].get(run_id, {}).get(name, '(none)')}" for kind, name in keys
            )
            groups.setdefault(label, []).append(run_id)
        return [Entity(label, "group", tuple(ids)) for label, ids in sorted(groups.items())]

    # ------------------------------------------------------------------ compare

    async def compare(self, body: CompareRequest) -> CompareResponse:
        """The requested sections over the requested runs and groups."""
        self._access.require_listing()
        entities, tenants = await self._entities(body)
        sections = set(body.sections)
        by_tenant: dict[str, list[str]] = {}
        for run_id, tenant in tenants.items():
            by_tenant.setdefault(tenant, []).append(run_id)
        runs: dict[str, RunData] = {}
        for tenant, ids in by_tenant.items():
            runs.update(await self._repo.runs(tenant, ids, model_sizes="resources" in sections))
        ordered = [runs[r] for e in entities for r in e.run_ids if r in runs]
        ordered = list({r.run_id: r for r in ordered}.values())
        metrics = list(body.metrics) if body.metrics else default_metrics(ordered)
        answer = CompareResponse(
            entities=[EntityInfo(name=e.name, kind=e.kind, run_ids=list(e.run_ids)) for e in entities]
        )
        if "performance" in sections or "resources" in sections:
            for tenant, ids in by_tenant.items():
                series = {} if "resources" not in sections else await self._repo.system_series(tenant, ids)
                if "performance" in sections:
                    single = [r for r in ids if any(e.kind == "run" and e.run_ids[0] == r for e in entities)]
                    for run_id, stats in (await self._repo.extremes(tenant, single, metrics)).items():
                        series.setdefault(run_id, {}).update(stats)
                for run_id, stats in series.items():
                    if run_id in runs:
                        runs[run_id] = replace(runs[run_id], series={**runs[run_id].series, **stats})
        if "performance" in sections:
            answer.performance = performance(entities, runs, metrics, body.directions, body.baseline)
        if "resources" in sections:
            answer.resources = resources(entities, runs)
        ordered = [runs[r.run_id] for r in ordered]
        if "stability" in sections:
            answer.stability = stability(
                ordered,
                metrics,
                seed_params=body.seed_params,
                ignore_params=body.ignore_params,
                confidence=body.confidence,
                cv_threshold=body.cv_threshold,
            )
        if "fairness" in sections:
            answer.fairness = fairness(ordered)
        return answer

    # ------------------------------------------------------------------ importance

    async def importance(
        self,
        experiment_id: str,
        metrics: list[str],
        *,
        filter_string: str | None,
        exclude: list[str],
        model: str,
        n_repeats: int,
    ) -> ImportanceResponse:
        """Ranked hyperparameter importances of the experiment's runs for each metric."""
        tenant = await self._experiment_tenant(experiment_id)
        _, ids = await self._search(experiment_id, filter_string, "request")
        ids = ids[:MAX_IMPORTANCE_RUNS]
        runs = list((await self._repo.runs(tenant, ids, model_sizes=False)).values())
        if not metrics:
            counts: dict[str, int] = {}
            for r in runs:
                for key in default_metrics([r], limit=10_000):
                    counts[key] = counts.get(key, 0) + 1
            metrics = sorted(counts, key=lambda k: (-counts[k], k))[:DEFAULT_IMPORTANCE_METRICS]
        results = []
        for metric in metrics:
            having = [r for r in runs if metric in r.metrics]
            result: dict[str, Any] = await asyncio.to_thread(
                hyperparameter_importance,
                [r.params for r in having],
                [r.metrics[metric] for r in having],
                exclude=exclude,
                model=model,  # type: ignore[arg-type]
                n_repeats=n_repeats,
            )
            results.append(MetricImportance(metric=metric, result=result))
        return ImportanceResponse(experiment_id=experiment_id, metrics=results)
