"""Request bodies of the MLflow routes, as the mlflow client serializes its protos to JSON.

Unknown fields are ignored (newer clients send more); int64 fields may arrive as
strings (proto JSON), which pydantic's lax mode accepts.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from runledger.events.models import Key, ParamValue, TagValue

# MLflow's server limits (mlflow/utils/validation.py).
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_ENTITIES = 1000
MAX_SEARCH_RESULTS = 50_000
MAX_HISTORY_RESULTS = 25_000
MAX_BULK_RUNS = 100
MAX_BULK_RESULTS = 2500

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Millis = Annotated[int, Field(ge=0, le=9_999_999_999_999)]


class Request(BaseModel):
    """Base of every body: forward compatible with newer clients."""

    model_config = ConfigDict(extra="ignore")


class KeyValue(Request):
    key: str
    value: str = ""


class TagBody(Request):
    key: Key
    value: TagValue = ""


class ParamBody(Request):
    key: Key
    value: ParamValue = ""


class ExperimentCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=500)]
    artifact_location: str | None = None
    tags: list[TagBody] = Field(default_factory=list)


class ExperimentRef(Request):
    experiment_id: str


class ExperimentUpdate(Request):
    experiment_id: str
    new_name: Annotated[str, Field(min_length=1, max_length=500)]


class ExperimentTag(Request):
    experiment_id: str
    key: Key
    value: TagValue = ""


class ExperimentTagDelete(Request):
    experiment_id: str
    key: str


class ExperimentSearch(Request):
    max_results: Annotated[int, Field(ge=1, le=MAX_SEARCH_RESULTS)] = 1000
    filter: str | None = None
    order_by: list[str] = Field(default_factory=list)
    page_token: str | None = None
    view_type: str | None = None


class RunCreate(Request):
    experiment_id: str | None = None
    user_id: str | None = None
    run_name: Annotated[str, Field(max_length=500)] | None = None
    start_time: Millis | None = None
    tags: list[TagBody] = Field(default_factory=list)


class RunRef(Request):
    run_id: str | None = None
    run_uuid: str | None = None  # the pre-1.0 name of run_id; clients still send both

    def id(self) -> str:
        """The run id, whichever field carried it."""
        return self.run_id or self.run_uuid or ""


class RunUpdate(RunRef):
    status: str | None = None
    end_time: Millis | None = None
    run_name: Annotated[str, Field(max_length=500)] | None = None


class MetricBody(Request):
    key: Key
    value: float  # "NaN", "Infinity" and "-Infinity" parse too
    timestamp: Millis | None = None
    step: Int64 = 0
    # MLflow 3: a point may also be linked to a logged model, on a dataset.
    model_id: str | None = None
    dataset_name: str | None = None
    dataset_digest: str | None = None


class LogMetric(RunRef, MetricBody):
    pass


class LogParam(RunRef):
    key: Key
    value: ParamValue = ""


class SetTag(RunRef):
    key: Key
    value: TagValue = ""


class DeleteTag(RunRef):
    key: str


class LogBatch(RunRef):
    metrics: list[MetricBody] = Field(default_factory=list, max_length=MAX_BATCH_METRICS)
    params: list[ParamBody] = Field(default_factory=list, max_length=MAX_BATCH_PARAMS)
    tags: list[TagBody] = Field(default_factory=list, max_length=MAX_BATCH_TAGS)


class Dataset(Request):
    name: str
    digest: str
    source_type: str = ""
    source: str = ""
    schema_: str = Field("", alias="schema")
    profile: str = ""


class DatasetInputBody(Request):
    tags: list[KeyValue] = Field(default_factory=list)
    dataset: Dataset


class LogInputs(RunRef):
    datasets: list[DatasetInputBody] = Field(default_factory=list)


class ModelOutput(Request):
    model_id: str
    step: Int64 = 0


class LogOutputs(RunRef):
    models: list[ModelOutput] = Field(default_factory=list)


class LogModel(RunRef):
    model_json: str


class RunSearch(Request):
    experiment_ids: list[str] = Field(default_factory=list)
    filter: str | None = None
    run_view_type: str | None = None
    max_results: Annotated[int, Field(ge=1, le=MAX_SEARCH_RESULTS)] = 1000
    order_by: list[str] = Field(default_factory=list)
    page_token: str | None = None


class LoggedModelCreate(Request):
    experiment_id: str
    name: Annotated[str, Field(max_length=500)] | None = None
    model_type: str | None = None
    source_run_id: str | None = None
    params: list[KeyValue] = Field(default_factory=list)
    tags: list[KeyValue] = Field(default_factory=list)


class LoggedModelFinalize(Request):
    model_id: str | None = None
    status: str | int


class LoggedModelTags(Request):
    tags: list[KeyValue] = Field(default_factory=list)


class LoggedModelParams(Request):
    model_id: str | None = None
    params: list[KeyValue] = Field(default_factory=list)


class DatasetFilter(Request):
    dataset_name: str = ""
    dataset_digest: str | None = None


class ModelOrderBy(Request):
    field_name: str
    ascending: bool = True
    dataset_name: str | None = None
    dataset_digest: str | None = None


class LoggedModelSearch(Request):
    experiment_ids: list[str] = Field(default_factory=list)
    filter: str | None = None
    datasets: list[DatasetFilter] = Field(default_factory=list)
    max_results: Annotated[int, Field(ge=0, le=MAX_SEARCH_RESULTS)] | None = None
    order_by: list[ModelOrderBy] = Field(default_factory=list)
    page_token: str | None = None
