"""HTTP routes of webhooks (alert routing): tenant admins only, always on the caller's own tenant."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from runledger.analysis.webhook_policy import DestinationPolicy
from runledger.config import Settings
from services.api.deps import RuntimeDep, TenantAdminPrincipal
from services.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.api.schemas import READ_RESPONSES, ErrorBody
from services.api.webhooks import schemas
from services.api.webhooks.repository import WebhookRepository
from services.api.webhooks.service import WebhookService

router = APIRouter(tags=["webhooks"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **READ_RESPONSES,
    403: {"model": ErrorBody, "description": "PERMISSION_DENIED: the caller is not an admin of its tenant."},
}


def destination_policy(settings: Settings) -> DestinationPolicy:
    """Where webhooks may point, by RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS / _ALLOW_PRIVATE_NETWORKS."""
    return DestinationPolicy.of(settings.webhook_allowed_networks, settings.webhook_allow_private_networks)


async def get_service(
    request: Request, runtime: RuntimeDep, principal: TenantAdminPrincipal
) -> WebhookService:
    """The webhook service for a tenant admin (403 and an audit entry for anyone else)."""
    return WebhookService(
        WebhookRepository(runtime.pool, principal.tenant_id),
        runtime.audit,
        principal,
        f"{request.method} {request.url.path}",
        destination_policy(runtime.settings),
        runtime.secrets,
    )


Service = Annotated[WebhookService, Depends(get_service)]


@router.post("/webhooks", response_model=schemas.WebhookCreated, status_code=201, responses=_RESPONSES)
async def create_webhook(body: schemas.WebhookCreate, service: Service) -> schemas.WebhookCreated:
    """Register a webhook: every finding (of `kinds`, if given) is POSTed to it as signed JSON.

    The URL must be http(s) without userinfo and reach a public address: loopback, private,
    link-local (cloud metadata) and other non-public destinations are a 400 unless the
    operator allows them (RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS); a hostname is checked again
    at every delivery.

    The answer holds the signing `secret` this once. Each delivery carries
    `X-RunLedger-Signature: sha256=<hex HMAC-SHA256 of the body bytes>`,
    `X-RunLedger-Event-Id` (dedupe on it: delivery is at-least-once) and `X-RunLedger-Timestamp`.
    """
    return await service.create(body)


@router.get("/webhooks", response_model=schemas.WebhookList, responses=_RESPONSES)
async def list_webhooks(service: Service) -> schemas.WebhookList:
    """The tenant's webhooks (never their secrets)."""
    return await service.list_webhooks()


@router.get("/webhooks/{webhook_id}", response_model=schemas.Webhook, responses=_RESPONSES)
async def get_webhook(webhook_id: str, service: Service) -> schemas.Webhook:
    """One webhook."""
    return await service.get(webhook_id)


@router.patch("/webhooks/{webhook_id}", response_model=schemas.Webhook, responses=_RESPONSES)
async def update_webhook(webhook_id: str, body: schemas.WebhookUpdate, service: Service) -> schemas.Webhook:
    """Change a webhook's url, kinds or enabled flag (fields left out stay as they are)."""
    return await service.update(webhook_id, body)


@router.post("/webhooks/{webhook_id}/secret", response_model=schemas.WebhookCreated, responses=_RESPONSES)
async def new_webhook_secret(webhook_id: str, service: Service) -> schemas.WebhookCreated:
    """Replace the webhook's signing secret; the answer holds the new one this once.

    Deliveries attempted from now on are signed with it, retries of earlier ones included: a
    receiver that rejects them while it still checks the old secret gets them again on retry
    once it has the new one.
    """
    return await service.new_secret(webhook_id)


@router.delete("/webhooks/{webhook_id}", response_model=schemas.Deleted, responses=_RESPONSES)
async def delete_webhook(webhook_id: str, service: Service) -> schemas.Deleted:
    """Delete a webhook and its deliveries (pending ones are not sent)."""
    return await service.delete(webhook_id)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=schemas.DeliveryList, responses=_RESPONSES)
async def list_deliveries(
    webhook_id: str,
    service: Service,
    status: schemas.DeliveryStatus | None = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> schemas.DeliveryList:
    """The webhook's deliveries (one per finding), newest first, with their last attempt."""
    return await service.deliveries(webhook_id, status, page_size, page_token)
