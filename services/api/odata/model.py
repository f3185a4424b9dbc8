"""The entity model of the OData feed: entity sets, their properties, and the SQL behind each.

Each property maps to a fixed SQL expression (never to user text) in the store that holds
the entity set: Postgres for the metadata projections, ClickHouse for metric points.
`storage` says how a value is held, which decides how literals and page positions bind:

- plain: the column's own type (String, Int64, Double, Guid);
- ms: a bigint of milliseconds since the epoch, served as Edm.DateTimeOffset (runs, experiments);
- tstz: a Postgres timestamptz (findings);
- ch_time: a ClickHouse DateTime64(3, 'UTC') (metric points).

Runs carry a dynamic set of params, tags and metrics; CSDL entity types are static, so
they are long entity sets keyed by (RunId, Key) - RunParams, RunTags, RunMetrics - that a BI
model relates to Runs by RunId (see docs/bi.md for why not an open type).

An entity set with a `cte` reads a derived table rather than a stored one: BusinessMetrics
is the stakeholder roll-up's own SQL (services/api/business/repository.py) as a CTE, which
scopes itself to the tenant and readable experiments; the feed's filter, order and paging
apply to the CTE's columns (Postgres inlines it, so they still reach the joined tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from runledger.stores.clickhouse.tables import METRIC_POINTS
from services.api.business.repository import Bind, version_rows_sql

Storage = Literal["plain", "ms", "tstz", "ch_time"]
Store = Literal["postgres", "clickhouse"]

CteBuilder = Callable[[Bind, str, frozenset[str] | None], str]
"""(bind, tenant id, readable experiments or None) -> `WITH name AS (...)`, scoped to both."""

NAMESPACE = "RunLedger"
CONTAINER = "Container"


@dataclass(frozen=True, slots=True)
class Property:
    """One structural property: its EDM type, SQL expression, nullability, storage."""

    name: str
    edm: str  # Edm.String | Edm.Int64 | Edm.Double | Edm.DateTimeOffset | Edm.Guid
    expr: str
    nullable: bool = False
    storage: Storage = "plain"
    description: str = ""


@dataclass(frozen=True, slots=True)
class EntitySet:
    """An entity set and its entity type (one type per set)."""

    name: str
    type_name: str
    store: Store
    source: str  # FROM clause (Postgres) or table key (ClickHouse: resolved by clickhouse.table())
    keys: tuple[str, ...]
    properties: tuple[Property, ...]
    # How the caller's experiment grants narrow the rows: SQL over the source's aliases.
    tenant_expr: str
    experiment_expr: str
    description: str = ""
    # A derived source: the WITH clause that defines `source`, already scoped to the caller
    # (tenant_expr / experiment_expr are then unused: the CTE applies the same narrowing).
    cte: CteBuilder | None = None
    by_name: dict[str, Property] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cte is not None and self.store != "postgres":
            raise ValueError(f"{self.name}: a CTE source is Postgres SQL")
        object.__setattr__(self, "by_name", {p.name: p for p in self.properties})

    def property(self, name: str) -> Property | None:
        return self.by_name.get(name)


def _s(name: str, expr: str, nullable: bool = False, description: str = "") -> Property:
    return Property(name, "Edm.String", expr, nullable, description=description)


def _ms(name: str, expr: str, nullable: bool = False, description: str = "") -> Property:
    return Property(name, "Edm.DateTimeOffset", expr, nullable, "ms", description)


_RUNS_JOIN = "JOIN runs r ON r.tenant_id = {a}.tenant_id AND r.run_id = {a}.run_id"

EXPERIMENTS = EntitySet(
    name="Experiments",
    type_name="Experiment",
    store="postgres",
    source="experiments e",
    keys=("ExperimentId",),
    properties=(
        _s("ExperimentId", "e.experiment_id"),
        _s("Name", "e.name"),
        _s("ArtifactLocation", "e.artifact_location"),
        _s("LifecycleStage", "e.lifecycle_stage", description="active or deleted"),
        _ms("CreationTime", "e.creation_time"),
        _ms("LastUpdateTime", "e.last_update_time"),
    ),
    tenant_expr="e.tenant_id",
    experiment_expr="e.experiment_id",
    description="Experiments of the caller's tenant.",
)

RUNS = EntitySet(
    name="Runs",
    type_name="Run",
    store="postgres",
    source="runs r",
    keys=("RunId",),
    properties=(
        _s("RunId", "r.run_id"),
        _s("ExperimentId", "r.experiment_id"),
        _s("Name", "r.name"),
        _s("Status", "r.status", description="RUNNING, SCHEDULED, FINISHED, FAILED or KILLED"),
        _ms("StartTime", "r.start_time"),
        _ms("EndTime", "r.end_time", nullable=True),
        _s("UserId", "r.user_id"),
        _s("ParentRunId", "r.parent_run_id", nullable=True),
        _s("LifecycleStage", "r.lifecycle_stage", description="active or deleted"),
    ),
    tenant_expr="r.tenant_id",
    experiment_expr="r.experiment_id",
    description="Runs (attributes only; params, tags and metrics are RunParams, RunTags, RunMetrics).",
)


def _key_value(name: str, type_name: str, table: str, alias: str, what: str) -> EntitySet:
    return EntitySet(
        name=name,
        type_name=type_name,
        store="postgres",
        source=f"{table} {alias} " + _RUNS_JOIN.format(a=alias),
        keys=("RunId", "Key"),
        properties=(
            _s("RunId", f"{alias}.run_id"),
            _s("Key", f"{alias}.key"),
            _s("Value", f"{alias}.value", description=f"The {what}'s value, as text."),
            _s("ExperimentId", "r.experiment_id"),
        ),
        tenant_expr=f"{alias}.tenant_id",
        experiment_expr="r.experiment_id",
        description=f"One row per (run, {what} key): the run's {what}s as a long table.",
    )


RUN_PARAMS = _key_value("RunParams", "RunParam", "params", "p", "param")
RUN_TAGS = _key_value("RunTags", "RunTag", "tags", "t", "tag")

RUN_METRICS = EntitySet(
    name="RunMetrics",
    type_name="RunMetric",
    store="postgres",
    source="latest_metrics m " + _RUNS_JOIN.format(a="m"),
    keys=("RunId", "Key"),
    properties=(
        _s("RunId", "m.run_id"),
        _s("Key", "m.key"),
        Property("Value", "Edm.Double", "m.value", description="The latest value (highest step)."),
        Property("Step", "Edm.Int64", "m.step", description="Step of the latest value."),
        _ms("Timestamp", "m.timestamp"),
        _s("ExperimentId", "r.experiment_id"),
    ),
    tenant_expr="m.tenant_id",
    experiment_expr="r.experiment_id",
    description="The latest value of each metric of each run (min/max: the runs export or MetricPoints).",
)

_SEVERITY = (
    "(CASE WHEN jsonb_typeof(f.body -> 'severity') = 'number' THEN (f.body ->> 'severity')::float8 END)"
)

FINDINGS = EntitySet(
    name="Findings",
    type_name="Finding",
    store="postgres",
    source="findings f",
    keys=("EventId",),
    properties=(
        Property("EventId", "Edm.Guid", "f.event_id"),
        _s("RunId", "f.run_id", nullable=True),
        _s("ExperimentId", "f.experiment_id", nullable=True),
        _s("Kind", "f.kind", description="e.g. spike, divergence, lint.metric_myopia, attribution"),
        Property("OccurredAt", "Edm.DateTimeOffset", "f.occurred_at", storage="tstz"),
        Property("Severity", "Edm.Double", _SEVERITY, nullable=True),
        _s("MetricKey", "(f.body ->> 'key')", nullable=True),
        _s("Message", "(f.body -> 'evidence' ->> 'message')", nullable=True),
        _s("Body", "f.body::text", description="The finding's whole payload, JSON text."),
    ),
    tenant_expr="f.tenant_id",
    experiment_expr="f.experiment_id",
    description="Anomalies, lint results and attributions.",
)

METRIC_POINTS_SET = EntitySet(
    name="MetricPoints",
    type_name="MetricPoint",
    store="clickhouse",
    source=METRIC_POINTS.name,
    keys=("RunId", "Key", "Step", "Timestamp"),
    properties=(
        _s("RunId", "run_id"),
        _s("Key", "key"),
        Property("Step", "Edm.Int64", "step"),
        Property("Timestamp", "Edm.DateTimeOffset", "timestamp", storage="ch_time"),
        Property("Value", "Edm.Double", "value"),
        _s("ExperimentId", "experiment_id"),
    ),
    tenant_expr="tenant_id",
    experiment_expr="experiment_id",
    description="Every logged metric point (ClickHouse), one row per point.",
)


def _business_rollup(bind: Bind, tenant_id: str, readable: frozenset[str] | None) -> str:
    # The report's own query (level=version), unfiltered: $filter narrows it from outside.
    return f"WITH business_rollup AS ({version_rows_sql(bind, tenant_id, readable=readable)})"


BUSINESS_METRICS = EntitySet(
    name="BusinessMetrics",
    type_name="BusinessMetric",
    store="postgres",
    source="business_rollup br",
    # model_versions is keyed by (model, version) and a version has one source run, whose
    # latest value per key is one row: (model, version, metric) is unique.
    keys=("ModelName", "Version", "MetricKey"),
    properties=(
        _s("ModelName", "br.model_name"),
        Property("Version", "Edm.Int64", "br.version"),
        _s("Stage", "br.stage", description="the version's stage, e.g. Staging, Production"),
        _s("RunId", "br.run_id", description="the version's source run"),
        _s("ExperimentId", "br.experiment_id"),
        _s("MetricKey", "br.metric", description="the declared business metric's key"),
        _s("Category", "br.category", description="conversion_rate_impact, cost_savings, revenue_lift, ..."),
        _s("Unit", "br.unit", description="e.g. %; '' when Currency alone says it"),
        _s("Currency", "br.currency", description="ISO 4217 code, '' when the value is not money"),
        _s("Owner", "br.owner"),
        _s("Direction", "br.direction", description="max or min: which way is better"),
        Property(
            "Value",
            "Edm.Double",
            "br.value",
            nullable=True,
            description="The run's latest value; null if not finite.",
        ),
        Property("Step", "Edm.Int64", "br.step", description="Step of the latest value."),
        _ms("Timestamp", "br.timestamp"),
    ),
    tenant_expr="",
    experiment_expr="",
    description="The stakeholder report (level=version): one row per (model version, business metric).",
    cte=_business_rollup,
)

ENTITY_SETS: tuple[EntitySet, ...] = (
    EXPERIMENTS,
    RUNS,
    RUN_PARAMS,
    RUN_TAGS,
    RUN_METRICS,
    METRIC_POINTS_SET,
    FINDINGS,
    BUSINESS_METRICS,
)
BY_NAME = {s.name: s for s in ENTITY_SETS}
