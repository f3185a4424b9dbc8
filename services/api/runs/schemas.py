"""Request and response shapes of the run routes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runledger.events.models import Id, Key, ParamValue, RunStatus, TagValue
from services.api.schemas import WriteResult
from services.api.serialization import MetricValue

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
# DateTime64(3) in ClickHouse ends in 2299; 9,999,999,999,999 ms is in 2286.
EpochMillis = Annotated[int, Field(ge=0, le=9_999_999_999_999, description="Milliseconds since the epoch.")]

MAX_METRICS_PER_REQUEST = 100_000
MAX_PARAMS_PER_REQUEST = 1000
MAX_TAGS_PER_REQUEST = 1000


class RunLifecycleFilter(StrEnum):
    """Which lifecycle stages a listing returns."""

    ACTIVE = "active"
    DELETED = "deleted"
    ALL = "all"


class RunInfo(BaseModel):
    """The run's own fields."""

    run_id: str
    experiment_id: str
    parent_run_id: str | None = None
    name: str
    user_id: str
    status: str = Field(description="RUNNING | SCHEDULED | FINISHED | FAILED | KILLED")
    start_time: int = Field(description="Milliseconds since the epoch.")
    end_time: int | None = Field(None, description="Milliseconds since the epoch; null while running.")
    lifecycle_stage: str = Field(description="active | deleted")


class LatestMetric(BaseModel):
    """The latest point of a metric: max by (step, timestamp, value)."""

    value: MetricValue = Field(description='A number, or "NaN" / "Infinity" / "-Infinity".')
    step: int
    timestamp: int = Field(description="Milliseconds since the epoch.")


class Run(BaseModel):
    """A run with its params, tags and the latest value of each metric."""

    info: RunInfo
    params: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, LatestMetric] = Field(default_factory=dict)


class RunList(BaseModel):
    """One page of runs, ordered by start_time DESC, run_id."""

    runs: list[Run]
    next_page_token: str | None = Field(
        None, description="Pass as page_token for the next page; null at the end."
    )


class RunTable(BaseModel):
    """Runs as columns: entry i of every list is run i (newest start_time first).

    `runs` holds the attribute columns (run_id, experiment_id, parent_run_id, name, user_id,
    status, start_time, end_time, lifecycle_stage); `params`, `tags` and `metrics` one column
    per key (null where a run lacks it; a metric's latest value, non-finite as "NaN" /
    "Infinity" / "-Infinity").
    """

    experiment_ids: list[str] = Field(description="The experiments searched.")
    count: int = Field(description="Runs in the table.")
    truncated: bool = Field(description="More runs matched than `limit`.")
    runs: dict[str, list[Any]]
    params: dict[str, list[str | None]]
    tags: dict[str, list[str | None]]
    metrics: dict[str, list[float | str | None]]


class RunCreate(BaseModel):
    """Body of POST /runs: the experiment by id or by name (created if missing), default "0"."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: Id | None = None
    experiment_name: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    name: Annotated[str, Field(max_length=500)] | None = Field(None, description="Generated when absent.")
    tags: dict[Key, TagValue] = Field(default_factory=dict)
    parent_run_id: Id | None = None
    start_time: EpochMillis | None = Field(None, description="Default: now.")

    @model_validator(mode="after")
    def _one_experiment(self) -> RunCreate:
        if self.experiment_id is not None and self.experiment_name is not None:
            raise ValueError("give experiment_id or experiment_name, not both")
        return self


class ParamsLog(BaseModel):
    """Body of POST /runs/{id}/params. Params are immutable: a different value is refused."""

    model_config = ConfigDict(extra="forbid")

    params: Annotated[dict[Key, ParamValue], Field(min_length=1, max_length=MAX_PARAMS_PER_REQUEST)]


class MetricPoint(BaseModel):
    """One metric point; value may be "NaN", "Infinity" or "-Infinity"."""

    key: Key
    value: float
    step: Int64 = 0
    timestamp: EpochMillis | None = Field(None, description="Default: now.")


class MetricsLog(BaseModel):
    """Body of POST /runs/{id}/metrics."""

    model_config = ConfigDict(extra="forbid")

    metrics: Annotated[list[MetricPoint], Field(min_length=1, max_length=MAX_METRICS_PER_REQUEST)]


class TagsSet(BaseModel):
    """Body of POST /runs/{id}/tags (existing keys are overwritten)."""

    model_config = ConfigDict(extra="forbid")

    tags: Annotated[dict[Key, TagValue], Field(min_length=1, max_length=MAX_TAGS_PER_REQUEST)]


class StatusUpdate(BaseModel):
    """Body of POST /runs/{id}/status; end_time defaults to now for terminal states."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus
    end_time: EpochMillis | None = None


class RunWriteResult(WriteResult):
    """Answer of a write to a run; `run` is its state once projected."""

    run_id: str
    run: Run | None = Field(None, description="The run after the write (null while pending).")
