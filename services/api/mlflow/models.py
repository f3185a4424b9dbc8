"""MLflow 3 logged models (`log_model`, `search_logged_models`, `models:/<model_id>`).

A logged model is first-class: `model.logged` creates it, `model.logged_model_updated`
changes its status, tags and params and links metric points to it, and
`model.logged_model_deleted` deletes it (soft), all experiment-scoped events projected
into `logged_models` and its params, tags and metrics tables. A model logged in a run keeps
its files under the run's artifacts (`<run artifact_uri>/<name>`), which the artifact
proxy serves, so `models:/<id>` and `runs:/<run>/<name>` both resolve to them.

Migration: before these events, each model was one JSON tag (`mlflow.loggedModels/<id>`)
on its source run or experiment. Such a model is still read from its tag when the table
lacks it, and the first write to it promotes it (a `model.logged` event from the tag's
record, then the change), so its history continues in events. Searches list only
first-class models.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runledger.events.models import EventType
from services.api.access import Access, Located, readable_run
from services.api.deps import Runtime
from services.api.errors import InvalidParameter, NotFound
from services.api.experiments.repository import ExperimentRepository
from services.api.mlflow import model_search, models_repository, repository, schemas, shapes
from services.api.mlflow.scope import search_scope
from services.api.pagination import decode_page_token, encode_page_token, fingerprint
from services.api.principal import Principal
from services.api.publisher import OutgoingEvent
from services.api.runs.naming import generate_run_name
from services.api.runs.repository import RunRepository
from services.api.runs.service import now_ms
from services.api.serialization import json_float
from services.api.writes import build_event

_MODEL_ID = re.compile(r"^[A-Za-z0-9_\-.]{1,64}\Z")
# The proto enum by number, for a client that sends numbers.
_STATUS_NUMBERS = dict(enumerate(model_search.STATUSES))
DEFAULT_SEARCH_RESULTS = 100  # MLflow's SEARCH_LOGGED_MODEL_MAX_RESULTS_DEFAULT


def _status(value: str | int) -> str:
    status = _STATUS_NUMBERS.get(value, "") if isinstance(value, int) else model_search.status_name(value)
    if status not in model_search.STATUSES:
        raise InvalidParameter(f"invalid logged model status {value!r}")
    return status


def model_message(record: dict[str, Any]) -> dict[str, Any]:
    """MLflow's LoggedModel from a stored record (proto3 JSON: empty fields left out)."""
    info: dict[str, Any] = {
        # Legacy (tag-stored) records may lack fields: proto3 defaults.
        "model_id": record["model_id"],
        "experiment_id": record["experiment_id"],
        "name": record.get("name") or record["model_id"],
        "creation_timestamp_ms": record.get("creation_timestamp_ms") or 0,
        "last_updated_timestamp_ms": record.get("last_updated_timestamp_ms") or 0,
        "artifact_uri": record.get("artifact_location") or record.get("artifact_uri", ""),
        "status": record.get("status") or "LOGGED_MODEL_PENDING",
        # creator_id is not answered: MLflow's is an integer user id, RunLedger's a string.
    }
    for key in ("model_type", "source_run_id"):
        if record.get(key):
            info[key] = record[key]
    info["tags"] = shapes.pairs(record.get("tags") or {})
    metrics = []
    for m in record.get("metrics") or []:
        metric: dict[str, Any] = {
            "key": m["key"],
            "value": json_float(float(m["value"])),
            "timestamp": m["timestamp"],
            "step": m["step"],
            "model_id": record["model_id"],
        }
        for key in ("run_id", "dataset_name", "dataset_digest"):
            if m.get(key):
                metric[key] = m[key]
        metrics.append(metric)
    return {"info": info, "data": {"params": shapes.pairs(record.get("params") or {}), "metrics": metrics}}


@dataclass
class _Found:
    """A model the caller may read: where it lives, its record, whether it is a legacy tag."""

    located: Located
    record: dict[str, Any]
    legacy: bool = False


class LoggedModelService:
    """Logged models the caller may see: its tenant's, and those of experiments shared with it."""

    def __init__(self, runtime: Runtime, principal: Principal) -> None:
        """Act for `principal` with the app's connections."""
        self._pool = runtime.pool
        self._writer = runtime.writer
        self._principal = principal
        self._access = Access(principal)
        self._experiments = ExperimentRepository(runtime.pool, principal)
        self._runs = RunRepository(runtime.pool, principal)

    # ------------------------------------------------------------------ writes

    async def create(self, body: schemas.LoggedModelCreate) -> dict[str, Any]:
        """POST logged-models: a PENDING model (finalized by PATCH once its files are uploaded)."""
        experiment = await self._experiments.get(body.experiment_id)
        located = self._access.locate(
            experiment is not None, body.experiment_id, f"experiment {body.experiment_id!r}"
        )
        self._access.require_write(located, f"experiment {body.experiment_id}")
        if experiment is None or experiment.lifecycle_stage != "active":
            raise NotFound(f"experiment {body.experiment_id!r} does not exist")
        model_id = f"m-{uuid.uuid4().hex}"
        name = body.name or generate_run_name()
        if body.source_run_id:
            run_located, info = await readable_run(self._access, self._runs, body.source_run_id)
            self._access.require_write(run_located, f"run {body.source_run_id}")
            if info.experiment_id != body.experiment_id:
                raise InvalidParameter(
                    f"run {body.source_run_id} belongs to experiment {info.experiment_id}, not {body.experiment_id}"
                )
            # Under the run's artifacts: the proxy serves them, and runs:/<run>/<name> finds them too.
            artifact_location = f"{shapes.run_artifact_uri(body.experiment_id, body.source_run_id)}/{name}"
        else:
            artifact_location = f"{shapes.artifact_root(body.experiment_id)}/models/{model_id}/artifacts"
        payload: dict[str, Any] = {
            "model_id": model_id,
            "name": name,
            "artifact_location": artifact_location,
            "creation_timestamp_ms": now_ms(),
            "status": "LOGGED_MODEL_PENDING",
            "model_type": body.model_type or "",
            "source_run_id": body.source_run_id or None,
            "creator_id": self._principal.user_id,
            "tags": {t.key: t.value for t in body.tags},
            "params": {p.key: p.value for p in body.params},
        }
        event = build_event(
            self._principal, EventType.LOGGED_MODEL_CREATED, payload, experiment_id=body.experiment_id
        )
        receipt = await self._writer.write(self._principal, [event])
        if receipt.projected:
            found = await self._find(model_id, write=False)
            return {"model": model_message(found.record)}
        record = payload | {
            "experiment_id": body.experiment_id,
            "last_updated_timestamp_ms": payload["creation_timestamp_ms"],
        }
        return {"model": model_message(record)}

    async def finalize(self, model_id: str, body: schemas.LoggedModelFinalize) -> dict[str, Any]:
        """PATCH logged-models/{id}: the final status (READY or UPLOAD_FAILED): {model}."""
        status = _status(body.status)
        return {"model": await self._update(model_id, {"status": status})}

    async def set_tags(self, model_id: str, body: schemas.LoggedModelTags) -> dict[str, Any]:
        """PATCH logged-models/{id}/tags (the last value of a repeated key wins, as in MLflow)."""
        await self._update(model_id, {"tags": {t.key: t.value for t in body.tags}})
        return {}

    async def delete_tag(self, model_id: str, key: str) -> dict[str, Any]:
        """DELETE logged-models/{id}/tags/{key}: RESOURCE_DOES_NOT_EXIST when it has no such tag."""
        found = await self._find(model_id, write=True)
        if key not in found.record.get("tags", {}):
            raise NotFound(f"No tag with key {key!r} found for model with ID {model_id!r}.")
        await self._update(model_id, {"deleted_tags": [key]}, found)
        return {}

    async def log_params(self, model_id: str, body: schemas.LoggedModelParams) -> dict[str, Any]:
        """POST logged-models/{id}/params (the client sends them 100 at a time)."""
        if body.params:
            await self._update(model_id, {"params": {p.key: p.value for p in body.params}})
        else:  # nothing to change, but a missing model is still RESOURCE_DOES_NOT_EXIST
            await self._find(model_id, write=True)
        return {}

    async def delete(self, model_id: str) -> dict[str, Any]:
        """DELETE logged-models/{id} (soft: get answers it with allow_deleted=true)."""
        found = await self._find(model_id, write=True)
        events = self._promotion(found)
        events.append(
            build_event(
                self._principal,
                EventType.LOGGED_MODEL_DELETED,
                {"model_id": model_id},
                experiment_id=found.located.experiment_id,
            )
        )
        await self._writer.write(self._principal, events)
        return {}

    async def metric_events(self, run_id: str, metrics: Sequence[schemas.MetricBody]) -> list[OutgoingEvent]:
        """For runs/log-batch: the points that name a model_id, linked to it (one event per
        model). RESOURCE_DOES_NOT_EXIST for a model the caller cannot see, 403 for one it
        may only read."""
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in metrics:
            if m.model_id:
                by_model[m.model_id].append(
                    {
                        "key": m.key,
                        "value": json_float(m.value),
                        "timestamp": m.timestamp if m.timestamp is not None else now_ms(),
                        "step": m.step,
                        "run_id": run_id,
                        "dataset_name": m.dataset_name or "",
                        "dataset_digest": m.dataset_digest or "",
                    }
                )
        events: list[OutgoingEvent] = []
        for model_id, points in by_model.items():
            found = await self._find(model_id, write=True)
            events += self._promotion(found)
            events.append(self._update_event(found, {"model_id": model_id, "metrics": points}))
        return events

    # ------------------------------------------------------------------ reads

    async def get(self, model_id: str, allow_deleted: bool = False) -> dict[str, Any]:
        """GET logged-models/{id}: {model}."""
        found = await self._find(model_id, write=False, allow_deleted=allow_deleted)
        return {"model": model_message(found.record)}

    async def search(self, body: schemas.LoggedModelSearch) -> dict[str, Any]:
        """POST logged-models/search: MLflow's filter grammar, order_by entries, datasets,
        offset page tokens; {models, next_page_token} ({} when nothing matches)."""
        self._access.require_listing()
        comparisons = model_search.parse_filter(body.filter)
        orders = model_search.parse_order_by([o.model_dump() for o in body.order_by])
        datasets = [d.model_dump(exclude_none=True) for d in body.datasets]
        if not all(d.get("dataset_name") for d in datasets):
            raise InvalidParameter("`dataset_name` in the `datasets` clause must be specified.")
        max_results = body.max_results or DEFAULT_SEARCH_RESULTS
        token_scope = fingerprint(
            "mlflow-logged-models",
            sorted(set(body.experiment_ids)),
            body.filter,
            repr(orders),
            repr(datasets),
        )
        offset = 0
        if body.page_token:
            position = decode_page_token(body.page_token, token_scope)
            if len(position) != 1 or not isinstance(position[0], int) or position[0] < 0:
                raise InvalidParameter("invalid page_token")
            offset = position[0]
        scope = await search_scope(self._pool, self._access, body.experiment_ids)
        rows = await models_repository.search(
            self._pool, scope, comparisons, datasets, orders, offset, max_results + 1
        )
        answer: dict[str, Any] = {}
        if len(rows) > max_results:
            rows = rows[:max_results]
            answer["next_page_token"] = encode_page_token([offset + max_results], token_scope)
        if rows:
            answer["models"] = [model_message(r) for r in await models_repository.load(self._pool, rows)]
        return answer

    # ------------------------------------------------------------------ helpers

    async def _find(self, model_id: str, *, write: bool, allow_deleted: bool = False) -> _Found:
        """The model if the caller may read it (and change it, with `write`): 404 like a
        missing one otherwise, 403 when it may only read it."""
        missing = NotFound(f"Logged model with ID '{model_id}' not found.")
        if not _MODEL_ID.match(model_id):
            raise missing
        row = await models_repository.find(
            self._pool, self._principal.tenant_id, model_id, self._access.shared()
        )
        if row is not None:
            own = row["tenant_id"] == self._principal.tenant_id
            if not own and self._access.shared().get(row["experiment_id"]) != row["tenant_id"]:
                raise missing
            try:
                located = self._access.locate(own, row["experiment_id"], f"logged model {model_id}")
            except NotFound:
                raise missing from None
            if row["lifecycle_stage"] == "deleted" and (write or not allow_deleted):
                raise missing
            found = _Found(located, (await models_repository.load(self._pool, [row]))[0])
        else:
            legacy = await repository.find_logged_model(self._pool, self._principal.tenant_id, model_id)
            if legacy is None or not self._access.can_read(legacy[0]):
                raise missing
            experiment_id, record = legacy
            record = record | {"experiment_id": experiment_id}
            found = _Found(
                Located(self._principal.tenant_id, experiment_id, shared=False), record, legacy=True
            )
        if write:
            self._access.require_write(found.located, f"logged model {model_id}")
        return found

    def _promotion(self, found: _Found) -> list[OutgoingEvent]:
        """A legacy (tag-stored) model's `model.logged` event, written before its first change."""
        if not found.legacy:
            return []
        r = found.record
        payload = {
            "model_id": r["model_id"],
            "name": r.get("name") or r["model_id"],
            "artifact_location": r.get("artifact_uri") or r.get("artifact_location") or "",
            "creation_timestamp_ms": r.get("creation_timestamp_ms") or now_ms(),
            "status": _status(r.get("status") or "LOGGED_MODEL_PENDING"),
            "model_type": r.get("model_type") or "",
            "source_run_id": r.get("source_run_id") or None,
            "creator_id": r.get("creator_id") or "",
            "tags": r.get("tags") or {},
            "params": r.get("params") or {},
        }
        return [
            build_event(
                self._principal,
                EventType.LOGGED_MODEL_CREATED,
                payload,
                experiment_id=found.located.experiment_id,
            )
        ]

    def _update_event(self, found: _Found, payload: dict[str, Any]) -> OutgoingEvent:
        return build_event(
            self._principal,
            EventType.LOGGED_MODEL_UPDATED,
            payload,
            experiment_id=found.located.experiment_id,
        )

    async def _update(
        self, model_id: str, change: dict[str, Any], found: _Found | None = None
    ) -> dict[str, Any]:
        """Write one change of the model; answer the model as it is then (read-your-writes)."""
        found = found or await self._find(model_id, write=True)
        events = self._promotion(found)
        events.append(self._update_event(found, {"model_id": model_id, **change}))
        receipt = await self._writer.write(self._principal, events)
        if receipt.projected:
            found = await self._find(model_id, write=False)
            return model_message(found.record)
        record = dict(found.record)  # not projected within the wait: answer what was written
        record["status"] = change.get("status", record.get("status"))
        record["tags"] = {
            k: v
            for k, v in {**record.get("tags", {}), **change.get("tags", {})}.items()
            if k not in change.get("deleted_tags", [])
        }
        record["params"] = {**change.get("params", {}), **record.get("params", {})}
        record["last_updated_timestamp_ms"] = now_ms()
        return model_message(record)
