"""Request and response shapes of comparisons and hyperparameter importance."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SECTIONS = ("performance", "resources", "stability", "fairness")
Section = Literal["performance", "resources", "stability", "fairness"]


def _every_section() -> list[Section]:
    return ["performance", "resources", "stability", "fairness"]


class RunGroup(BaseModel):
    """A named group of runs: explicit ids and/or the runs of an experiment matching a filter."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    run_ids: list[str] = Field(default_factory=list, max_length=2_000)
    filter: str | None = Field(
        None,
        max_length=10_000,
        description="MLflow run-search grammar over `experiment_id`, e.g. \"params.optimizer = 'adam'\".",
    )
    experiment_id: str | None = Field(
        None, max_length=64, description="The experiment the filter searches (default: the request's)."
    )


class CompareRequest(BaseModel):
    """What to compare (runs, groups, or an experiment's runs grouped by params) and which sections."""

    model_config = ConfigDict(extra="forbid")

    runs: list[str] = Field(default_factory=list, max_length=200, description="Runs, each its own column.")
    groups: list[RunGroup] = Field(default_factory=list, max_length=50)
    experiment_id: str | None = Field(
        None,
        max_length=64,
        description="With `group_by`: the experiment's runs (matching `filter`) grouped by those keys;"
        " alone: each of its runs (matching `filter`) its own column.",
    )
    group_by: list[str] = Field(
        default_factory=list, max_length=5, description="`params.<key>` or `tags.<key>`."
    )
    filter: str | None = Field(None, max_length=10_000, description="Run-search filter over `experiment_id`.")
    sections: list[Section] = Field(default_factory=_every_section)
    metrics: list[str] | None = Field(
        None,
        max_length=200,
        description="Metric keys of the performance and stability sections (default: every metric"
        " logged but system/* and per-subgroup fairness keys).",
    )
    directions: dict[str, Literal["min", "max"]] = Field(
        default_factory=dict, description="Per metric: min = lower is better (default: from its name)."
    )
    baseline: str | None = Field(None, description="The entity (run id or group name) deltas are against.")
    seed_params: list[str] = Field(
        default_factory=lambda: ["seed"],
        max_length=20,
        description="Params that only seed randomness (rl.seed_everything logs `seed`).",
    )
    ignore_params: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Other params that differ between seeds' runs without changing the configuration.",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    cv_threshold: float = Field(0.1, gt=0, description="A metric whose CV exceeds this is unstable.")


class EntityInfo(BaseModel):
    """One compared column."""

    name: str
    kind: Literal["run", "group"]
    run_ids: list[str]


class CompareResponse(BaseModel):
    """The requested sections, each as documented in docs/compare.md."""

    entities: list[EntityInfo]
    performance: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    stability: dict[str, Any] | None = None
    fairness: dict[str, Any] | None = None


class MetricImportance(BaseModel):
    """The ranked param importances of one metric."""

    metric: str
    result: dict[str, Any] = Field(
        description="method, n_runs, cv_r2, reliable, importances (ranked: param, importance, std,"
        " ci_low, ci_high, share, rank), excluded, note."
    )


class ImportanceResponse(BaseModel):
    """Hyperparameter importance of an experiment's runs, per metric."""

    experiment_id: str
    metrics: list[MetricImportance]
