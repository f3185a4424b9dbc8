"""MLflow 3 logged models (`log_model`): create, get, finalize, tags.

No event type or table holds logged models yet, so each is one JSON tag
(`mlflow.loggedModels/<model_id>`) on its source run, or on its experiment when
it has none, written through the usual events. A model logged in a run keeps its
files under the run's artifacts (`<run artifact_uri>/<name>`), so `runs:/<run>/<name>`
resolves through the run alone, and logged-models/search may answer empty.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from runledger.events.models import MAX_TAG_VALUE_LENGTH, EventType
from services.api.access import Access, readable_run
from services.api.deps import Runtime
from services.api.errors import InvalidParameter, NotFound
from services.api.experiments.repository import ExperimentRepository
from services.api.mlflow import repository, schemas, shapes
from services.api.principal import Principal
from services.api.runs.naming import generate_run_name
from services.api.runs.repository import RunRepository
from services.api.runs.service import now_ms
from services.api.writes import build_event

# The proto enum by number, for a client that sends numbers.
_STATUS_NUMBERS = {
    0: "LOGGED_MODEL_STATUS_UNSPECIFIED",
    1: "LOGGED_MODEL_PENDING",
    2: "LOGGED_MODEL_READY",
    3: "LOGGED_MODEL_UPLOAD_FAILED",
}


def shaped(record: dict[str, Any]) -> dict[str, Any]:
    """MLflow's LoggedModel from a stored record."""
    info = {
        k: record[k]
        for k in (
            "model_id",
            "experiment_id",
            "name",
            "creation_timestamp_ms",
            "last_updated_timestamp_ms",
            "artifact_uri",
            "status",
            "model_type",
            "source_run_id",
        )
        if record.get(k) not in (None, "")
    }
    info["tags"] = shapes.pairs(record.get("tags", {}))
    return {
        "model": {"info": info, "data": {"params": shapes.pairs(record.get("params", {})), "metrics": []}}
    }


class LoggedModelService:
    """Logged models of one caller's tenant."""

    def __init__(self, runtime: Runtime, principal: Principal) -> None:
        """Act for `principal` with the app's connections."""
        self._pool = runtime.pool
        self._writer = runtime.writer
        self._principal = principal
        self._access = Access(principal)
        self._experiments = ExperimentRepository(runtime.pool, principal)
        self._runs = RunRepository(runtime.pool, principal)

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
            artifact_uri = f"{shapes.run_artifact_uri(body.experiment_id, body.source_run_id)}/{name}"
        else:
            artifact_uri = f"{shapes.artifact_root(body.experiment_id)}/models/{model_id}/artifacts"
        now = now_ms()
        record: dict[str, Any] = {
            "model_id": model_id,
            "experiment_id": body.experiment_id,
            "name": name,
            "creation_timestamp_ms": now,
            "last_updated_timestamp_ms": now,
            "artifact_uri": artifact_uri,
            "status": "LOGGED_MODEL_PENDING",
            # Kept for our audit; not answered: MLflow's creator_id is an integer user id.
            "creator_id": self._principal.user_id,
            "model_type": body.model_type or "",
            "source_run_id": body.source_run_id or "",
            "tags": {t.key: t.value for t in body.tags},
            "params": {p.key: p.value for p in body.params},
        }
        await self._store(record)
        return shaped(record)

    async def get(self, model_id: str) -> dict[str, Any]:
        """GET logged-models/{id}."""
        return shaped(await self._find(model_id, write=False))

    async def finalize(self, model_id: str, body: schemas.LoggedModelFinalize) -> dict[str, Any]:
        """PATCH logged-models/{id}: the final status (READY or UPLOAD_FAILED)."""
        status = body.status if isinstance(body.status, str) else _STATUS_NUMBERS.get(body.status, "")
        if status not in _STATUS_NUMBERS.values():
            raise InvalidParameter(f"invalid logged model status {body.status!r}")
        record = await self._find(model_id, write=True)
        record |= {"status": status, "last_updated_timestamp_ms": now_ms()}
        await self._store(record)
        return shaped(record)

    async def set_tags(self, model_id: str, body: schemas.LoggedModelTags) -> dict[str, Any]:
        """PATCH logged-models/{id}/tags."""
        record = await self._find(model_id, write=True)
        record["tags"] = {**record.get("tags", {}), **{t.key: t.value for t in body.tags}}
        record["last_updated_timestamp_ms"] = now_ms()
        await self._store(record)
        return {}

    async def delete_tag(self, model_id: str, key: str) -> dict[str, Any]:
        """DELETE logged-models/{id}/tags/{key}."""
        record = await self._find(model_id, write=True)
        tags = dict(record.get("tags", {}))
        if tags.pop(key, None) is None:
            raise NotFound(f"logged model {model_id} has no tag {key!r}")
        record |= {"tags": tags, "last_updated_timestamp_ms": now_ms()}
        await self._store(record)
        return {}

    async def _find(self, model_id: str, *, write: bool) -> dict[str, Any]:
        found = await repository.find_logged_model(self._pool, self._principal.tenant_id, model_id)
        if found is None or not self._access.can_read(found[0]):
            raise NotFound(f"Logged model with ID '{model_id}' not found")
        experiment_id, record = found
        if write:
            self._access.require_write(
                self._access.locate(True, experiment_id, f"logged model {model_id}"),
                f"logged model {model_id}",
            )
        return record

    async def _store(self, record: dict[str, Any]) -> None:
        """Write the record as its tag (params dropped first when it would not fit a tag)."""
        key = shapes.MODEL_TAG_PREFIX + record["model_id"]
        value = orjson.dumps(record).decode()
        if len(value) > MAX_TAG_VALUE_LENGTH:
            record["params"] = {}  # copies of the run's params, which the run keeps
            value = orjson.dumps(record).decode()
        if len(value) > MAX_TAG_VALUE_LENGTH:
            raise InvalidParameter(f"the logged model's tags exceed {MAX_TAG_VALUE_LENGTH} characters")
        run_id = record["source_run_id"] or None
        if run_id:
            event = build_event(
                self._principal,
                EventType.TAGS_SET,
                {"tags": {key: value}},
                run_id=run_id,
                experiment_id=record["experiment_id"],
            )
        else:
            event = build_event(
                self._principal,
                EventType.EXPERIMENT_TAG_SET,
                {"key": key, "value": value},
                experiment_id=record["experiment_id"],
            )
        await self._writer.write(self._principal, [event])
