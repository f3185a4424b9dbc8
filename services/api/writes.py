"""The write path every domain shares: build events, produce them, wait for their projection.

A write returns once the projector has applied its events (read-your-writes). When
that takes longer than `write_wait_timeout_s` the caller gets `projected=False`
and a consistency token that reads can wait on (`?consistency_token=`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runledger.auth.signing import signed_bytes
from runledger.events.codec import InvalidEvent, decode, envelope_dict, producer
from runledger.events.models import EventType
from services.api.bulkhead import release_held_slot
from services.api.consistency import ConsistencyToken, ProjectionWaiter
from services.api.errors import InvalidParameter
from services.api.principal import Principal
from services.api.publisher import MAX_EVENT_BYTES, EventPublisher, OutgoingEvent
from services.api.quotas import QuotaGate
from services.observability import WRITE_WAIT_SECONDS

API_PRODUCER = producer("api")


@dataclass(frozen=True, slots=True)
class WriteReceipt:
    """Outcome of a write: whether it is visible to reads yet, and the token to wait on."""

    projected: bool
    token: ConsistencyToken


def partition_key(run_id: str | None, experiment_id: str | None, event_id: str) -> bytes:
    """The topic key: the run (per-run ordering), else the experiment, else the event itself."""
    return (run_id or experiment_id or event_id).encode()


def checked_event(raw: bytes) -> OutgoingEvent:
    """An encoded event, validated exactly as the projector will (so it never dead-letters)."""
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidParameter(f"event of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}; split it")
    try:
        decoded = decode(raw)
    except InvalidEvent as exc:
        raise InvalidParameter(exc.reason) from None
    env = decoded.envelope
    return OutgoingEvent(partition_key(env.run_id, env.experiment_id, env.event_id), raw, env.event_id)


def build_event(
    principal: Principal,
    type: EventType,
    payload: dict[str, Any],
    *,
    run_id: str | None = None,
    experiment_id: str | None = None,
) -> OutgoingEvent:
    """An event the API emits for `principal`: in its tenant, signed with its key, validated, keyed."""
    envelope = envelope_dict(
        tenant_id=principal.tenant_id,
        type=type,
        payload=payload,
        producer=API_PRODUCER,
        run_id=run_id,
        experiment_id=experiment_id,
    )
    # The projector verifies every event against the key that authorized it.
    return checked_event(signed_bytes(envelope, principal.key_id, principal.signing_key))


class EventWriter:
    """Produces events and waits (bounded) for the projector to apply them."""

    def __init__(
        self,
        publisher: EventPublisher,
        waiter: ProjectionWaiter,
        timeout_s: float,
        quotas: QuotaGate | None = None,
    ) -> None:
        """Write through `publisher`; wait at most `timeout_s` for projection; `quotas` admit writes."""
        self.publisher = publisher
        self.waiter = waiter
        self.timeout_s = timeout_s
        self.quotas = quotas

    async def admit(self, principal: Principal, *, events: int, points: int) -> None:
        """429 when the tenant's quotas refuse `events` events carrying `points` points; else
        their tokens are spent. For a route that knows its counts before it builds the events:
        a refused write then costs no lookup and no encoding (pass `admitted=True` on)."""
        if self.quotas is not None:
            quota = principal.authorizer.snapshot.quota(principal.tenant_id)
            await self.quotas.admit(principal.tenant_id, quota, events, points)

    async def publish(
        self,
        principal: Principal,
        events: Sequence[OutgoingEvent],
        *,
        points: int = 0,
        admitted: bool = False,
    ) -> ConsistencyToken:
        """Produce `events` for `principal` in order and return once the broker acknowledged them
        (not projected yet); 429 when the tenant's quotas refuse `len(events)` events carrying
        `points` points (unless `admit` already took them)."""
        if not admitted:
            await self.admit(principal, events=len(events), points=points)
        result = await self.publisher.publish(events)
        return ConsistencyToken.from_positions(result.incarnation, result.topic, result.positions)

    async def write(
        self,
        principal: Principal,
        events: Sequence[OutgoingEvent],
        *,
        points: int = 0,
        wait: bool = True,
        admitted: bool = False,
    ) -> WriteReceipt:
        """`publish`, then wait until all of `events` are projected (or the timeout passes);
        `wait=False` answers at the broker's ack (projected=False, the token to read it with)."""
        token = await self.publish(principal, events, points=points, admitted=admitted)
        if not wait:
            return WriteReceipt(projected=False, token=token)
        release_held_slot()  # the loop is idle for this write until it is projected
        start = time.perf_counter()
        projected = await self.waiter.wait(token, self.timeout_s)
        WRITE_WAIT_SECONDS.observe(time.perf_counter() - start)
        return WriteReceipt(projected=projected, token=token)

    async def wait_for(self, token: ConsistencyToken) -> bool:
        """Wait until a client's token is projected; True at once for a past broker incarnation
        whose log is gone (embedded brokers keep it in memory: whatever of it was projected is
        all there will ever be). A token of an incarnation carried over into the current one
        waits for the carried records (services/api/consistency.py)."""
        position = await self.waiter.position_now(token, self.publisher.incarnation)
        if position is None:
            return True
        return await self.waiter.wait(position, self.timeout_s)
