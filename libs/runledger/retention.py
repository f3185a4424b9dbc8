"""Retention policies: what a tenant keeps, and the plan of what goes (docs/retention.md, ADR 0012).

Pure domain logic, shared by `GET /api/v1/retention/plan`, `runledger retention plan|apply`
and the sweeper: no web framework, no database driver. Adapters gather the facts
(metric series with points past the cutoff, artifact rows with their run's age, the
production model versions, how often each digest is referenced) and `build_plan` decides.

The rules:

- Raw metric points go `metric_points_days` after RunLedger received them (their
  ingestion time, metric_points.ingested_at), whatever their client timestamp: a run
  synced from offline mode or a history imported from MLflow arrives with old timestamps
  and must not be deleted on arrival. The ClickHouse TTL applies the same rule one grace
  day later. Plans still report the client timestamps of the points that go.
  The 64-step min/max rollup and the latest value of each series are summaries, not raw
  points: they are kept with the run, so old runs still chart at coarse resolution.
- A run's artifacts go `artifacts_days` after the run ended (its start time when it never
  reported an end), except the binaries of model versions ever marked Production, which
  are kept forever while `keep_production_models` holds.
- A blob (content-addressed: one blob per digest, shared by every path, run and tenant
  that logged the same bytes) is deleted only when no artifact row that stays still
  references its digest.
- `None` days keep that kind of data forever.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

DEFAULT_METRIC_POINTS_DAYS = 365
DEFAULT_ARTIFACTS_DAYS = 183  # six months
# Longest finite retention: fits the UInt16 column ClickHouse's TTL reads (0 = forever).
MAX_DAYS = 36_500
# The ClickHouse TTL removes a point this many days after the sweeper would (both by the
# point's ingestion time): the sweeper records every deletion as an event first, and the TTL
# is the backstop when none runs.
TTL_GRACE_DAYS = 1
PRODUCTION_STAGE = "production"
# Where a model version without a source path keeps its binary, by MLflow convention.
MODEL_DIRECTORIES = ("model", "models")

_RUNS_URI = re.compile(r"^runs:/(?P<run>[^/]+)/?")
_PROXY_URI = re.compile(r"^mlflow-artifacts:/+[^/]+/(?P<run>[^/]+)/artifacts/?")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What one tenant keeps; the defaults are the platform's seed defaults."""

    metric_points_days: int | None = DEFAULT_METRIC_POINTS_DAYS
    artifacts_days: int | None = DEFAULT_ARTIFACTS_DAYS
    keep_production_models: bool = True

    def __post_init__(self) -> None:
        for name in ("metric_points_days", "artifacts_days"):
            days = getattr(self, name)
            if days is not None and not 1 <= days <= MAX_DAYS:
                raise ValueError(f"{name} must be 1..{MAX_DAYS} days, or null to keep forever")

    @property
    def clickhouse_days(self) -> int:
        """The value of metric_points.retention_days for this policy (0 = forever)."""
        return self.metric_points_days or 0

    def metric_cutoff(self, as_of: datetime) -> datetime | None:
        """Points received (ingested) before this instant go; None when points are kept forever."""
        return None if self.metric_points_days is None else as_of - timedelta(days=self.metric_points_days)

    def artifact_cutoff(self, as_of: datetime) -> datetime | None:
        """Artifacts of runs that ended before this instant go; None when kept forever."""
        return None if self.artifacts_days is None else as_of - timedelta(days=self.artifacts_days)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric_points_days": self.metric_points_days,
            "artifacts_days": self.artifacts_days,
            "keep_production_models": self.keep_production_models,
        }


DEFAULT_POLICY = RetentionPolicy()


def ms(at: datetime) -> int:
    """Milliseconds since the epoch."""
    return int(at.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


# ------------------------------------------------------------------------------ facts


@dataclass(frozen=True, slots=True)
class SeriesFact:
    """Points of one series received before the metric cutoff (what the store holds now).

    The timestamps are the points' client timestamps (reported: what the user logged);
    `first_ingested_ms` is when the oldest of them was received (the rule: ingestion age)."""

    run_id: str
    experiment_id: str
    key: str
    points: int
    first_timestamp_ms: int
    last_timestamp_ms: int
    first_ingested_ms: int


@dataclass(frozen=True, slots=True)
class ArtifactFact:
    """An artifact row of a run that ended before the artifact cutoff."""

    run_id: str
    experiment_id: str
    path: str
    digest: str
    size: int
    run_ended_ms: int  # the run's end time, else its start time


@dataclass(frozen=True, slots=True)
class ProductionVersion:
    """A model version ever marked Production: the run it came from and its source."""

    model_name: str
    version: int
    run_id: str
    source: str


def model_path(source: str) -> str:
    """The artifact path (relative to the run's root) a model version's source names; '' if none.

    Sources are `runs:/<run>/<path>`, `mlflow-artifacts:/<exp>/<run>/artifacts/<path>`, or
    a plain relative path.
    """
    path = _PROXY_URI.sub("", _RUNS_URI.sub("", source.strip()))
    if "://" in path or path.startswith("/"):  # some other store: nothing of ours to protect
        return ""
    return path.strip("/")


def source_run(source: str) -> str:
    """The run a `runs:/` or `mlflow-artifacts:/` source names ('' for any other source)."""
    match = _RUNS_URI.match(source.strip()) or _PROXY_URI.match(source.strip())
    return match["run"] if match else ""


def protects(version: ProductionVersion, artifact: ArtifactFact) -> bool:
    """Whether this production version's binary includes the artifact (same run, under its path).

    The run is the version's recorded run, else the one its source names. A version whose
    source names no path protects the run's model/ and models/ directories.
    """
    if (version.run_id or source_run(version.source)) != artifact.run_id:
        return False
    path = model_path(version.source)
    prefixes = (path,) if path else MODEL_DIRECTORIES
    return any(artifact.path == p or artifact.path.startswith(p + "/") for p in prefixes)


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class ExpiredSeries:
    """Points of one series that go: how many, and the span of their client timestamps."""

    run_id: str
    experiment_id: str
    key: str
    points: int
    first_timestamp_ms: int
    last_timestamp_ms: int


@dataclass(frozen=True, slots=True)
class ExpiredArtifact:
    run_id: str
    experiment_id: str
    path: str
    digest: str
    size: int
    run_ended_ms: int


@dataclass(frozen=True, slots=True)
class KeptArtifact:
    """An artifact past the cutoff that stays, and why (a production model's binary)."""

    run_id: str
    path: str
    digest: str
    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class FreedBlob:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """What applying the tenant's policy at `as_of` removes (and what it keeps on purpose)."""

    tenant_id: str
    policy: RetentionPolicy
    as_of_ms: int
    metric_cutoff_ms: int | None
    artifact_cutoff_ms: int | None
    series: tuple[ExpiredSeries, ...] = ()
    artifacts: tuple[ExpiredArtifact, ...] = ()
    kept: tuple[KeptArtifact, ...] = ()
    blobs: tuple[FreedBlob, ...] = ()

    @property
    def points(self) -> int:
        return sum(s.points for s in self.series)

    @property
    def artifact_bytes(self) -> int:
        return sum(a.size for a in self.artifacts)

    @property
    def freed_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def empty(self) -> bool:
        return not self.series and not self.artifacts

    def artifacts_by_run(self) -> dict[str, list[ExpiredArtifact]]:
        out: dict[str, list[ExpiredArtifact]] = {}
        for artifact in self.artifacts:
            out.setdefault(artifact.run_id, []).append(artifact)
        return out

    def series_by_run(self) -> dict[str, list[ExpiredSeries]]:
        out: dict[str, list[ExpiredSeries]] = {}
        for series in self.series:
            out.setdefault(series.run_id, []).append(series)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (API answer, `runledger retention plan --json`)."""
        return {
            "tenant_id": self.tenant_id,
            "policy": self.policy.to_dict(),
            "as_of": self.as_of_ms,
            "metric_cutoff": self.metric_cutoff_ms,
            "artifact_cutoff": self.artifact_cutoff_ms,
            "totals": {
                "series": len(self.series),
                "points": self.points,
                "artifacts": len(self.artifacts),
                "artifact_bytes": self.artifact_bytes,
                "blobs": len(self.blobs),
                "freed_bytes": self.freed_bytes,
                "kept_production_artifacts": len(self.kept),
            },
            "series": [
                {
                    "run_id": s.run_id,
                    "experiment_id": s.experiment_id,
                    "key": s.key,
                    "points": s.points,
                    "first_timestamp": s.first_timestamp_ms,
                    "last_timestamp": s.last_timestamp_ms,
                }
                for s in self.series
            ],
            "artifacts": [
                {
                    "run_id": a.run_id,
                    "experiment_id": a.experiment_id,
                    "path": a.path,
                    "digest": a.digest,
                    "size": a.size,
                    "run_ended": a.run_ended_ms,
                }
                for a in self.artifacts
            ],
            "kept": [
                {"run_id": k.run_id, "path": k.path, "digest": k.digest, "size": k.size, "reason": k.reason}
                for k in self.kept
            ],
            "blobs": [{"digest": b.digest, "size": b.size} for b in self.blobs],
        }


def build_plan(
    tenant_id: str,
    policy: RetentionPolicy,
    as_of: datetime,
    series: Iterable[SeriesFact],
    artifacts: Iterable[ArtifactFact],
    production: Sequence[ProductionVersion],
    references: Mapping[str, int],
) -> RetentionPlan:
    """The plan, from facts gathered with the cutoffs of `policy` at `as_of`.

    `series` and `artifacts` are what the stores hold past the cutoffs: series whose points
    were received before the metric cutoff, artifacts of runs that ended before the artifact
    cutoff (facts beyond them are ignored, so an adapter may over-fetch); `references` is, for each digest of those
    artifacts, how many artifact rows of any tenant reference it now.
    """
    metric_cutoff = policy.metric_cutoff(as_of)
    artifact_cutoff = policy.artifact_cutoff(as_of)
    expired_series: list[ExpiredSeries] = []
    if metric_cutoff is not None:
        limit = ms(metric_cutoff)
        for s in series:
            # Ingestion age decides; a point's own timestamp may be years older (offline
            # sync, imports) and is only reported.
            if s.points > 0 and s.first_ingested_ms < limit:
                expired_series.append(
                    ExpiredSeries(
                        s.run_id, s.experiment_id, s.key, s.points, s.first_timestamp_ms, s.last_timestamp_ms
                    )
                )
    expired: list[ExpiredArtifact] = []
    kept: list[KeptArtifact] = []
    if artifact_cutoff is not None:
        limit = ms(artifact_cutoff)
        for a in artifacts:
            if a.run_ended_ms >= limit:
                continue
            guard = (
                next((v for v in production if protects(v, a)), None)
                if policy.keep_production_models
                else None
            )
            if guard is not None:
                reason = f"binary of model version {guard.model_name}/{guard.version}, ever in Production"
                kept.append(KeptArtifact(a.run_id, a.path, a.digest, a.size, reason))
                continue
            expired.append(
                ExpiredArtifact(a.run_id, a.experiment_id, a.path, a.digest, a.size, a.run_ended_ms)
            )
    # A blob goes when every row that references it goes.
    going: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for e in expired:
        going[e.digest] = going.get(e.digest, 0) + 1
        sizes[e.digest] = e.size
    blobs = [FreedBlob(d, sizes[d]) for d, n in sorted(going.items()) if references.get(d, 0) <= n]
    return RetentionPlan(
        tenant_id=tenant_id,
        policy=policy,
        as_of_ms=ms(as_of),
        metric_cutoff_ms=None if metric_cutoff is None else ms(metric_cutoff),
        artifact_cutoff_ms=None if artifact_cutoff is None else ms(artifact_cutoff),
        series=tuple(sorted(expired_series, key=lambda s: (s.run_id, s.key))),
        artifacts=tuple(sorted(expired, key=lambda a: (a.run_id, a.path))),
        kept=tuple(sorted(kept, key=lambda k: (k.run_id, k.path))),
        blobs=tuple(blobs),
    )


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one application of a plan did."""

    tenant_id: str
    runs_with_metrics_expired: int = 0
    points: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    blobs_deleted: list[str] = field(default_factory=list)
    blobs_kept: list[str] = field(default_factory=list)  # referenced again since the plan
    events: int = 0
    projected: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "runs_with_metrics_expired": self.runs_with_metrics_expired,
            "points": self.points,
            "artifacts": self.artifacts,
            "artifact_bytes": self.artifact_bytes,
            "blobs_deleted": self.blobs_deleted,
            "blobs_kept": self.blobs_kept,
            "events": self.events,
            "projected": self.projected,
        }


def metrics_expired_payload(plan: RetentionPlan, run_id: str) -> dict[str, Any]:
    """The payload of run.metrics_expired for one run of the plan.

    `before` is the ingestion cutoff (points received before it went); each series reports
    the span of the client timestamps of its points that went."""
    assert plan.metric_cutoff_ms is not None
    return {
        "before": plan.metric_cutoff_ms,
        "policy_days": plan.policy.metric_points_days,
        "series": [
            {
                "key": s.key,
                "points": s.points,
                "first_timestamp": s.first_timestamp_ms,
                "last_timestamp": s.last_timestamp_ms,
            }
            for s in plan.series_by_run()[run_id]
        ],
    }


def artifacts_expired_payload(plan: RetentionPlan, run_id: str) -> dict[str, Any]:
    """The payload of run.artifacts_expired for one run of the plan."""
    assert plan.artifact_cutoff_ms is not None
    return {
        "before": plan.artifact_cutoff_ms,
        "policy_days": plan.policy.artifacts_days,
        "artifacts": [
            {"path": a.path, "digest": a.digest, "size": a.size} for a in plan.artifacts_by_run()[run_id]
        ],
    }


# ------------------------------------------------------------------------------ planning


class RetentionFacts(Protocol):
    """What a plan is made from (implemented over Postgres and ClickHouse at the edge)."""

    async def policy(self, tenant_id: str) -> RetentionPolicy: ...

    async def series_facts(self, tenant_id: str, cutoff: datetime) -> list[SeriesFact]:
        """Per (run, key): the tenant's points received (ingested) before `cutoff`."""
        ...

    async def artifact_facts(self, tenant_id: str, cutoff: datetime) -> list[ArtifactFact]: ...

    async def production_versions(self, tenant_id: str) -> list[ProductionVersion]: ...

    async def references(self, tenant_id: str, digests: Sequence[str]) -> dict[str, int]: ...


async def plan_for(
    facts: RetentionFacts, tenant_id: str, as_of: datetime, policy: RetentionPolicy | None = None
) -> RetentionPlan:
    """The tenant's plan at `as_of`: what the plan command shows and what a sweep applies.

    `policy` plans under another policy than the tenant's (a preview before changing it)."""
    policy = policy or await facts.policy(tenant_id)
    metric_cutoff = policy.metric_cutoff(as_of)
    artifact_cutoff = policy.artifact_cutoff(as_of)
    series = [] if metric_cutoff is None else await facts.series_facts(tenant_id, metric_cutoff)
    artifacts = [] if artifact_cutoff is None else await facts.artifact_facts(tenant_id, artifact_cutoff)
    production = await facts.production_versions(tenant_id) if artifacts else []
    references = await facts.references(tenant_id, [a.digest for a in artifacts]) if artifacts else {}
    return build_plan(tenant_id, policy, as_of, series, artifacts, production, references)


# Artifacts named by one run.artifacts_expired event (events stay far below the size limit).
ARTIFACTS_PER_EVENT = 500


@dataclass(frozen=True, slots=True)
class ExpiryEvent:
    """One event a sweep emits: type name, run, experiment, payload."""

    type: str
    run_id: str
    experiment_id: str
    payload: dict[str, Any]


def expiry_events(plan: RetentionPlan) -> list[ExpiryEvent]:
    """The events that record the plan's deletions, run by run (metrics first)."""
    events: list[ExpiryEvent] = []
    for run_id, series in plan.series_by_run().items():
        events.append(
            ExpiryEvent(
                "run.metrics_expired", run_id, series[0].experiment_id, metrics_expired_payload(plan, run_id)
            )
        )
    for run_id, artifacts in plan.artifacts_by_run().items():
        payload = artifacts_expired_payload(plan, run_id)
        rows = payload["artifacts"]
        for start in range(0, len(rows), ARTIFACTS_PER_EVENT):
            chunk = {**payload, "artifacts": rows[start : start + ARTIFACTS_PER_EVENT]}
            events.append(ExpiryEvent("run.artifacts_expired", run_id, artifacts[0].experiment_id, chunk))
    return events
