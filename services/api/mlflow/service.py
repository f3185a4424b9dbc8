"""What the MLflow routes do: MLflow's semantics over RunLedger's experiments, runs and events.

Writes are events through the shared EventWriter, signed for the caller. Run writes whose
checks need nothing unprojected (runs/create, log-batch and its one-item forms, runs/update,
log-inputs) answer once the broker acknowledged them, and are remembered in PendingWrites
until projected: the caller's other requests wait for them first (endpoints.py), and its
next writes to a run it just created are checked against the run as written. The other
writes answer once projected; the mlflow client treats any status but 200 as an error, so
one whose projection outlasts the wait still answers 200 (the event is in the log).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from runledger.auth.signing import signed_bytes
from runledger.events.codec import DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, envelope_dict
from runledger.events.models import MAX_TAG_VALUE_LENGTH, EventType, RunStatus
from services.api.access import Access, Located, readable_run
from services.api.deps import Runtime
from services.api.errors import InvalidParameter, NotFound, PermissionDenied
from services.api.experiments.repository import ExperimentRepository
from services.api.experiments.schemas import Experiment
from services.api.experiments.service import ExperimentService
from services.api.mlflow import repository, schemas, search, search_repository, shapes
from services.api.mlflow.experiment_filter import parse_filter, parse_order_by
from services.api.mlflow.history import HistoryReader, Position
from services.api.mlflow.models import LoggedModelService
from services.api.mlflow.scope import search_scope
from services.api.mlflow.shapes import PARENT_RUN_TAG, RUN_NAME_TAG, RunRecord
from services.api.pagination import decode_page_token, encode_page_token, fingerprint
from services.api.principal import Principal
from services.api.publisher import OutgoingEvent
from services.api.runs.naming import generate_run_name
from services.api.runs.repository import RunRepository
from services.api.runs.schemas import MetricPoint, RunInfo
from services.api.runs.service import RunService, metric_payloads, now_ms
from services.api.writes import API_PRODUCER, WriteReceipt, build_event, checked_event

_ID = re.compile(r"^[A-Za-z0-9_\-.]{1,64}\Z")
# MLflow's tag of legacy (runs/log-model) model metadata: a JSON list of MLmodel dicts.
LOG_MODEL_HISTORY_TAG = "mlflow.log-model.history"
# Namespace of the run ids derived from a runs/create request (retries get the same run).
_RUN_REQUEST_NAMESPACE = uuid.UUID("0b9a9c36-3f0e-4b8e-9d4f-6c2f1a7e5d21")
# A runs/create is taken for a retry only while its start_time is this close to now: longer
# than the client's default retry horizon (7 tries, up to 120 s each plus backoff), short
# enough that requests replaying an old start_time (imports, fixtures) create distinct runs.
RETRY_WINDOW_MS = 30 * 60 * 1000
_VIEW_STAGES = {
    None: ("active",),
    "": ("active",),
    "ACTIVE_ONLY": ("active",),
    "DELETED_ONLY": ("deleted",),
    "ALL": ("active", "deleted"),
}


def view_stages(view_type: str | None) -> tuple[str, ...]:
    """Lifecycle stages of an MLflow ViewType."""
    stages = _VIEW_STAGES.get(view_type.upper() if view_type else None)
    if stages is None:
        raise InvalidParameter(f"invalid view type {view_type!r}: ACTIVE_ONLY, DELETED_ONLY or ALL")
    return stages


def offset_of(token: str | None, scope: str) -> int:
    """The offset an offset page token resumes at (0 for a first page)."""
    if not token:
        return 0
    position = decode_page_token(token, scope)
    if len(position) != 1 or not isinstance(position[0], int) or position[0] < 0:
        raise InvalidParameter("invalid page_token")
    return position[0]


def with_token(body: dict[str, Any], token: str | None) -> dict[str, Any]:
    """A paged answer: next_page_token only when there is a next page (proto3 omits empty fields)."""
    if token:
        body["next_page_token"] = token
    return body


class MlflowService:
    """MLflow's tracking API for one caller, over the native services and repositories."""

    def __init__(self, runtime: Runtime, principal: Principal) -> None:
        """Act for `principal` with the app's connections."""
        self._pool = runtime.pool
        self._clickhouse = runtime.clickhouse
        self._writer = runtime.writer
        self._pending = runtime.pending
        self._answer_on_ack = runtime.settings.mlflow_write_ack == "broker"
        self._principal = principal
        self._access = Access(principal)
        self._experiment_repo = ExperimentRepository(runtime.pool, principal)
        self._experiments = ExperimentService(self._experiment_repo, runtime.writer, principal)
        self._run_repo = RunRepository(runtime.pool, principal)
        self._runs = RunService(self._run_repo, self._experiment_repo, runtime.writer, principal)
        self._models = LoggedModelService(runtime, principal)

    # ------------------------------------------------------------------ experiments

    async def create_experiment(self, body: schemas.ExperimentCreate) -> dict[str, Any]:
        """experiments/create: the new id (RESOURCE_ALREADY_EXISTS when the name is taken)."""
        tags = {t.key: t.value for t in body.tags}
        experiment_id, _, _ = await self._experiments.create(body.name, tags, body.artifact_location)
        return {"experiment_id": experiment_id}

    async def get_experiment(self, experiment_id: str) -> dict[str, Any]:
        """experiments/get."""
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            await self._ensure_default()
        return {"experiment": shapes.experiment(await self._experiments.get(experiment_id))}

    async def get_experiment_by_name(self, name: str) -> dict[str, Any]:
        """experiments/get-by-name: RESOURCE_DOES_NOT_EXIST when missing (set_experiment then creates it)."""
        if name == DEFAULT_EXPERIMENT_NAME:
            await self._ensure_default()
        found = await self._experiment_repo.get_by_name(name)
        if found is None or not self._access.can_read(found.experiment_id):
            raise NotFound(f"Could not find experiment with name '{name}'")
        return {"experiment": shapes.experiment(found)}

    async def search_experiments(self, body: schemas.ExperimentSearch) -> dict[str, Any]:
        """experiments/search over the caller's tenant: filter, order_by, offset page tokens."""
        self._access.require_listing()
        clauses = parse_filter(body.filter)
        orders = parse_order_by(body.order_by)
        stages = view_stages(body.view_type)
        scope = fingerprint("mlflow-experiments", body.filter, body.order_by, stages)
        offset = offset_of(body.page_token, scope)
        if offset == 0:
            await self._ensure_default()
        found = await repository.search_experiments(
            self._pool,
            self._principal.tenant_id,
            self._access.readable(),
            self._access.shared(),
            clauses,
            orders,
            stages,
            offset,
            body.max_results + 1,
        )
        token = None
        if len(found) > body.max_results:
            found = found[: body.max_results]
            token = encode_page_token([offset + body.max_results], scope)
        return with_token({"experiments": [shapes.experiment(e) for e in found]}, token)

    async def rename_experiment(self, body: schemas.ExperimentUpdate) -> dict[str, Any]:
        """experiments/update."""
        await self._experiments.rename(body.experiment_id, body.new_name)
        return {}

    async def delete_experiment(self, experiment_id: str) -> dict[str, Any]:
        """experiments/delete (soft)."""
        await self._experiments.delete(experiment_id)
        return {}

    async def restore_experiment(self, experiment_id: str) -> dict[str, Any]:
        """experiments/restore."""
        await self._writable_experiment(experiment_id)
        await self._write(
            [build_event(self._principal, EventType.EXPERIMENT_RESTORED, {}, experiment_id=experiment_id)]
        )
        return {}

    async def set_experiment_tag(self, body: schemas.ExperimentTag) -> dict[str, Any]:
        """experiments/set-experiment-tag."""
        await self._writable_experiment(body.experiment_id)
        payload = {"key": body.key, "value": body.value}
        await self._write(
            [
                build_event(
                    self._principal,
                    EventType.EXPERIMENT_TAG_SET,
                    payload,
                    experiment_id=body.experiment_id,
                )
            ]
        )
        return {}

    async def delete_experiment_tag(self, body: schemas.ExperimentTagDelete) -> dict[str, Any]:
        """experiments/delete-experiment-tag: the experiment must be active and have the tag."""
        experiment = await self._writable_experiment(body.experiment_id)
        if experiment.lifecycle_stage != "active":
            raise InvalidParameter(
                f"The experiment {body.experiment_id} must be in the 'active' state."
                f" Current state is {experiment.lifecycle_stage}."
            )
        if body.key not in experiment.tags:
            raise NotFound(f"No tag with name: {body.key} in experiment with id {body.experiment_id}")
        event = build_event(
            self._principal,
            EventType.EXPERIMENT_TAG_DELETED,
            {"key": body.key},
            experiment_id=body.experiment_id,
        )
        await self._write([event])
        return {}

    async def _writable_experiment(self, experiment_id: str) -> Experiment:
        """The experiment if the caller may change it: 404 when it may not read it, 403 when only read."""
        if not _ID.match(experiment_id):
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        own = await self._experiment_repo.get(experiment_id)
        located = self._access.locate(own is not None, experiment_id, f"experiment {experiment_id!r}")
        self._access.require_write(located, f"experiment {experiment_id}")
        if own is None:
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        return own

    async def _ensure_default(self) -> None:
        """Create "Default" (id "0") if the tenant has no event yet (the projector makes it with
        the tenant's first event); only a caller that may write it can."""
        if not self._access.can_write(DEFAULT_EXPERIMENT_ID):
            return
        if await self._experiment_repo.get(DEFAULT_EXPERIMENT_ID) is not None:
            return
        event = build_event(
            self._principal,
            EventType.EXPERIMENT_CREATED,
            {"name": DEFAULT_EXPERIMENT_NAME},
            experiment_id=DEFAULT_EXPERIMENT_ID,
        )
        await self._write([event])

    # ------------------------------------------------------------------ runs: reads

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """runs/get."""
        located, _ = await self._readable_run(run_id)
        return {"run": shapes.run(await self._load_run(located.tenant_id, run_id))}

    async def search_runs(self, body: schemas.RunSearch) -> dict[str, Any]:
        """runs/search: the grammar and the query are search.py / search_repository.py's."""
        self._access.require_listing()
        conditions = search.parse_filter(body.filter or "")
        order = search.parse_order_by(body.order_by)
        # Experiments the caller may not read look like missing ones: they add no runs. Those
        # shared with its tenant are searched in their owner's rows (read-only).
        scope = await search_scope(self._pool, self._access, body.experiment_ids)
        if not scope:
            return {}
        own = scope[0][1] if scope[0][0] == self._principal.tenant_id else []
        shared = {e: tenant for tenant, ids in scope if tenant != self._principal.tenant_id for e in ids}
        found, token = await search_repository.search_runs(
            self._pool,
            self._principal.tenant_id,
            own,
            conditions,
            order,
            body.run_view_type or "ACTIVE_ONLY",
            body.max_results,
            body.page_token,
            shared=shared,
        )
        by_tenant: dict[str, list[str]] = {}
        for tenant_id, run_id in found:
            by_tenant.setdefault(tenant_id, []).append(run_id)
        loaded: dict[str, RunRecord] = {}
        for tenant_id, ids in by_tenant.items():
            loaded |= {r.info.run_id: r for r in await repository.load_runs(self._pool, tenant_id, ids)}
        runs = [shapes.run(loaded[run_id]) for _, run_id in found if run_id in loaded]
        return with_token({"runs": runs}, token)

    # ------------------------------------------------------------------ runs: writes

    async def create_run(self, body: schemas.RunCreate) -> dict[str, Any]:
        """runs/create: run_name generated when absent and mirrored in the mlflow.runName tag;
        tag mlflow.parentRunId makes it a nested run.

        Idempotent for a retry: the client sends no idempotency key, but it sends the same
        body again (its start_time included) when it retries after a timeout. The run id and
        the event id are derived from the request (tenant, caller, experiment, start_time,
        run_name, user_id, tags), so a retry answers the run the first attempt created, and
        a retry racing the first attempt publishes the same event, which the projector
        applies once. A request without start_time, or whose start_time is not within
        RETRY_WINDOW_MS of now, is never deduplicated.
        """
        experiment_id = body.experiment_id or DEFAULT_EXPERIMENT_ID
        if not _ID.match(experiment_id):
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        tags = {t.key: t.value for t in body.tags}
        run_id = self._request_run_id(experiment_id, body, tags)
        if run_id is not None:
            if self._pending.created_run(self._principal.tenant_id, run_id) is not None:
                await self._pending.settle(self._principal)  # a retry of a create not projected yet
            existing = await self._run_repo.get_info(run_id)
            if existing is not None:  # a retry of a create that was written
                self._access.require_write(
                    Located(self._principal.tenant_id, existing.experiment_id, shared=False),
                    f"experiment {existing.experiment_id}",
                )
                return {"run": shapes.run(await self._load_run(self._principal.tenant_id, run_id))}
        name = body.run_name or tags.get(RUN_NAME_TAG) or generate_run_name()
        tags[RUN_NAME_TAG] = name
        parent = tags.get(PARENT_RUN_TAG)
        if parent is not None and not await self._is_readable_own_run(parent):
            parent = None  # MLflow keeps the tag without checking it; so does RunLedger
        start_time = body.start_time if body.start_time is not None else now_ms()
        await self._startable_experiment(experiment_id)
        self._check_tagging(tags)
        payload: dict[str, Any] = {
            "name": name,
            "parent_run_id": parent,
            "start_time": start_time,
            "user_id": self._principal.user_id,
            "tags": tags,
        }
        if run_id is None:
            event = build_event(
                self._principal,
                EventType.RUN_STARTED,
                payload,
                run_id=(run_id := uuid.uuid4().hex),
                experiment_id=experiment_id,
            )
        else:
            envelope = envelope_dict(
                tenant_id=self._principal.tenant_id,
                type=EventType.RUN_STARTED,
                payload=payload,
                producer=API_PRODUCER,
                run_id=run_id,
                experiment_id=experiment_id,
                event_id=str(uuid.uuid5(_RUN_REQUEST_NAMESPACE, run_id)),
            )
            event = checked_event(signed_bytes(envelope, self._principal.key_id, self._principal.signing_key))
        info = RunInfo(
            run_id=run_id,
            experiment_id=experiment_id,
            parent_run_id=parent,
            name=name,
            user_id=self._principal.user_id,
            status=RunStatus.RUNNING.value,
            start_time=start_time,
            lifecycle_stage="active",
        )
        if await self._write_run([event], created=info):
            return {"run": shapes.run(await self._load_run(self._principal.tenant_id, run_id))}
        return {"run": shapes.run(RunRecord(info=info, tags=tags))}  # not projected yet: as written

    def _request_run_id(
        self, experiment_id: str, body: schemas.RunCreate, tags: dict[str, str]
    ) -> str | None:
        """The run id of a runs/create request: the same for a retry of it; None (a fresh id) without
        a start_time near now."""
        if body.start_time is None or abs(now_ms() - body.start_time) > RETRY_WINDOW_MS:
            return None
        identity = orjson.dumps(
            [
                self._principal.tenant_id,
                self._principal.user_id,
                experiment_id,
                body.start_time,
                body.run_name or "",
                body.user_id or "",
                sorted(tags.items()),
            ]
        )
        return uuid.uuid5(_RUN_REQUEST_NAMESPACE, hashlib.sha256(identity).hexdigest()).hex

    async def _startable_experiment(self, experiment_id: str) -> None:
        """A run may start in the experiment: the caller may write it and it is active (RunService's
        rules: "0" exists for every tenant, since the projector creates it with the first event)."""
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            if not self._access.can_write(experiment_id):
                raise PermissionDenied(f"the caller may not write experiment {experiment_id}")
            return
        experiment = await self._experiment_repo.get(experiment_id)
        located = self._access.locate(experiment is not None, experiment_id, f"experiment {experiment_id!r}")
        self._access.require_write(located, f"experiment {experiment_id}")
        if experiment is None:
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        if experiment.lifecycle_stage != "active":
            raise InvalidParameter(f"experiment {experiment_id} is deleted; runs cannot start in it")

    def _check_tagging(self, tags: dict[str, str]) -> None:
        """400 when the tenant's tagging policy rejects runs without these tags (as RunService)."""
        policy = self._principal.authorizer.snapshot.tagging.get(self._principal.tenant_id)
        if policy is None or not policy.reject:
            return
        problems = policy.violations(tags)
        if problems:
            raise InvalidParameter(
                f"the tenant's tagging policy rejects this run: {'; '.join(problems)}", details=problems
            )

    async def update_run(self, body: schemas.RunUpdate) -> dict[str, Any]:
        """runs/update: status, end_time and run_name (kept in the mlflow.runName tag)."""
        info = await self._run_to_write(body.id())
        events: list[OutgoingEvent] = []
        status = info.status
        end_time = info.end_time
        if body.status is not None or body.end_time is not None:
            status = _status(body.status) if body.status is not None else info.status
            end_time = body.end_time
            if end_time is None and status in ("FINISHED", "FAILED", "KILLED"):
                end_time = now_ms()
            events.append(
                self._run_event(info, EventType.STATUS_CHANGED, {"status": status, "end_time": end_time})
            )
        if body.run_name:
            events.append(self._run_event(info, EventType.TAGS_SET, {"tags": {RUN_NAME_TAG: body.run_name}}))
        if events and await self._write_run(events):
            record = await self._load_run(self._principal.tenant_id, info.run_id)
            return {"run_info": shapes.run_info(record.info, record.name)}
        # Not projected yet: the run as written.
        updated = info.model_copy(
            update={
                "status": status,
                "end_time": end_time or info.end_time,
                "name": body.run_name or info.name,
            }
        )
        self._pending.remember_run(self._principal.tenant_id, updated)
        return {"run_info": shapes.run_info(updated, updated.name)}

    async def delete_run(self, run_id: str) -> dict[str, Any]:
        """runs/delete (soft)."""
        await self._runs.delete(run_id)
        return {}

    async def restore_run(self, run_id: str) -> dict[str, Any]:
        """runs/restore."""
        info = await self._writable_run(run_id)
        await self._write([self._run_event(info, EventType.RUN_RESTORED, {})])
        return {}

    async def log_metric(self, body: schemas.LogMetric) -> dict[str, Any]:
        """runs/log-metric: one point (duplicates are dropped by the stores)."""
        await self.log_batch(schemas.LogBatch(run_id=body.id(), metrics=[body]))
        return {}

    async def log_param(self, body: schemas.LogParam) -> dict[str, Any]:
        """runs/log-parameter: immutable (same value OK, another one INVALID_PARAMETER_VALUE)."""
        param = schemas.ParamBody(key=body.key, value=body.value)
        await self.log_batch(schemas.LogBatch(run_id=body.id(), params=[param]))
        return {}

    async def set_tag(self, body: schemas.SetTag) -> dict[str, Any]:
        """runs/set-tag (mlflow.runName renames the run)."""
        tag = schemas.TagBody(key=body.key, value=body.value)
        await self.log_batch(schemas.LogBatch(run_id=body.id(), tags=[tag]))
        return {}

    async def delete_tag(self, body: schemas.DeleteTag) -> dict[str, Any]:
        """runs/delete-tag: RESOURCE_DOES_NOT_EXIST when the run has no such tag."""
        await self._runs.delete_tag(body.id(), body.key)
        return {}

    async def log_batch(self, body: schemas.LogBatch) -> dict[str, Any]:
        """runs/log-batch: params, metrics and tags as one event per kind, in one write."""
        total = len(body.metrics) + len(body.params) + len(body.tags)
        if total > schemas.MAX_BATCH_ENTITIES:
            raise InvalidParameter(
                f"A batch logging request can contain at most {schemas.MAX_BATCH_ENTITIES} metrics, params"
                f" and tags in total; got {total}"
            )
        info = await self._run_to_write(body.id())
        events: list[OutgoingEvent] = []
        params: dict[str, str] = {}
        if body.params:
            # Immutability is checked against every earlier value, the unprojected ones too.
            await self._pending.settle_params(self._principal.tenant_id, info.run_id)
            params = await self._new_params(info.run_id, body.params)
            if params:
                events.append(self._run_event(info, EventType.PARAMS_LOGGED, {"params": params}))
        if body.metrics:
            points = [
                MetricPoint(key=m.key, value=m.value, step=m.step, timestamp=m.timestamp)
                for m in body.metrics
            ]
            for payload in metric_payloads(points, now_ms()):
                events.append(self._run_event(info, EventType.METRICS_LOGGED, payload))
            # MLflow 3: points naming a model_id are linked to that logged model too (checked
            # against the model as projected, with the caller's earlier writes).
            if any(m.model_id for m in body.metrics):
                await self._pending.settle(self._principal)
                events += await self._models.metric_events(info.run_id, body.metrics)
        if body.tags:
            tags = {t.key: t.value for t in body.tags}  # the last value of a key wins, as in MLflow
            events.append(self._run_event(info, EventType.TAGS_SET, {"tags": tags}))
        if events:
            await self._write_run(events, points=len(body.metrics), params_of=info.run_id if params else None)
        return {}

    async def log_inputs(self, body: schemas.LogInputs) -> dict[str, Any]:
        """runs/log-inputs: datasets with their context tags (model inputs are not kept)."""
        info = await self._run_to_write(body.id())
        datasets = [
            {
                "name": d.dataset.name,
                "digest": d.dataset.digest,
                "source_type": d.dataset.source_type,
                "source": d.dataset.source,
                "schema": d.dataset.schema_,
                "profile": d.dataset.profile,
                "tags": {t.key: t.value for t in d.tags},
            }
            for d in body.datasets
        ]
        if datasets:
            await self._write_run([self._run_event(info, EventType.INPUTS_LOGGED, {"datasets": datasets})])
        return {}

    async def log_outputs(self, body: schemas.LogOutputs) -> dict[str, Any]:
        """runs/outputs: logged models the run produced, each at a step (the models must be
        ones the caller can see)."""
        info = await self._active_run(body.id())
        models: dict[str, int] = {}
        for m in body.models:
            await self._models.get(m.model_id)
            models[m.model_id] = m.step
        if models:
            payload = {"models": [{"model_id": k, "step": v} for k, v in models.items()]}
            await self._write([self._run_event(info, EventType.OUTPUTS_LOGGED, payload)])
        return {}

    async def log_model(self, body: schemas.LogModel) -> dict[str, Any]:
        """runs/log-model (MLflow 2's record_logged_model): the MLmodel dict appended to the run's
        `mlflow.log-model.history` tag, as MLflow's server does."""
        try:
            model = orjson.loads(body.model_json)
        except orjson.JSONDecodeError:
            raise InvalidParameter(
                f"Malformed model info. \n {body.model_json} \n is not a valid JSON."
            ) from None
        if not isinstance(model, dict):
            raise InvalidParameter("Malformed model info: expected a JSON object.")
        missing = {"artifact_path", "flavors", "utc_time_created", "run_id"} - set(model)
        if missing:
            raise InvalidParameter(f"Model json is missing mandatory fields: {sorted(missing)}")
        info = await self._active_run(body.id())
        record = await self._load_run(self._principal.tenant_id, info.run_id)
        try:
            history = orjson.loads(record.tags.get(LOG_MODEL_HISTORY_TAG, "[]"))
        except orjson.JSONDecodeError:
            history = []
        history = [*history, model] if isinstance(history, list) else [model]
        value = orjson.dumps(history).decode()
        if len(value) > MAX_TAG_VALUE_LENGTH:
            raise InvalidParameter(
                f"'{LOG_MODEL_HISTORY_TAG}' would exceed {MAX_TAG_VALUE_LENGTH} characters: the run has"
                " too many models logged"
            )
        await self._write(
            [self._run_event(info, EventType.TAGS_SET, {"tags": {LOG_MODEL_HISTORY_TAG: value}})]
        )
        return {}

    def require_listing(self) -> None:
        """Searches need READ somewhere in the tenant."""
        self._access.require_listing()

    async def _new_params(self, run_id: str, params: Sequence[schemas.ParamBody]) -> dict[str, str]:
        """The params not logged yet; INVALID_PARAMETER_VALUE for a changed or conflicting value."""
        batch: dict[str, str] = {}
        for p in params:
            if batch.get(p.key, p.value) != p.value:
                raise InvalidParameter(
                    f"Duplicate parameter keys have been submitted with different values: {p.key!r}"
                )
            batch[p.key] = p.value
        existing = await repository.param_values(self._pool, self._principal.tenant_id, run_id, list(batch))
        for key, value in batch.items():
            if key in existing and existing[key] != value:
                raise InvalidParameter(
                    f"Changing param values is not allowed. Param with key={key!r} was already logged with"
                    f" value={existing[key]!r} for run ID={run_id!r}. Attempted logging new value {value!r}."
                )
        return {k: v for k, v in batch.items() if k not in existing}

    # ------------------------------------------------------------------ metrics

    async def metric_history(
        self, run_id: str, key: str, max_results: int | None, page_token: str | None
    ) -> bytes:
        """metrics/get-history as JSON bytes: points by (timestamp, step, value), paged when
        max_results is given (capped at 25,000 per page)."""
        located, _ = await self._readable_run(run_id)
        scope = fingerprint("mlflow-history", run_id, key)
        after = None
        if page_token:
            raw = decode_page_token(page_token, scope)
            if len(raw) != 4:
                raise InvalidParameter("invalid page_token")
            try:
                after = Position(int(raw[0]), int(raw[1]), int(raw[2]), float(raw[3]))
            except (TypeError, ValueError):
                raise InvalidParameter("invalid page_token") from None
        limit = (
            None
            if max_results is None and after is None
            else min(max_results or schemas.MAX_HISTORY_RESULTS, schemas.MAX_HISTORY_RESULTS)
        )
        body, last = await HistoryReader(self._clickhouse, located.tenant_id).page(run_id, key, after, limit)
        out = b'{"metrics":[' + body + b"]"
        if last is not None:
            out += b',"next_page_token":"' + encode_page_token(last.as_list(), scope).encode() + b'"'
        return out + b"}"

    async def metric_history_bulk(
        self, run_ids: list[str], key: str, start_step: int | None, end_step: int | None, max_results: int
    ) -> bytes:
        """metrics/get-history-bulk-interval as JSON bytes: each run sampled to ~max_results steps."""
        if not run_ids:
            raise InvalidParameter("GetMetricHistoryBulkInterval request must specify at least one run_id.")
        if len(run_ids) > schemas.MAX_BULK_RUNS:
            raise InvalidParameter(
                f"GetMetricHistoryBulkInterval request cannot specify more than {schemas.MAX_BULK_RUNS}"
                f" run_ids. Received {len(run_ids)} run_ids."
            )
        if not 1 <= max_results <= schemas.MAX_BULK_RESULTS:
            raise InvalidParameter(f"max_results must be between 1 and {schemas.MAX_BULK_RESULTS}.")
        if (start_step is None) != (end_step is None):
            raise InvalidParameter("If either start step or end step are specified, both must be specified.")
        if start_step is not None and end_step is not None and start_step > end_step:
            raise InvalidParameter(
                f"end_step must be greater than start_step. Found start_step={start_step} and end_step={end_step}."
            )
        by_tenant: dict[str, list[str]] = {}
        for run_id in dict.fromkeys(run_ids):
            located, _ = await self._readable_run(run_id)
            by_tenant.setdefault(located.tenant_id, []).append(run_id)
        lo = 0 if start_step is None else start_step  # MLflow's default range starts at step 0
        hi = 2**63 - 1 if end_step is None else end_step
        bodies = []
        for tenant_id, ids in by_tenant.items():
            part = await HistoryReader(self._clickhouse, tenant_id).sampled(ids, key, lo, hi, max_results)
            if part:
                bodies.append(part)
        return b'{"metrics":[' + b",".join(bodies) + b"]}"

    # ------------------------------------------------------------------ helpers

    async def _write(self, events: list[OutgoingEvent], *, points: int = 0) -> WriteReceipt:
        return await self._writer.write(self._principal, events, points=points)

    async def _write_run(
        self,
        events: list[OutgoingEvent],
        *,
        points: int = 0,
        created: RunInfo | None = None,
        params_of: str | None = None,
    ) -> bool:
        """A run write answered on the broker's ack (remembered as pending; False) or, with
        mlflow_write_ack=projection, once projected (whether it was within the wait)."""
        if not self._answer_on_ack:
            return (await self._write(events, points=points)).projected
        token = await self._writer.publish(self._principal, events, points=points)
        self._pending.record(self._principal, token, created=created, params_of=params_of)
        return False

    def _run_event(self, info: RunInfo, type: EventType, payload: dict[str, Any]) -> OutgoingEvent:
        return build_event(
            self._principal, type, payload, run_id=info.run_id, experiment_id=info.experiment_id
        )

    async def _readable_run(self, run_id: str) -> tuple[Located, RunInfo]:
        if not _ID.match(run_id):
            raise NotFound(f"Run with id={run_id!r} not found")
        return await readable_run(self._access, self._run_repo, run_id)

    async def _is_readable_own_run(self, run_id: str) -> bool:
        try:
            located, _ = await self._readable_run(run_id)
        except NotFound:
            return False
        return not located.shared

    async def _writable_run(self, run_id: str) -> RunInfo:
        located, info = await self._readable_run(run_id)
        self._access.require_write(located, f"run {run_id}")
        return info

    async def _run_to_write(self, run_id: str) -> RunInfo:
        """`_active_run`, or the run as this process created it while that is not projected yet
        (the caller's next writes need not wait for it)."""
        created = self._pending.created_run(self._principal.tenant_id, run_id)
        if created is None:
            return await self._active_run(run_id)
        located = Located(self._principal.tenant_id, created.experiment_id, shared=False)
        self._access.require_write(located, f"run {run_id}")
        return created

    async def _active_run(self, run_id: str) -> RunInfo:
        info = await self._writable_run(run_id)
        if info.lifecycle_stage != "active":
            raise InvalidParameter(
                f"The run {run_id} must be in the 'active' state. Current state is {info.lifecycle_stage}."
            )
        return info

    async def _load_run(self, tenant_id: str, run_id: str) -> RunRecord:
        records = await repository.load_runs(self._pool, tenant_id, [run_id])
        if not records:
            raise NotFound(f"Run with id={run_id!r} not found")
        return records[0]


def _status(value: str) -> str:
    try:
        return RunStatus(value.upper()).value
    except ValueError:
        raise InvalidParameter(
            f"invalid run status {value!r}: one of {[s.value for s in RunStatus]}"
        ) from None
