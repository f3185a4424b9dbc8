"""Raw event batches: validate every envelope, then produce all or nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from runledger.events.codec import InvalidEvent, decode
from services.api.errors import InvalidParameter, PermissionDenied
from services.api.events.schemas import MAX_EVENTS_PER_REQUEST, EventRejection
from services.api.principal import Principal
from services.api.publisher import MAX_EVENT_BYTES, OutgoingEvent
from services.api.writes import EventWriter, WriteReceipt, partition_key


def parse_batch(body: bytes, principal: Principal) -> list[OutgoingEvent]:
    """Validate a posted JSON array of envelopes; raise with every rejection, or return them all.

    The tenant of each event must be the caller's: events are never re-homed,
    because the SDK may have signed them.
    """
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameter(f"body is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise InvalidParameter("body must be a JSON array of event envelopes")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise InvalidParameter(f"at most {MAX_EVENTS_PER_REQUEST} events per request")
    events: list[OutgoingEvent] = []
    rejected: list[EventRejection] = []
    foreign = 0
    for index, item in enumerate(items):
        event_id = item.get("event_id") if isinstance(item, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        # Re-encoding each element gives the exact bytes that are validated and produced.
        raw = orjson.dumps(item)
        if len(raw) > MAX_EVENT_BYTES:
            rejected.append(
                EventRejection(
                    index=index, event_id=event_id, reason=f"event exceeds {MAX_EVENT_BYTES} bytes"
                )
            )
            continue
        try:
            decoded = decode(raw)
        except InvalidEvent as exc:
            rejected.append(EventRejection(index=index, event_id=event_id, reason=exc.reason))
            continue
        env = decoded.envelope
        if env.tenant_id != principal.tenant_id:
            foreign += 1
            rejected.append(
                EventRejection(
                    index=index,
                    event_id=env.event_id,
                    reason=f"tenant_id {env.tenant_id!r} is not the caller's tenant",
                )
            )
            continue
        events.append(
            OutgoingEvent(partition_key(env.run_id, env.experiment_id, env.event_id), raw, env.event_id)
        )
    if rejected:
        details: list[dict[str, Any]] = [r.model_dump() for r in rejected]
        message = f"{len(rejected)} of {len(items)} events rejected; nothing was produced"
        if foreign == len(rejected):
            raise PermissionDenied(message, details=details)
        raise InvalidParameter(message, details=details)
    return events


class EventService:
    """Produces validated raw events on behalf of the caller."""

    def __init__(self, writer: EventWriter, principal: Principal) -> None:
        """Write through `writer` for `principal`."""
        self._writer = writer
        self._principal = principal

    async def ingest(self, body: bytes) -> tuple[int, WriteReceipt | None]:
        """Validate and produce a batch; (accepted count, receipt or None for an empty batch)."""
        # Validation is CPU work (pydantic per event): off the event loop.
        events = await asyncio.to_thread(parse_batch, body, self._principal)
        if not events:
            return 0, None
        return len(events), await self._writer.write(events)
