"""Request and response shapes of the experiment routes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from runledger.events.models import Key, TagValue
from services.api.schemas import WriteResult

ExperimentName = Annotated[str, Field(min_length=1, max_length=500)]


class LifecycleFilter(StrEnum):
    """Which lifecycle stages a listing returns."""

    ACTIVE = "active"
    DELETED = "deleted"
    ALL = "all"


class Experiment(BaseModel):
    """An experiment as the metadata store holds it."""

    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str = Field(description="active | deleted")
    creation_time: int = Field(description="Milliseconds since the epoch.")
    last_update_time: int = Field(description="Milliseconds since the epoch.")
    tags: dict[str, str] = Field(default_factory=dict)
    shared_from: str | None = Field(
        None,
        description="Set on an experiment another tenant shared read-only with the caller's: that tenant.",
    )


class ExperimentList(BaseModel):
    """One page of experiments, newest first."""

    experiments: list[Experiment]
    next_page_token: str | None = Field(
        None, description="Pass as page_token for the next page; null at the end."
    )


class ExperimentCreate(BaseModel):
    """Body of POST /experiments."""

    model_config = ConfigDict(extra="forbid")

    name: ExperimentName
    tags: dict[Key, TagValue] = Field(default_factory=dict)
    artifact_location: str | None = None


class ExperimentUpdate(BaseModel):
    """Body of PATCH /experiments/{id}: a new name."""

    model_config = ConfigDict(extra="forbid")

    name: ExperimentName


class ExperimentWriteResult(WriteResult):
    """Answer of a write to an experiment; `experiment` is its state once projected."""

    experiment_id: str
    experiment: Experiment | None = Field(
        None, description="The experiment after the write (null while pending)."
    )
