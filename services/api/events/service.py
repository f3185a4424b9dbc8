"""Raw event batches: validate and authorize every envelope, re-sign, then produce all or nothing.

Every event must be of the caller's tenant and on an experiment the caller may
write. The API re-signs each event with the caller's key (the one that authorized
it), so the projector checks them like any other signed event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from runledger.auth.model import Action
from runledger.auth.signing import signed_bytes
from runledger.events.codec import DEFAULT_EXPERIMENT_ID, InvalidEvent, decode
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EXPERIMENT_SCOPED, Envelope, EventType, RunStartedPayload
from services.api.access import Access
from services.api.errors import InvalidParameter, PermissionDenied
from services.api.events.schemas import MAX_EVENTS_PER_REQUEST, EventRejection
from services.api.principal import Principal
from services.api.publisher import MAX_EVENT_BYTES, OutgoingEvent
from services.api.writes import EventWriter, WriteReceipt, partition_key


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One valid envelope of a batch, as posted."""

    index: int
    item: dict[str, Any]
    envelope: Envelope
    points: int  # metric points it carries
    tags: dict[str, str] | None  # tags of a run.started


def _reject(rejected: list[EventRejection], count: int, *, forbidden: bool) -> None:
    details: list[dict[str, Any]] = [r.model_dump() for r in rejected]
    message = f"{len(rejected)} of {count} events rejected; nothing was produced"
    if forbidden:
        raise PermissionDenied(message, details=details)
    raise InvalidParameter(message, details=details)


def parse_batch(body: bytes, principal: Principal) -> list[ParsedEvent]:
    """Validate a posted JSON array of envelopes; raise with every rejection, or return them all.

    The tenant of each event must be the caller's: events are never re-homed.
    """
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameter(f"body is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise InvalidParameter("body must be a JSON array of event envelopes")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise InvalidParameter(f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    parsed: list[ParsedEvent] = []
    rejected: list[EventRejection] = []
    foreign = 0
    for index, item in enumerate(items):
        event_id = item.get("event_id") if isinstance(item, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        # Re-encoding each element gives the exact bytes that are validated.
        try:
            raw = orjson.dumps(item)
        except orjson.JSONEncodeError as exc:  # nested deeper than 255 levels
            rejected.append(
                EventRejection(index=index, event_id=event_id, reason=f"cannot encode the event: {exc}")
            )
            continue
        if len(raw) > MAX_EVENT_BYTES:
            reason = f"event exceeds {MAX_EVENT_BYTES} bytes"
            rejected.append(EventRejection(index=index, event_id=event_id, reason=reason))
            continue
        try:
            decoded = decode(raw)
        except InvalidEvent as exc:
            rejected.append(EventRejection(index=index, event_id=event_id, reason=exc.reason))
            continue
        env = decoded.envelope
        if env.tenant_id != principal.tenant_id:
            foreign += 1
            reason = (
                f"tenant_id {env.tenant_id!r} is not the caller's tenant {principal.tenant_id!r}:"
                " an API key writes only to its own tenant"
            )
            rejected.append(EventRejection(index=index, event_id=env.event_id, reason=reason))
            continue
        points = len(decoded.payload) if isinstance(decoded.payload, MetricColumns) else 0
        tags = dict(decoded.payload.tags) if isinstance(decoded.payload, RunStartedPayload) else None
        parsed.append(ParsedEvent(index, item, env, points, tags))
    if rejected:
        _reject(rejected, len(items), forbidden=foreign == len(rejected))
    return parsed


def signed_events(parsed: list[ParsedEvent], principal: Principal) -> list[OutgoingEvent]:
    """Each event signed with the caller's key (whatever key_id and signature it came with)."""
    events: list[OutgoingEvent] = []
    for p in parsed:
        raw = signed_bytes(dict(p.item), principal.key_id, principal.signing_key)
        env = p.envelope
        events.append(
            OutgoingEvent(partition_key(env.run_id, env.experiment_id, env.event_id), raw, env.event_id)
        )
    return events


class EventService:
    """Produces validated, authorized, signed raw events on behalf of the caller."""

    def __init__(self, writer: EventWriter, principal: Principal, pool: asyncpg.Pool[Any]) -> None:
        """Write through `writer` for `principal`; `pool` reads the runs and experiments named."""
        self._writer = writer
        self._principal = principal
        self._pool = pool
        self._access = Access(principal)

    async def ingest(self, body: bytes, *, wait: bool = True) -> tuple[int, WriteReceipt | None]:
        """Validate and produce a batch; (accepted count, receipt or None for an empty batch);
        `wait=False` answers at the broker's ack."""
        # Validation is CPU work (pydantic per event): off the event loop.
        parsed = await asyncio.to_thread(parse_batch, body, self._principal)
        if not parsed:
            return 0, None
        await self._authorize(parsed)
        self._check_tagging(parsed)
        events = await asyncio.to_thread(signed_events, parsed, self._principal)
        points = sum(p.points for p in parsed)
        return len(events), await self._writer.write(self._principal, events, points=points, wait=wait)

    async def _authorize(self, parsed: list[ParsedEvent]) -> None:
        """403 with per-index reasons unless the caller may write every event's experiment."""
        tenant = self._principal.tenant_id
        run_ids = sorted({p.envelope.run_id for p in parsed if p.envelope.run_id})
        recorded: dict[str, str] = {}
        if run_ids:
            rows = await self._pool.fetch(
                "SELECT run_id, experiment_id FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
                tenant,
                run_ids,
            )
            recorded = {r["run_id"]: r["experiment_id"] for r in rows}
        targets = {self._target(p.envelope, recorded) for p in parsed} - {None}
        existing: set[str] = set()
        if targets:
            rows = await self._pool.fetch(
                "SELECT experiment_id FROM experiments WHERE tenant_id = $1 AND experiment_id = ANY($2::text[])",
                tenant,
                sorted(t for t in targets if t is not None),
            )
            existing = {r["experiment_id"] for r in rows}
        shared = self._principal.authorizer.snapshot.shares_to(tenant)
        rejected: list[EventRejection] = []
        for p in parsed:
            reason = self._refusal(p.envelope, self._target(p.envelope, recorded), existing, shared)
            if reason is not None:
                rejected.append(EventRejection(index=p.index, event_id=p.envelope.event_id, reason=reason))
        if rejected:
            _reject(rejected, len(parsed), forbidden=True)

    @staticmethod
    def _target(env: Envelope, recorded: dict[str, str]) -> str | None:
        """The experiment an event writes: a known run's recorded one, else the envelope's."""
        if env.run_id is not None and env.run_id in recorded:
            return recorded[env.run_id]
        return env.experiment_id

    def _refusal(
        self, env: Envelope, experiment_id: str | None, existing: set[str], shared: dict[str, str]
    ) -> str | None:
        """Why the caller may not produce this event (None: it may)."""
        if experiment_id is None:
            if self._principal.can(Action.WRITE):
                return None
            return "events outside an experiment need the engineer role on the whole tenant"
        if experiment_id not in existing:
            if experiment_id in shared and experiment_id != DEFAULT_EXPERIMENT_ID:
                return f"experiment {experiment_id} is shared read-only by another tenant"
            if env.type in EXPERIMENT_SCOPED and experiment_id != DEFAULT_EXPERIMENT_ID:
                # A new experiment: creating one needs write on the whole tenant.
                if not self._principal.can(Action.WRITE):
                    return "creating experiments needs the engineer role on the whole tenant"
                return None
        if not self._access.can_write(experiment_id):
            return f"the caller may not write experiment {experiment_id}"
        return None

    def _check_tagging(self, parsed: list[ParsedEvent]) -> None:
        """400 when the tenant's tagging policy rejects runs without the tags they start with."""
        policy = self._principal.authorizer.snapshot.tagging.get(self._principal.tenant_id)
        if policy is None or not policy.reject:
            return
        rejected: list[EventRejection] = []
        for p in parsed:
            if p.envelope.type is not EventType.RUN_STARTED:
                continue
            problems = policy.violations(p.tags or {})
            if problems:
                reason = f"the tenant's tagging policy rejects this run: {'; '.join(problems)}"
                rejected.append(EventRejection(index=p.index, event_id=p.envelope.event_id, reason=reason))
        if rejected:
            _reject(rejected, len(parsed), forbidden=False)
