"""What may enter the projections: signed by a usable key, authorized, within quota, tagged.

`Gate.batch()` takes the current auth snapshot once per batch; its `admit` runs in
`prepare` (the CPU side), so nothing unverified is ever projected. Checks, in order:

1. signature: a key id known to the snapshot, usable now (not revoked or expired,
   principal enabled, tenant active), and an HMAC that matches (runledger.auth.signing);
2. tenant: the envelope's tenant is the key's tenant;
3. permission: the key's principal may WRITE the event's experiment. A principal whose
   grant is narrowed to some experiments is also checked, by the batch writer, against
   the experiment its runs are RECORDED in (the envelope's experiment_id is a claim);
4. clock: `occurred_at` no further ahead of the projector's clock than
   projector_max_clock_skew_s, and not before 2000-01-01 (docs/dead-letters.md);
5. tagging policy of run.started (reject: dead letter; flag: a `policy.tagging` finding);
6. quotas: events and metric points per second per tenant, counted in 1 s windows of the
   Kafka record timestamp (a backlog after an outage is judged by when it was produced,
   not by how fast it is read back; an event of more points than a second allows passes
   alone in an empty second), and the tenant's stored points (tenant_usage).

Rate windows and the usage estimate are per projector process: with several replicas
each enforces the rate over its own partitions. `runledger replay` never passes here:
what was verified at first projection stays projected, whatever happened to its key since.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from runledger.auth import signing
from runledger.auth.model import Action, AuthSnapshot, Quota
from runledger.auth.rbac import Authorizer
from runledger.events.codec import DecodedEvent, decode, encode, envelope_dict, producer
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import ADMIN_ONLY, PLATFORM_REPORTED, EventType, RunStartedPayload

log = logging.getLogger(__name__)

# Findings the projector records get ids derived from the event that caused them, so a
# crash or a replay re-creates the same finding instead of a second one.
_FINDING_NAMESPACE = uuid.UUID("2b0f6c1e-93d4-4c5a-8f27-51c0e7d9a3b4")
_PRODUCER = producer("runledger-projector")
TAGGING_FINDING_KIND = "policy.tagging"
_WINDOWS_KEPT_S = 600  # rate windows older than this (behind the newest seen) are forgotten
# An unknown key id makes the gate reload the snapshot before refusing (a key created a
# moment ago), at most this often, so a flood of forged key ids costs little.
_REFRESH_EVERY_S = 0.1
_KEY_ID_FIELD = b'"key_id":"'
# Events stamped before this are refused whatever the skew setting: no run predates it, and
# such a time is a broken clock (or an int read as seconds) rather than a late delivery.
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_MAX_CLOCK_SKEW_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Rejected:
    """A dead letter: why, and the tenant it is counted for (the key's when known)."""

    tenant_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """An event that passed; `narrowed` when its principal may write only some experiments
    (the writer then checks the run's recorded experiment); `finding` is a projector-made
    event to project with it (a flagged tagging policy)."""

    principal_id: str
    narrowed: bool
    finding: DecodedEvent | None = None


def finding_id(event_id: str, kind: str) -> str:
    """The deterministic id of the finding of `kind` caused by event `event_id`."""
    return str(uuid.uuid5(_FINDING_NAMESPACE, f"{kind}/{event_id}"))


def tagging_finding(event: DecodedEvent, problems: list[str]) -> DecodedEvent:
    """An anomaly.detected event of kind policy.tagging for a run that broke the policy."""
    env = event.envelope
    raw = encode(
        envelope_dict(
            tenant_id=env.tenant_id,
            type=EventType.ANOMALY_DETECTED,
            run_id=env.run_id,
            experiment_id=env.experiment_id,
            producer=_PRODUCER,
            event_id=finding_id(env.event_id, TAGGING_FINDING_KIND),
            occurred_at=env.occurred_at,
            payload={
                "key": "tags",
                "step": 0,
                "kind": TAGGING_FINDING_KIND,
                "severity": 1.0,
                "evidence": {"problems": problems},
            },
        )
    )
    return decode(raw)


def _claimed_key_id(raw: bytes) -> str:
    """The key id a message names, found without parsing it ("" when none)."""
    at = raw.find(_KEY_ID_FIELD) if raw else -1
    if at < 0:
        return ""
    start = at + len(_KEY_ID_FIELD)
    return raw[start : start + 16].decode(errors="replace")


def _points(event: DecodedEvent) -> int:
    payload = event.payload
    return len(payload.values) if isinstance(payload, MetricColumns) else 0


class Gate:
    """Per-process admission state: rate windows and stored points per tenant."""

    def __init__(
        self,
        authorizer: Callable[[], Authorizer],
        refresh: Callable[[], Awaitable[None]] | None = None,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        existing: Callable[[list[str]], Awaitable[set[str]]] | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._existing = existing
        self.max_clock_skew = timedelta(seconds=max_clock_skew_s)
        self._refresh = refresh
        self._refreshed_at = 0.0
        self._unknown: set[str] = set()
        self._unknown_generation = -1
        self._events = RateWindows()
        self._points = RateWindows()
        # Stored points per tenant: loaded at consumer start, advanced as batches are admitted.
        self.usage: dict[str, int] = {}

    def load_usage(self, usage: Mapping[str, int]) -> None:
        """Start from the points the stores hold (tenant_usage)."""
        self.usage = dict(usage)

    async def refresh_for(self, raws: Iterable[bytes]) -> None:
        """Reload the snapshot first when a message names a key id it does not know: the
        watcher polls, and a key created a moment ago must not see its first events refused.

        Ids still unknown after a reload are remembered until the snapshot changes, and
        reloads are at least _REFRESH_EVERY_S apart: forged key ids cost little. With
        `existing` (which of these ids the directory holds: one indexed query), ids no
        directory holds cost neither a reload nor the wait: a flood of made-up key ids
        (hostile input) used to hold every batch for a reload.
        """
        if self._refresh is None:
            return
        snapshot = self._authorizer().snapshot
        if snapshot.generation != self._unknown_generation:
            self._unknown, self._unknown_generation = set(), snapshot.generation
        wanted = {k for k in map(_claimed_key_id, raws) if k and k not in snapshot.keys} - self._unknown
        if wanted and self._existing is not None:
            present = await self._existing(sorted(wanted))
            if len(self._unknown) < 10_000:
                self._unknown |= wanted - present
            wanted &= present
        if not wanted:
            return
        wait = self._refreshed_at + _REFRESH_EVERY_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        log.info("unknown key id(s) %s: reloading the auth snapshot", ", ".join(sorted(wanted)[:3]))
        self._refreshed_at = time.monotonic()
        await self._refresh()
        snapshot = self._authorizer().snapshot
        if len(self._unknown) < 10_000:
            self._unknown |= {k for k in wanted if k not in snapshot.keys}
        self._unknown_generation = snapshot.generation

    def batch(self, now: datetime | None = None) -> BatchGate:
        """Admission for one batch, against the snapshot current now."""
        return BatchGate(self, self._authorizer(), now or datetime.now(UTC))

    def _take_rates(self, tenant_id: str, timestamp_ms: int, points: int, quota: Quota) -> str | None:
        """Count one event of `points` points in its tenant's windows; the quota it would
        exceed instead (then nothing is counted)."""
        second = timestamp_ms // 1000
        if quota.events_per_second is not None and not self._events.has_room(
            tenant_id, second, 1, quota.events_per_second
        ):
            return f"events_per_second={quota.events_per_second}"
        if (
            quota.points_per_second is not None
            and points
            and not self._points.has_room(tenant_id, second, points, quota.points_per_second)
        ):
            return f"points_per_second={quota.points_per_second}"
        if quota.events_per_second is not None:
            self._events.add(tenant_id, second, 1)
        if quota.points_per_second is not None and points:
            self._points.add(tenant_id, second, points)
        return None


class RateWindows:
    """How much each tenant used in each 1 s window (of Kafka record time)."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, int], int] = {}
        self._newest = 0

    def has_room(self, tenant_id: str, second: int, n: int, limit: int) -> bool:
        """Whether `n` more fit the tenant's `limit` in that second (anything fits an empty one)."""
        used = self._used.get((tenant_id, second), 0)
        return used == 0 or used + n <= limit

    def add(self, tenant_id: str, second: int, n: int) -> None:
        """Count `n` in the tenant's window of that second."""
        key = (tenant_id, second)
        self._used[key] = self._used.get(key, 0) + n
        if second > self._newest:
            self._newest = second
            if len(self._used) > 10_000:
                horizon = second - _WINDOWS_KEPT_S
                self._used = {k: v for k, v in self._used.items() if k[1] >= horizon}


class BatchGate:
    """Admission decisions for one batch (one snapshot, one clock reading)."""

    def __init__(self, gate: Gate, authorizer: Authorizer, now: datetime) -> None:
        self._gate = gate
        self.authorizer = authorizer
        self._snapshot: AuthSnapshot = authorizer.snapshot
        self._now = now
        self._narrowed: dict[tuple[str, str], bool] = {}

    def verify(self, event: DecodedEvent) -> str | Rejected:
        """Checks 1-3 (signature, tenant, permission): the principal who wrote `event`, or why not.

        A platform superadmin's key may also report analysis.* events (findings) for any
        tenant: that is how the analysis service, one for all tenants, signs what it finds.
        """
        env = event.envelope
        snapshot = self._snapshot
        if not env.key_id or not env.signature:
            return Rejected(env.tenant_id, "unsigned event")
        record = snapshot.keys.get(env.key_id)
        if record is None:
            return Rejected(env.tenant_id, "unknown key")
        tenant = record.tenant_id
        if not snapshot.tenant_active(tenant):
            return Rejected(tenant, f"tenant suspended: {tenant}")
        if snapshot.usable_key(env.key_id, self._now) is None:
            return Rejected(tenant, "key revoked or expired")
        if not signing.verify_bytes(event.raw, env.signature, record.signing_key):
            return Rejected(tenant, "signature mismatch")
        principal = record.principal_id
        if env.type in PLATFORM_REPORTED and principal in snapshot.superadmins:
            return principal
        if env.tenant_id != tenant:
            return Rejected(tenant, f"tenant mismatch: key of {tenant}, event for {env.tenant_id}")
        if not self.authorizer.can(principal, tenant, Action.WRITE, env.experiment_id):
            target = f"experiment {env.experiment_id}" if env.experiment_id else f"tenant {tenant}"
            return Rejected(tenant, f"permission denied: {principal} may not write {target}")
        if env.type in ADMIN_ONLY and not self.authorizer.can(principal, tenant, Action.ADMIN, None):
            return Rejected(
                tenant, f"permission denied: {env.type.value} needs a tenant admin, not {principal}"
            )
        return principal

    def admit(self, event: DecodedEvent, timestamp_ms: int) -> Admitted | Rejected:
        """Whether `event` (Kafka record timestamp `timestamp_ms`) may be projected."""
        principal = self.verify(event)
        if isinstance(principal, Rejected):
            return principal
        env = event.envelope
        snapshot = self._snapshot
        tenant = env.tenant_id
        skew = self._clock_skew(env.occurred_at)
        if skew is not None:
            return Rejected(tenant, skew)
        if env.type in PLATFORM_REPORTED and principal in snapshot.superadmins:
            # A platform service's report: not the tenant's traffic, so not its quota.
            return Admitted(principal, False, None)
        finding = None
        if env.type is EventType.RUN_STARTED:
            policy = snapshot.tagging.get(tenant)
            if policy is not None:
                assert isinstance(event.payload, RunStartedPayload)
                problems = policy.violations(event.payload.tags)
                if problems and policy.reject:
                    return Rejected(tenant, f"tagging policy: {'; '.join(problems)}")
                if problems:
                    finding = tagging_finding(event, problems)
        quota = snapshot.quota(tenant)
        points = _points(event)
        if quota.max_points is not None and points:
            used = self._gate.usage.get(tenant, 0)
            if used + points > quota.max_points:
                return Rejected(tenant, f"quota exceeded: max_points={quota.max_points}")
        exceeded = self._gate._take_rates(tenant, timestamp_ms, points, quota)
        if exceeded is not None:
            return Rejected(tenant, f"quota exceeded: {exceeded}")
        if points:
            self._gate.usage[tenant] = self._gate.usage.get(tenant, 0) + points
        return Admitted(principal, self._is_narrowed(principal, tenant), finding)

    def _clock_skew(self, occurred_at: datetime) -> str | None:
        """Why `occurred_at` is not a plausible time for an event arriving now (None: it is)."""
        if occurred_at < EARLIEST_OCCURRED_AT:
            return (
                f"clock skew: occurred_at {occurred_at.isoformat()} is before {EARLIEST_OCCURRED_AT.date()}"
            )
        ahead = occurred_at - self._now
        if ahead > self._gate.max_clock_skew:
            return (
                f"clock skew: occurred_at {occurred_at.isoformat()} is {ahead.total_seconds():.0f} s ahead"
                f" of the projector's clock (limit {self._gate.max_clock_skew.total_seconds():.0f} s)"
            )
        return None

    def _is_narrowed(self, principal: str, tenant: str) -> bool:
        """Whether the principal's WRITE covers only some experiments of the tenant."""
        key = (principal, tenant)
        narrowed = self._narrowed.get(key)
        if narrowed is None:
            # "experiment/*" matches only a tenant-wide grant's policy (keyMatch on the request).
            narrowed = not self.authorizer.can(principal, tenant, Action.WRITE, "*")
            self._narrowed[key] = narrowed
        return narrowed

    def may_write_recorded(self, principal: str, tenant: str, experiment_id: str) -> bool:
        """Whether the principal may write the experiment a run is recorded in."""
        return self.authorizer.can(principal, tenant, Action.WRITE, experiment_id)
