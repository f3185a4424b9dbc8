"""Run logic: reads through the repositories, writes as events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from runledger.events.codec import DEFAULT_EXPERIMENT_ID, experiment_id_for, metric_columns, new_run_id
from runledger.events.models import EventType, RunStatus
from services.api.access import Access, readable_run
from services.api.errors import AlreadyExists, InvalidParameter, NotFound, PermissionDenied
from services.api.experiments.repository import ExperimentRepository
from services.api.mlflow import search, search_repository
from services.api.pagination import fingerprint, split_page, time_id_position
from services.api.principal import Principal
from services.api.publisher import OutgoingEvent
from services.api.runs.naming import generate_run_name
from services.api.runs.repository import (
    RunFilters,
    RunRepository,
    experiment_exists,
    run_columns,
)
from services.api.runs.repository import experiment_ids as experiment_ids_of
from services.api.runs.schemas import (
    MetricPoint,
    Run,
    RunCreate,
    RunInfo,
    RunLifecycleFilter,
    RunList,
    RunTable,
)
from services.api.writes import EventWriter, WriteReceipt, build_event

# Points per MetricsLogged event: ~50 bytes each keeps an event well under Kafka's 1 MB.
METRIC_POINTS_PER_EVENT = 10_000
_TERMINAL = {RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED}
_VIEW = {
    RunLifecycleFilter.ACTIVE: "ACTIVE_ONLY",
    RunLifecycleFilter.DELETED: "DELETED_ONLY",
    RunLifecycleFilter.ALL: "ALL",
}


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def metric_payloads(points: Sequence[MetricPoint], default_timestamp: int) -> list[dict[str, Any]]:
    """Columnar MetricsLogged payloads for a list of points, METRIC_POINTS_PER_EVENT per payload."""
    payloads: list[dict[str, Any]] = []
    for start in range(0, len(points), METRIC_POINTS_PER_EVENT):
        chunk = points[start : start + METRIC_POINTS_PER_EVENT]
        index: dict[str, int] = {}
        key_index = np.fromiter((index.setdefault(p.key, len(index)) for p in chunk), np.int32, len(chunk))
        values = np.fromiter((p.value for p in chunk), np.float64, len(chunk))
        steps = np.fromiter((p.step for p in chunk), np.int64, len(chunk))
        stamps = np.fromiter(
            (default_timestamp if p.timestamp is None else p.timestamp for p in chunk), np.int64, len(chunk)
        )
        payloads.append(metric_columns(list(index), key_index, values, steps, stamps))
    return payloads


class RunService:
    """What the run routes do, independent of HTTP."""

    def __init__(
        self,
        runs: RunRepository,
        experiments: ExperimentRepository,
        writer: EventWriter,
        principal: Principal,
    ) -> None:
        """Act for `principal` through its tenant-scoped repositories."""
        self._runs = runs
        self._experiments = experiments
        self._writer = writer
        self._principal = principal
        self._access = Access(principal)

    # ------------------------------------------------------------------ reads

    async def page(self, filters: RunFilters, page_size: int, page_token: str | None) -> RunList:
        """One page of runs and the token of the next."""
        scope = fingerprint(
            "runs",
            filters.experiment_ids,
            filters.statuses,
            filters.parent_run_id,
            [(f.key, f.value) for f in filters.tags],
            [(f.key, f.value) for f in filters.params],
            filters.lifecycle.value,
        )
        self._access.require_listing()
        # Runs of a shared experiment are listed when the search names that experiment.
        shared = {e: t for e, t in self._access.shared().items() if e in filters.experiment_ids}
        runs = await self._runs.page(
            filters,
            time_id_position(page_token, scope),
            page_size + 1,
            readable=self._access.readable(),
            shared=shared,
        )
        page, next_token = split_page(runs, page_size, lambda r: [r.info.start_time, r.info.run_id], scope)
        return RunList(runs=page, next_page_token=next_token)

    async def table(
        self, experiment_ids: list[str], filter_string: str | None, lifecycle: RunLifecycleFilter, limit: int
    ) -> RunTable:
        """The runs of these experiments (default: every experiment of the caller's tenant it may
        read) matching the run-search filter, as columns, at most `limit`.

        A named experiment must be readable: the caller's tenant's, or one shared with it; any
        other answers NotFound exactly like a missing one. A malformed filter is InvalidParameter.
        """
        self._access.require_listing()
        pool = self._runs.pool
        tenant = self._access.tenant_id
        own: list[str] = []
        shared: dict[str, str] = {}
        for experiment_id in dict.fromkeys(experiment_ids):
            exists = await experiment_exists(pool, tenant, experiment_id)
            located = self._access.locate(exists, experiment_id, f"experiment {experiment_id!r}")
            if located.shared:
                shared[experiment_id] = located.tenant_id
            else:
                own.append(experiment_id)
        if not experiment_ids:
            readable = self._access.readable()
            own = [e for e in await experiment_ids_of(pool, tenant) if readable is None or e in readable]
        scopes = [(tenant, e) for e in own] + [(owner, e) for e, owner in shared.items()]
        runs: list[tuple[str, str]] | None = None
        if filter_string is not None and filter_string.strip():
            try:
                conditions = search.parse_filter(filter_string)
            except InvalidParameter as exc:
                raise InvalidParameter(f"filter: {exc}") from None
            runs = []
            token: str | None = None
            while scopes and len(runs) <= limit:
                page, token = await search_repository.search_runs(
                    pool,
                    tenant,
                    own,
                    conditions,
                    [],
                    _VIEW[lifecycle],
                    min(search_repository.MAX_RESULTS, limit + 1 - len(runs)),
                    token,
                    shared=shared,
                )
                runs.extend(page)
                if token is None:
                    break
        columns = await run_columns(pool, scopes, lifecycle, runs, limit)
        return RunTable(
            experiment_ids=[e for _, e in scopes],
            count=len(columns.run_id),
            truncated=columns.truncated,
            runs={
                "run_id": columns.run_id,
                "experiment_id": columns.experiment_id,
                "parent_run_id": columns.parent_run_id,
                "name": columns.name,
                "user_id": columns.user_id,
                "status": columns.status,
                "start_time": columns.start_time,
                "end_time": columns.end_time,
                "lifecycle_stage": columns.lifecycle_stage,
            },
            params=columns.params,
            tags=columns.tags,
            metrics=columns.metrics,
        )

    async def get(self, run_id: str) -> Run:
        """The run with its data (the caller's, or one of a shared experiment), or NotFound."""
        located, _ = await readable_run(self._access, self._runs, run_id)
        run = await self._runs.bound_to(located.tenant_id).get(run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} does not exist")
        return run

    # ------------------------------------------------------------------ writes

    async def create(self, body: RunCreate) -> tuple[str, WriteReceipt, Run | None]:
        """Emit RunStarted (after ExperimentCreated when the experiment is named and new)."""
        events: list[OutgoingEvent] = []
        if body.experiment_name is not None:
            experiment_id = await self._experiment_for_name(body.experiment_name, events)
        else:
            experiment_id = body.experiment_id or DEFAULT_EXPERIMENT_ID
            # Every tenant has "0" (the projector creates it with the tenant's first event).
            if experiment_id != DEFAULT_EXPERIMENT_ID:
                await self._active_experiment(experiment_id)
            elif not self._access.can_write(experiment_id):
                raise PermissionDenied(f"the caller may not write experiment {experiment_id}")
        if body.parent_run_id is not None:
            parent, _ = await readable_run(self._access, self._runs, body.parent_run_id)
            if parent.shared:
                raise NotFound(f"parent run {body.parent_run_id!r} does not exist")
        self._check_tagging(body.tags)
        run_id = new_run_id()
        payload: dict[str, Any] = {
            "name": body.name or generate_run_name(),
            "parent_run_id": body.parent_run_id,
            "start_time": body.start_time if body.start_time is not None else now_ms(),
            "user_id": self._principal.user_id,
            "tags": body.tags,
        }
        events.append(
            build_event(
                self._principal, EventType.RUN_STARTED, payload, run_id=run_id, experiment_id=experiment_id
            )
        )
        receipt = await self._writer.write(self._principal, events)
        return run_id, receipt, (await self._runs.get(run_id) if receipt.projected else None)

    async def log_params(self, run_id: str, params: dict[str, str]) -> WriteReceipt:
        """Emit ParamsLogged; a param already logged with another value is refused (immutable)."""
        info = await self._active_run(run_id)
        existing = await self._runs.params(run_id, list(params))
        for key, value in params.items():
            if key in existing and existing[key] != value:
                raise InvalidParameter(
                    f"param {key!r} of run {run_id} was already logged with value {existing[key]!r};"
                    f" params are immutable (attempted {value!r})"
                )
        return await self._write_run_event(info, EventType.PARAMS_LOGGED, {"params": params})

    async def log_metrics(
        self, run_id: str, points: Sequence[MetricPoint], *, wait: bool = True
    ) -> WriteReceipt:
        """Emit the points as columnar MetricsLogged events (in order, on the run's partition);
        `wait=False` answers at the broker's ack."""
        principal = self._principal
        # The quotas first: a write refused for them costs no lookup and no encoding.
        events_needed = -(-len(points) // METRIC_POINTS_PER_EVENT)
        await self._writer.admit(principal, events=events_needed, points=len(points))
        info = await self._active_run(run_id)

        def build() -> list[OutgoingEvent]:
            return [
                build_event(
                    principal, EventType.METRICS_LOGGED, p, run_id=run_id, experiment_id=info.experiment_id
                )
                for p in metric_payloads(points, now_ms())
            ]

        # Up to 100k points: encoding and validating them is CPU work, kept off the event loop.
        events = await asyncio.to_thread(build)
        return await self._writer.write(principal, events, points=len(points), wait=wait, admitted=True)

    async def set_tags(self, run_id: str, tags: dict[str, str]) -> WriteReceipt:
        """Emit TagsSet."""
        info = await self._active_run(run_id)
        return await self._write_run_event(info, EventType.TAGS_SET, {"tags": tags})

    async def delete_tag(self, run_id: str, key: str) -> WriteReceipt:
        """Emit TagsDeleted; NotFound when the run has no such tag."""
        info = await self._active_run(run_id)
        if not await self._runs.has_tag(run_id, key):
            raise NotFound(f"run {run_id} has no tag {key!r}")
        return await self._write_run_event(info, EventType.TAGS_DELETED, {"keys": [key]})

    async def set_status(self, run_id: str, status: RunStatus, end_time: int | None) -> WriteReceipt:
        """Emit StatusChanged; a terminal state without end_time ends now."""
        info = await self._active_run(run_id)
        if end_time is None and status in _TERMINAL:
            end_time = now_ms()
        payload = {"status": status.value, "end_time": end_time}
        return await self._write_run_event(info, EventType.STATUS_CHANGED, payload)

    async def delete(self, run_id: str) -> WriteReceipt:
        """Emit RunDeleted (a soft delete; deleting twice is harmless)."""
        info = await self._writable_run(run_id)
        return await self._write_run_event(info, EventType.RUN_DELETED, {})

    async def after_write(self, run_id: str, receipt: WriteReceipt) -> Run | None:
        """The run as reads see it after a write (None while the write is pending)."""
        return await self._runs.get(run_id) if receipt.projected else None

    # ------------------------------------------------------------------ helpers

    async def _write_run_event(self, info: RunInfo, type: EventType, payload: dict[str, Any]) -> WriteReceipt:
        event = build_event(
            self._principal, type, payload, run_id=info.run_id, experiment_id=info.experiment_id
        )
        return await self._writer.write(self._principal, [event])

    def _check_tagging(self, tags: dict[str, str]) -> None:
        """400 when the tenant's tagging policy rejects runs without these tags."""
        policy = self._principal.authorizer.snapshot.tagging.get(self._principal.tenant_id)
        if policy is None or not policy.reject:
            return
        problems = policy.violations(tags)
        if problems:
            raise InvalidParameter(
                f"the tenant's tagging policy rejects this run: {'; '.join(problems)}", details=problems
            )

    async def _writable_run(self, run_id: str) -> RunInfo:
        """The run, if the caller may write it: 404 when it may not read it, 403 when only read."""
        located, info = await readable_run(self._access, self._runs, run_id)
        self._access.require_write(located, f"run {run_id}")
        return info

    async def _active_run(self, run_id: str) -> RunInfo:
        info = await self._writable_run(run_id)
        if info.lifecycle_stage != "active":
            raise InvalidParameter(f"run {run_id} is deleted; it must be active to be written to")
        return info

    async def _active_experiment(self, experiment_id: str) -> None:
        experiment = await self._experiments.get(experiment_id)
        located = self._access.locate(experiment is not None, experiment_id, f"experiment {experiment_id!r}")
        self._access.require_write(located, f"experiment {experiment_id}")
        if experiment is None:
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        if experiment.lifecycle_stage != "active":
            raise InvalidParameter(f"experiment {experiment_id} is deleted; runs cannot start in it")

    async def _experiment_for_name(self, name: str, events: list[OutgoingEvent]) -> str:
        """The id of experiment `name`; appends its ExperimentCreated to `events` when it is new."""
        existing = await self._experiments.get_by_name(name)
        if existing is not None and self._access.can_read(existing.experiment_id):
            if not self._access.can_write(existing.experiment_id):
                raise PermissionDenied(f"the caller may not write experiment {existing.experiment_id}")
            if existing.lifecycle_stage != "active":
                raise InvalidParameter(f"experiment {name!r} is deleted; runs cannot start in it")
            return existing.experiment_id
        # New to the caller (or not readable by it, which must look the same): a creation.
        self._access.require_create_experiment()
        experiment_id = experiment_id_for(self._principal.tenant_id, name)
        holder = await self._experiments.get(experiment_id)
        if holder is not None:
            raise AlreadyExists(
                f"the name {name!r} belonged to experiment {experiment_id} (now {holder.name!r}); it cannot be reused"
            )
        events.append(
            build_event(
                self._principal,
                EventType.EXPERIMENT_CREATED,
                {"name": name},
                experiment_id=experiment_id,
            )
        )
        return experiment_id
