"""HTTP route of raw event ingest (the SDK's HTTP transport)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from runledger.auth.model import Action
from services.api.deps import Auth, RuntimeDep, require
from services.api.events.schemas import EventsAccepted
from services.api.events.service import EventService
from services.api.schemas import WRITE_RESPONSES, WaitForProjection, write_status

router = APIRouter(prefix="/events", tags=["events"])


async def get_service(runtime: RuntimeDep, principal: Auth) -> EventService:
    """The event service acting for the caller."""
    return EventService(runtime.writer, principal, runtime.pool)


Service = Annotated[EventService, Depends(get_service)]

_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"type": "object", "description": "An event envelope (schemas/v1)."},
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=EventsAccepted,
    responses=WRITE_RESPONSES,
    openapi_extra=_BODY_SCHEMA,
    dependencies=[require(Action.WRITE)],
)
async def ingest_events(
    request: Request, service: Service, response: Response, wait: WaitForProjection = True
) -> EventsAccepted:
    """Produce a JSON array of envelopes: all valid, of the caller's tenant and on experiments it
    may write, or none (400/403 with per-index reasons). Each event is re-signed with the caller's
    key. Events keep their event_id, so a retried batch is deduplicated."""
    accepted, receipt = await service.ingest(await request.body(), wait=wait)
    if receipt is None:
        return EventsAccepted(accepted=0, projected=True, consistency_token="")
    response.status_code = write_status(receipt)
    return EventsAccepted(
        accepted=accepted, projected=receipt.projected, consistency_token=receipt.token.encode()
    )
