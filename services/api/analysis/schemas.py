"""Request and response shapes of anomalies, attributions and detector settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DETECTOR_KINDS = ("non_finite", "spike", "divergence", "plateau", "level_shift", "outlier_run")


class Anomaly(BaseModel):
    """One finding of the streaming detectors (an analysis.anomaly_detected event)."""

    event_id: str
    run_id: str | None
    experiment_id: str | None
    key: str | None = Field(description="The metric.")
    step: int | None = Field(description="The step of the offending point.")
    kind: str = Field(description=" | ".join(DETECTOR_KINDS))
    severity: float | None = Field(description="0..1.")
    message: str | None = Field(description="One plain sentence.")
    evidence: dict[str, Any] = Field(description="The numbers behind it (values, thresholds, windows).")
    occurred_at: int = Field(description="When it was reported, ms since the epoch.")


class AnomalyList(BaseModel):
    """One page of anomalies, newest first."""

    anomalies: list[Anomaly]
    next_page_token: str | None = None


class RunSet(BaseModel):
    """A set of runs of the experiment: explicit ids, and/or a run-search filter."""

    model_config = ConfigDict(extra="forbid")

    run_ids: list[str] = Field(default_factory=list, max_length=10_000)
    filter: str | None = Field(
        None,
        max_length=10_000,
        description="MLflow run-search grammar, e.g. \"params.optimizer = 'adam' and tags.data = 'v2'\".",
    )
    recent: int | None = Field(
        None, ge=1, le=10_000, description="Baseline only: the experiment's N most recent other runs."
    )


class AttributionCreate(BaseModel):
    """Attribute the shift of `metric` between a baseline and a candidate set of runs."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: str = Field(min_length=1, max_length=64)
    metric: str = Field(min_length=1, max_length=250)
    candidate: RunSet
    baseline: RunSet = Field(
        default_factory=lambda: RunSet(recent=200),
        description="Default: the experiment's 200 most recent runs that are not candidates.",
    )
    factors: list[str] | None = Field(
        None,
        max_length=500,
        description="Only these factors: params.<k>, tags.<k>, code.commit, env.<pkg>, ...",
    )
    graph: list[tuple[str, str]] | None = Field(
        None,
        max_length=5_000,
        description="Causal graph as (cause, effect) edges over factor names and 'metric'; default: built"
        " from the recorded factors (data versions, hardware and environment as confounders).",
    )


class AttributionStatus(BaseModel):
    """An attribution: its request, its status, and when done its ranked factors."""

    attribution_id: str
    experiment_id: str
    metric: str
    status: Literal["pending", "running", "done", "failed"]
    requested_at: int = Field(description="ms since the epoch.")
    finished_at: int | None = None
    error: str | None = None
    trigger: dict[str, Any] = Field(default_factory=dict, description="What asked for it.")
    candidate_run_ids: list[str]
    baseline_run_ids: list[str] = Field(description="Empty: the experiment's recent runs, chosen when run.")
    factors: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Ranked by contribution: factor, contribution, ci_low, ci_high, refutations, sentence, ...",
    )
    result: dict[str, Any] | None = Field(None, description="The whole report when done.")


class AttributionList(BaseModel):
    """Attributions of the tenant, newest first."""

    attributions: list[AttributionStatus]


class AnomalySetting(BaseModel):
    """Detector overrides for a tenant, an experiment and/or metric keys (glob, '' = any)."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: str = Field("", max_length=64)
    key: str = Field(
        "", max_length=250, description="A metric key or a glob such as `val/*`; '' = every metric."
    )
    overrides: dict[str, Any] = Field(
        description='Fields of the detector configuration, e.g. {"direction": "max", "warmup_steps": 50}.'
    )


class AnomalySettings(BaseModel):
    """The tenant's detector settings, and the defaults they override."""

    settings: list[AnomalySetting]
    defaults: dict[str, Any]
