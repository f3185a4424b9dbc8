"""Request and response shapes of the webhook routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_KINDS = 100
Kind = Annotated[str, Field(min_length=1, max_length=200, description="A finding kind, e.g. spike.")]
Kinds = Annotated[list[Kind], Field(max_length=MAX_KINDS)]
DeliveryStatus = Literal["pending", "delivered", "failed"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCreate(_Body):
    """Body of POST /webhooks."""

    url: str = Field(description="http(s) URL that receives each finding as a signed JSON POST.")
    kinds: Kinds = Field(
        default_factory=list, description="Finding kinds routed to it (e.g. spike, attribution); empty = all."
    )
    enabled: bool = True


class WebhookUpdate(_Body):
    """Body of PATCH /webhooks/{webhook_id}: only the fields given change."""

    url: str | None = None
    kinds: Kinds | None = None
    enabled: bool | None = None


class Webhook(BaseModel):
    """A webhook (its secret is shown only when it is created)."""

    webhook_id: str
    url: str
    kinds: list[str] = Field(description="Finding kinds routed to it; empty = every finding.")
    enabled: bool
    created_at: datetime
    created_by: str
    updated_at: datetime


class WebhookCreated(Webhook):
    """A webhook with its new signing secret (at creation, or replaced): shown this once and never
    again; it is stored sealed (RUNLEDGER_SECRETS_KEY)."""

    secret: str = Field(
        description="Key of X-RunLedger-Signature: sha256=<hex HMAC-SHA256 of the request body bytes>."
    )


class WebhookList(BaseModel):
    webhooks: list[Webhook]


class Delivery(BaseModel):
    """One finding's delivery to a webhook, and its latest attempt."""

    event_id: str = Field(description="The finding (its event id; X-RunLedger-Event-Id).")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(None, description="When it is tried again (pending only).")
    last_status_code: int | None = Field(None, description="HTTP status of the last attempt, if it got one.")
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None


class DeliveryList(BaseModel):
    """One page of deliveries, newest first."""

    deliveries: list[Delivery]
    next_page_token: str | None = Field(
        None, description="Pass as page_token for the next page; null at the end."
    )


class Deleted(BaseModel):
    deleted: bool = True
