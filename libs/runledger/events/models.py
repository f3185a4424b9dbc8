"""The event contract: one envelope, one typed payload per run-lifecycle event.

Every view RunLedger serves is a projection of these events. The models are the
source of truth; `schemas/v1/*.json` is generated from them (`runledger schemas`)
and a test fails when the two drift. Changes are additive (new optional fields);
payloads ignore unknown fields so a consumer built for version N reads N+1.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

_KEY_RE = re.compile(r"^[/\w.\- :]*\Z")
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000


def _check_key(key: str) -> str:
    """Keys of metrics, params and tags: MLflow's rules, so both front ends agree."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"key must be 1..{MAX_KEY_LENGTH} characters")
    if not _KEY_RE.match(key):
        raise ValueError(f"key {key!r} may only contain letters, digits, '_', '-', '.', ' ', ':' and '/'")
    if key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"key {key!r} must be a relative path without '..'")
    return key


Key = Annotated[str, AfterValidator(_check_key)]
ParamValue = Annotated[str, Field(max_length=MAX_PARAM_VALUE_LENGTH)]
TagValue = Annotated[str, Field(max_length=MAX_TAG_VALUE_LENGTH)]
NonFinite = Literal["NaN", "Infinity", "-Infinity"]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")]


class RunStatus(StrEnum):
    """Run states, as MLflow names them."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Payload(BaseModel):
    """Base of every payload: unknown fields are ignored (forward compatibility)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- experiments -------------------------------------------------------------------------


class ExperimentCreatedPayload(Payload):
    name: Annotated[str, Field(min_length=1, max_length=500)]
    artifact_location: str | None = None
    tags: dict[Key, TagValue] = Field(default_factory=dict)


class ExperimentRenamedPayload(Payload):
    name: Annotated[str, Field(min_length=1, max_length=500)]


class EmptyPayload(Payload):
    pass


class ExperimentTagSetPayload(Payload):
    key: Key
    value: TagValue


class ExperimentTagDeletedPayload(Payload):
    key: Key


# --- runs ----------------------------------------------------------------------------------


class RunStartedPayload(Payload):
    name: Annotated[str, Field(max_length=500)] = ""
    parent_run_id: Id | None = None
    start_time: int = Field(description="Milliseconds since the epoch.")
    user_id: str = ""
    tags: dict[Key, TagValue] = Field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING


class ParamsLoggedPayload(Payload):
    params: dict[Key, ParamValue]


_PACKED = "or a base64 string of its little-endian binary ({})"


class MetricsLoggedPayload(Payload):
    """A columnar batch of metric points: point i is (keys[key_index[i]], values[i], steps[i], timestamps[i]).

    Each numeric column is a JSON array or, more compactly, a base64 string of its
    little-endian binary. Non-finite values in a JSON array are the strings "NaN",
    "Infinity", "-Infinity". This model documents the contract; the projector
    validates batches column-wise with numpy (runledger.events.metric_columns).
    """

    keys: list[Key] = Field(min_length=1, description="Distinct metric keys of this batch.")
    key_index: list[Annotated[int, Field(ge=0)]] | str = Field(
        description="Per point, the position of its key in `keys`; " + _PACKED.format("int32")
    )
    values: list[float | NonFinite] | str = Field(
        description="Per point, the value; " + _PACKED.format("float64")
    )
    steps: list[int] | str = Field(description="Per point, the step; " + _PACKED.format("int64"))
    timestamps: list[int] | str = Field(
        description="Per point, milliseconds since the epoch; " + _PACKED.format("int64")
    )


class TagsSetPayload(Payload):
    tags: dict[Key, TagValue]


class TagsDeletedPayload(Payload):
    keys: list[Key]


class ArtifactLoggedPayload(Payload):
    path: Annotated[str, Field(min_length=1, max_length=1024)]
    size: int = Field(ge=0)
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    media_type: str = "application/octet-stream"


class DatasetInput(Payload):
    name: str
    digest: str
    source_type: str = ""
    source: str = ""
    schema_: str = Field("", alias="schema")
    profile: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class InputsLoggedPayload(Payload):
    datasets: list[DatasetInput]


class ModelOutput(Payload):
    model_id: Id
    step: int = 0


class OutputsLoggedPayload(Payload):
    """Logged models (MLflow 3) a run produced, each at a step (MLflow's runs/outputs)."""

    models: list[ModelOutput] = Field(min_length=1)


class CodeStateCapturedPayload(Payload):
    """The code a run ran: git state of its working tree and how the process was started."""

    commit: str = ""
    branch: str = ""
    remote_url: str = Field("", description="URL of the remote, without credentials.")
    dirty: bool = False
    diff_artifact: str | None = Field(
        None, description="Run artifact path of the diff (runledger/code/diff.patch)."
    )
    entry_point: str = ""
    args: list[str] = Field(default_factory=list)
    diff: str | None = Field(
        None,
        description="`git diff HEAD` of a dirty tree, inline and size-capped, only when the SDK could not"
        " store it as the artifact named by `diff_artifact` (offline, or no API to upload to).",
    )
    diff_truncated: bool = Field(False, description="True when `diff` was cut at the size cap.")


class EnvironmentCapturedPayload(Payload):
    python_version: str
    platform: str
    packages: dict[str, str] = Field(default_factory=dict)
    environment_hash: str
    cuda_version: str | None = None
    driver_version: str | None = None
    conda_env: str | None = Field(None, description="Name of the active conda environment, if any.")
    conda_export: str | None = Field(
        None, description="`conda env export` of the active conda environment (size-capped)."
    )


class StatusChangedPayload(Payload):
    status: RunStatus
    end_time: int | None = Field(None, description="Milliseconds since the epoch; set for terminal states.")


class ModelVersionRegisteredPayload(Payload):
    model_name: str
    version: int = Field(ge=1)
    source: str = ""
    stage: str = "None"


LoggedModelStatus = Literal[
    "LOGGED_MODEL_STATUS_UNSPECIFIED",
    "LOGGED_MODEL_PENDING",
    "LOGGED_MODEL_READY",
    "LOGGED_MODEL_UPLOAD_FAILED",
]


class LoggedModelCreatedPayload(Payload):
    """An MLflow 3 logged model, in the envelope's experiment (its source run, if any, too)."""

    model_id: Id
    name: Annotated[str, Field(min_length=1, max_length=500)]
    artifact_location: str
    creation_timestamp_ms: int = Field(description="Milliseconds since the epoch.")
    status: LoggedModelStatus = "LOGGED_MODEL_PENDING"
    model_type: str = ""
    source_run_id: Id | None = None
    creator_id: str = Field("", description="The user who created it.")
    tags: dict[Key, TagValue] = Field(default_factory=dict)
    params: dict[Key, ParamValue] = Field(default_factory=dict)


class LoggedModelMetric(Payload):
    """A metric point linked to a logged model (MLflow keeps every point, not only the latest)."""

    key: Key
    value: float | NonFinite
    timestamp: int
    step: int = 0
    run_id: Id | None = None
    dataset_name: str = ""
    dataset_digest: str = ""


class LoggedModelUpdatedPayload(Payload):
    """A change of a logged model: its status, tags set or deleted, params added, metrics linked."""

    model_id: Id
    status: LoggedModelStatus | None = None
    tags: dict[Key, TagValue] = Field(default_factory=dict)
    deleted_tags: list[str] = Field(default_factory=list)
    params: dict[Key, ParamValue] = Field(default_factory=dict)
    metrics: list[LoggedModelMetric] = Field(default_factory=list)


class LoggedModelDeletedPayload(Payload):
    model_id: Id


class LineageLinkedPayload(Payload):
    source_kind: Literal["dataset", "run", "model"]
    source_id: str
    target_kind: Literal["dataset", "run", "model"]
    target_id: str
    relation: str = Field(description="e.g. input, output, derived_from, produced")


class AnomalyDetectedPayload(Payload):
    key: Key
    step: int
    kind: str
    severity: float
    evidence: dict[str, Any] = Field(default_factory=dict)


class AttributionRequestedPayload(Payload):
    """Attribute the shift of `metric` between two sets of runs of the envelope's experiment."""

    attribution_id: Id
    metric: Key
    candidate_run_ids: list[Id] = Field(min_length=1, max_length=10_000)
    baseline_run_ids: list[Id] = Field(
        default_factory=list,
        max_length=10_000,
        description="Empty: the experiment's most recent `baseline_recent` other runs that have the metric.",
    )
    baseline_recent: int = Field(200, ge=1, le=10_000)
    factors: list[str] | None = Field(None, description="Only these factors (e.g. params.lr, code.commit).")
    graph: list[tuple[str, str]] | None = Field(
        None, description="Causal graph as (cause, effect) edges over factor names and 'metric'."
    )
    trigger: dict[str, Any] = Field(
        default_factory=dict, description="What asked: {'by': 'api'} or the finding that started it."
    )


class AttributionComputedPayload(Payload):
    attribution_id: str
    metric: Key
    status: Literal["done", "failed"]
    factors: list[dict[str, Any]] = Field(default_factory=list, description="Ranked by contribution.")
    result: dict[str, Any] = Field(
        default_factory=dict, description="The whole report (runledger.analysis.attribution)."
    )
    error: str | None = None


# --- retention (docs/retention.md) ---------------------------------------------------------


class RetentionPolicySetPayload(Payload):
    """A tenant's retention policy (replaces the previous one); null days = kept forever."""

    metric_points_days: int | None = Field(
        365, ge=1, le=36_500, description="Days raw metric points are kept after RunLedger received them."
    )
    artifacts_days: int | None = Field(
        183, ge=1, le=36_500, description="Days a run's artifacts are kept after the run ended."
    )
    keep_production_models: bool = Field(
        True, description="Keep the binaries of model versions ever marked Production forever."
    )


class ExpiredSeries(Payload):
    key: Key
    points: int = Field(ge=0)
    first_timestamp: int = Field(description="Milliseconds since the epoch.")
    last_timestamp: int = Field(description="Milliseconds since the epoch.")


class MetricsExpiredPayload(Payload):
    """Raw points of the run received before `before` were removed by the retention policy."""

    before: int = Field(description="Milliseconds since the epoch: points received before this went.")
    policy_days: int | None = None
    series: list[ExpiredSeries] = Field(default_factory=list)


class ExpiredArtifact(Payload):
    path: Annotated[str, Field(min_length=1, max_length=1024)]
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    size: int = Field(ge=0)


class ArtifactsExpiredPayload(Payload):
    """These artifact rows of the run were removed by the retention policy (a row is removed
    only while it still has this digest); their blobs go once no artifact row references them."""

    before: int = Field(description="Milliseconds since the epoch: artifacts of runs ended before this went.")
    policy_days: int | None = None
    artifacts: list[ExpiredArtifact] = Field(min_length=1)


# --- envelope ------------------------------------------------------------------------------


class Producer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sdk: str = Field(description="Who produced the event: python-sdk, api, analysis, ...")
    version: str = ""
    host: str = ""


class EventType(StrEnum):
    """Every event type; the value is the wire name."""

    EXPERIMENT_CREATED = "experiment.created"
    EXPERIMENT_RENAMED = "experiment.renamed"
    EXPERIMENT_DELETED = "experiment.deleted"
    EXPERIMENT_RESTORED = "experiment.restored"
    EXPERIMENT_TAG_SET = "experiment.tag_set"
    EXPERIMENT_TAG_DELETED = "experiment.tag_deleted"
    RUN_STARTED = "run.started"
    PARAMS_LOGGED = "run.params_logged"
    METRICS_LOGGED = "run.metrics_logged"
    TAGS_SET = "run.tags_set"
    TAGS_DELETED = "run.tags_deleted"
    ARTIFACT_LOGGED = "run.artifact_logged"
    INPUTS_LOGGED = "run.inputs_logged"
    OUTPUTS_LOGGED = "run.outputs_logged"
    CODE_STATE_CAPTURED = "run.code_state_captured"
    ENVIRONMENT_CAPTURED = "run.environment_captured"
    STATUS_CHANGED = "run.status_changed"
    RUN_DELETED = "run.deleted"
    RUN_RESTORED = "run.restored"
    METRICS_EXPIRED = "run.metrics_expired"
    ARTIFACTS_EXPIRED = "run.artifacts_expired"
    MODEL_VERSION_REGISTERED = "model.version_registered"
    LOGGED_MODEL_CREATED = "model.logged"
    LOGGED_MODEL_UPDATED = "model.logged_model_updated"
    LOGGED_MODEL_DELETED = "model.logged_model_deleted"
    LINEAGE_LINKED = "lineage.linked"
    ANOMALY_DETECTED = "analysis.anomaly_detected"
    ATTRIBUTION_REQUESTED = "analysis.attribution_requested"
    ATTRIBUTION_COMPUTED = "analysis.attribution_computed"
    RETENTION_POLICY_SET = "tenant.retention_policy_set"


PAYLOAD_TYPES: dict[EventType, type[Payload]] = {
    EventType.EXPERIMENT_CREATED: ExperimentCreatedPayload,
    EventType.EXPERIMENT_RENAMED: ExperimentRenamedPayload,
    EventType.EXPERIMENT_DELETED: EmptyPayload,
    EventType.EXPERIMENT_RESTORED: EmptyPayload,
    EventType.EXPERIMENT_TAG_SET: ExperimentTagSetPayload,
    EventType.EXPERIMENT_TAG_DELETED: ExperimentTagDeletedPayload,
    EventType.RUN_STARTED: RunStartedPayload,
    EventType.PARAMS_LOGGED: ParamsLoggedPayload,
    EventType.METRICS_LOGGED: MetricsLoggedPayload,
    EventType.TAGS_SET: TagsSetPayload,
    EventType.TAGS_DELETED: TagsDeletedPayload,
    EventType.ARTIFACT_LOGGED: ArtifactLoggedPayload,
    EventType.INPUTS_LOGGED: InputsLoggedPayload,
    EventType.OUTPUTS_LOGGED: OutputsLoggedPayload,
    EventType.CODE_STATE_CAPTURED: CodeStateCapturedPayload,
    EventType.ENVIRONMENT_CAPTURED: EnvironmentCapturedPayload,
    EventType.STATUS_CHANGED: StatusChangedPayload,
    EventType.RUN_DELETED: EmptyPayload,
    EventType.RUN_RESTORED: EmptyPayload,
    EventType.METRICS_EXPIRED: MetricsExpiredPayload,
    EventType.ARTIFACTS_EXPIRED: ArtifactsExpiredPayload,
    EventType.MODEL_VERSION_REGISTERED: ModelVersionRegisteredPayload,
    EventType.LOGGED_MODEL_CREATED: LoggedModelCreatedPayload,
    EventType.LOGGED_MODEL_UPDATED: LoggedModelUpdatedPayload,
    EventType.LOGGED_MODEL_DELETED: LoggedModelDeletedPayload,
    EventType.LINEAGE_LINKED: LineageLinkedPayload,
    EventType.ANOMALY_DETECTED: AnomalyDetectedPayload,
    EventType.ATTRIBUTION_REQUESTED: AttributionRequestedPayload,
    EventType.ATTRIBUTION_COMPUTED: AttributionComputedPayload,
    EventType.RETENTION_POLICY_SET: RetentionPolicySetPayload,
}

# Events that concern one run: their envelope must carry run_id (and experiment_id).
RUN_SCOPED = frozenset(t for t in EventType if t.value.startswith("run.")) | {EventType.ANOMALY_DETECTED}
# Logged models (MLflow 3) belong to an experiment; their model_id is in the payload.
LOGGED_MODEL_EVENTS = frozenset(
    {EventType.LOGGED_MODEL_CREATED, EventType.LOGGED_MODEL_UPDATED, EventType.LOGGED_MODEL_DELETED}
)
EXPERIMENT_SCOPED = (
    frozenset(t for t in EventType if t.value.startswith("experiment."))
    | {EventType.ATTRIBUTION_REQUESTED, EventType.ATTRIBUTION_COMPUTED}
    | LOGGED_MODEL_EVENTS
)
# Events a platform service (the analysis service, holding a superadmin key) may publish
# for any tenant: what it concludes about a tenant's runs, never the runs themselves.
# The retention sweeper records what a tenant's policy removed the same way.
PLATFORM_REPORTED = frozenset(t for t in EventType if t.value.startswith("analysis.")) | {
    EventType.METRICS_EXPIRED,
    EventType.ARTIFACTS_EXPIRED,
}
# Events only a tenant admin (or a platform superadmin) may write: policies, and the
# records of deletions they decide. An engineer's key writing one is dead-lettered.
ADMIN_ONLY = frozenset(
    {EventType.RETENTION_POLICY_SET, EventType.METRICS_EXPIRED, EventType.ARTIFACTS_EXPIRED}
)


class Envelope(BaseModel):
    """What every event on the topic looks like; `payload` is typed by `type`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    tenant_id: Id
    type: EventType
    schema_version: int = Field(SCHEMA_VERSION, ge=1)
    occurred_at: datetime
    run_id: Id | None = None
    experiment_id: Id | None = None
    producer: Producer
    key_id: str | None = None
    signature: str | None = None
    payload: dict[str, Any]

    @model_validator(mode="after")
    def _scope_present(self) -> Envelope:
        if self.type in RUN_SCOPED and (self.run_id is None or self.experiment_id is None):
            raise ValueError(f"{self.type.value} needs run_id and experiment_id")
        if self.type in EXPERIMENT_SCOPED and self.experiment_id is None:
            raise ValueError(f"{self.type.value} needs experiment_id")
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must carry a time zone")
        return self

    def typed_payload(self) -> Payload:
        """The payload validated against the model of this event's type."""
        return PAYLOAD_TYPES[self.type].model_validate(self.payload)


def utc_now() -> datetime:
    """Now, in UTC with millisecond precision (what the archive stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
