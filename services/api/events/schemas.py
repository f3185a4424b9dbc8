"""Shapes of the raw event routes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.api.schemas import WriteResult

MAX_EVENTS_PER_REQUEST = 10_000


class EventsAccepted(WriteResult):
    """Answer of POST /events: every event was produced (and, if projected, is visible)."""

    accepted: int = Field(description="How many events were produced.")


class EventRejection(BaseModel):
    """Why one event of a batch was refused."""

    index: int = Field(description="Position of the event in the posted array.")
    event_id: str | None = None
    reason: str
