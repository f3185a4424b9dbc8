"""RunLedger records in the JSON shapes of MLflow's protos (Run, Experiment, LoggedModel).

Proto3 JSON omits unset fields: end_time is left out while a run is running.
Non-finite metric values travel as "NaN" / "Infinity" / "-Infinity".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from services.api.experiments.schemas import Experiment
from services.api.runs.schemas import LatestMetric, RunInfo
from services.api.serialization import json_float

RUN_NAME_TAG = "mlflow.runName"
PARENT_RUN_TAG = "mlflow.parentRunId"
# Logged models (MLflow 3) were once kept as one JSON tag each on their source run (or
# experiment), before they had events and a table: such tags are still read (models.py)
# and hidden from MLflow's views.
MODEL_TAG_PREFIX = "mlflow.loggedModels/"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run with everything MLflow's Run message carries."""

    info: RunInfo
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, LatestMetric] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)  # [{model_id, step}] (runs/outputs)

    @property
    def name(self) -> str:
        """The run name: the mlflow.runName tag wins (clients rename runs by setting it)."""
        return self.tags.get(RUN_NAME_TAG) or self.info.name


def pairs(values: dict[str, str]) -> list[dict[str, str]]:
    """A dict as MLflow's repeated {key, value} messages."""
    return [{"key": k, "value": v} for k, v in values.items()]


def artifact_root(experiment_id: str) -> str:
    """Where an experiment's artifacts live, as the artifact proxy serves them."""
    return f"mlflow-artifacts:/{experiment_id}"


def run_artifact_uri(experiment_id: str, run_id: str) -> str:
    """The artifact_uri of a run (the proxy's {exp}/{run}/artifacts layout)."""
    return f"{artifact_root(experiment_id)}/{run_id}/artifacts"


def run_info(info: RunInfo, name: str) -> dict[str, Any]:
    """MLflow's RunInfo."""
    shaped: dict[str, Any] = {
        "run_id": info.run_id,
        "run_uuid": info.run_id,
        "run_name": name,
        "experiment_id": info.experiment_id,
        "user_id": info.user_id,
        "status": info.status,
        "start_time": info.start_time,
        "artifact_uri": run_artifact_uri(info.experiment_id, info.run_id),
        "lifecycle_stage": info.lifecycle_stage,
    }
    if info.end_time is not None:
        shaped["end_time"] = info.end_time
    return shaped


def metric(key: str, point: LatestMetric) -> dict[str, Any]:
    """MLflow's Metric."""
    return {"key": key, "value": json_float(point.value), "timestamp": point.timestamp, "step": point.step}


def run(record: RunRecord) -> dict[str, Any]:
    """MLflow's Run: info, data (latest metrics, params, tags), inputs, outputs."""
    visible = {k: v for k, v in record.tags.items() if not k.startswith(MODEL_TAG_PREFIX)}
    outputs = list(record.outputs)
    listed = {o["model_id"] for o in outputs}
    for key, value in record.tags.items():  # legacy tag-stored models are outputs of their run
        if key.startswith(MODEL_TAG_PREFIX) and key[len(MODEL_TAG_PREFIX) :] not in listed:
            outputs.append({"model_id": key[len(MODEL_TAG_PREFIX) :], "step": _output_step(value)})
    return {
        "info": run_info(record.info, record.name),
        "data": {
            "metrics": [metric(k, m) for k, m in record.metrics.items()],
            "params": pairs(record.params),
            "tags": pairs(visible),
        },
        "inputs": {"dataset_inputs": [dataset_input(d) for d in record.datasets], "model_inputs": []},
        "outputs": {"model_outputs": outputs},
    }


def _output_step(record: str) -> int:
    try:
        step = orjson.loads(record).get("output_step", 0)
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return step if isinstance(step, int) else 0


def dataset_input(body: dict[str, Any]) -> dict[str, Any]:
    """MLflow's DatasetInput from the stored InputsLogged dataset."""
    dataset = {k: body.get(k, "") for k in ("name", "digest", "source_type", "source", "schema", "profile")}
    return {"tags": pairs(body.get("tags") or {}), "dataset": dataset}


def experiment(exp: Experiment) -> dict[str, Any]:
    """MLflow's Experiment."""
    tags = {k: v for k, v in exp.tags.items() if not k.startswith(MODEL_TAG_PREFIX)}
    return {
        "experiment_id": exp.experiment_id,
        "name": exp.name,
        "artifact_location": exp.artifact_location or artifact_root(exp.experiment_id),
        "lifecycle_stage": exp.lifecycle_stage,
        "creation_time": exp.creation_time,
        "last_update_time": exp.last_update_time,
        "tags": pairs(tags),
    }
