"""HTTP routes of org administration.

Platform routes (/tenants) are for the superadmin; every other route acts on the
caller's own tenant and needs the tenant-wide admin role. There is deliberately no
route that changes or deletes audit entries.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from runledger.auth.model import Role, TenantStatus
from runledger.events.models import Id
from services.api.deps import RuntimeDep, TenantAdminPrincipal, forbid, require_superadmin
from services.api.orgs import schemas
from services.api.orgs.repository import OrgRepository
from services.api.orgs.service import OrgService
from services.api.principal import Principal
from services.api.schemas import READ_RESPONSES, ErrorBody

router = APIRouter(tags=["admin"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **READ_RESPONSES,
    403: {"model": ErrorBody, "description": "PERMISSION_DENIED: the caller is not an admin of its tenant."},
}


def _service(request: Request, runtime: RuntimeDep, principal: Principal) -> OrgService:
    return OrgService(OrgRepository(runtime.pool), runtime, principal, f"{request.method} {request.url.path}")


async def tenant_admin_service(
    request: Request, runtime: RuntimeDep, principal: TenantAdminPrincipal
) -> OrgService:
    """The service for a tenant admin (403 and an audit entry for anyone else)."""
    return _service(request, runtime, principal)


async def superadmin_service(
    request: Request, runtime: RuntimeDep, principal: Annotated[Principal, require_superadmin()]
) -> OrgService:
    """The service for the platform superadmin."""
    return _service(request, runtime, principal)


TenantAdmin = Annotated[OrgService, Depends(tenant_admin_service)]
Superadmin = Annotated[OrgService, Depends(superadmin_service)]
PageLimit = Annotated[int, Query(ge=1, le=1000)]


# --- platform ------------------------------------------------------------------------------


@router.post("/tenants", response_model=schemas.TenantCreated, status_code=201, responses=_RESPONSES)
async def create_tenant(body: schemas.TenantCreate, service: Superadmin) -> schemas.TenantCreated:
    """Create a tenant; with `admin_user`, also its first admin and that admin's key (shown once)."""
    return await service.create_tenant(body)


@router.get("/tenants", response_model=schemas.TenantList, responses=_RESPONSES)
async def list_tenants(service: Superadmin) -> schemas.TenantList:
    """Every tenant with its status."""
    return await service.tenants()


@router.post("/tenants/{tenant_id}/suspend", response_model=schemas.Tenant, responses=_RESPONSES)
async def suspend_tenant(tenant_id: str, service: Superadmin) -> schemas.Tenant:
    """Suspend a tenant: every key of it is refused until it is resumed."""
    return await service.set_tenant_status(tenant_id, TenantStatus.SUSPENDED)


@router.post("/tenants/{tenant_id}/resume", response_model=schemas.Tenant, responses=_RESPONSES)
async def resume_tenant(tenant_id: str, service: Superadmin) -> schemas.Tenant:
    """Re-activate a suspended tenant."""
    return await service.set_tenant_status(tenant_id, TenantStatus.ACTIVE)


@router.put("/tenants/{tenant_id}/quotas", response_model=schemas.QuotaView, responses=_RESPONSES)
async def set_quota(tenant_id: str, body: schemas.QuotaUpdate, service: Superadmin) -> schemas.QuotaView:
    """Set a tenant's limits (null = unlimited)."""
    return await service.set_quota(tenant_id, body)


# --- principals and keys -------------------------------------------------------------------


@router.post("/principals", response_model=schemas.Principal, status_code=201, responses=_RESPONSES)
async def create_principal(body: schemas.PrincipalCreate, service: TenantAdmin) -> schemas.Principal:
    """Create a user or service account (it has no role until one is granted)."""
    return await service.create_principal(body)


@router.get("/principals", response_model=schemas.PrincipalList, responses=_RESPONSES)
async def list_principals(service: TenantAdmin) -> schemas.PrincipalList:
    """Users and service accounts of the tenant with their roles."""
    return await service.principals()


@router.post("/principals/{principal_id}/disable", response_model=schemas.Changed, responses=_RESPONSES)
async def disable_principal(principal_id: str, service: TenantAdmin) -> schemas.Changed:
    """Disable a principal: none of its keys is accepted any more."""
    return await service.disable_principal(principal_id)


@router.post(
    "/principals/{principal_id}/keys", response_model=schemas.NewKey, status_code=201, responses=_RESPONSES
)
async def create_key(principal_id: str, body: schemas.KeyCreate, service: TenantAdmin) -> schemas.NewKey:
    """A new API key of the principal; `api_key` is shown only in this answer."""
    return await service.create_key(principal_id, body)


@router.get("/keys", response_model=schemas.KeyList, responses=_RESPONSES)
async def list_keys(service: TenantAdmin, principal_id: str | None = None) -> schemas.KeyList:
    """Keys of the tenant (never their secrets)."""
    return await service.keys(principal_id)


@router.delete("/keys/{key_id}", response_model=schemas.KeyRevoked, responses=_RESPONSES)
async def revoke_key(key_id: str, service: TenantAdmin) -> schemas.KeyRevoked:
    """Revoke a key; every process refuses it within seconds."""
    return await service.revoke_key(key_id)


# --- grants --------------------------------------------------------------------------------


@router.post("/grants", response_model=schemas.Changed, responses=_RESPONSES)
async def add_grant(body: schemas.GrantBody, service: TenantAdmin) -> schemas.Changed:
    """Grant a role, tenant-wide or narrowed to one experiment (viewer, engineer)."""
    return await service.grant(body)


@router.get("/grants", response_model=schemas.GrantList, responses=_RESPONSES)
async def list_grants(service: TenantAdmin, principal_id: str | None = None) -> schemas.GrantList:
    """Role grants of the tenant."""
    return await service.grants(principal_id)


@router.delete("/grants", response_model=schemas.Changed, responses=_RESPONSES)
async def remove_grant(
    service: TenantAdmin, principal_id: Id, role: Role, experiment_id: Id | None = None
) -> schemas.Changed:
    """Remove a grant (the same fields as it was given with, as query parameters)."""
    return await service.revoke_grant(
        schemas.GrantBody(principal_id=principal_id, role=role, experiment_id=experiment_id)
    )


# --- quotas and tagging policy -------------------------------------------------------------


@router.get("/quotas", response_model=schemas.QuotaView, responses=_RESPONSES)
async def own_quota(service: TenantAdmin) -> schemas.QuotaView:
    """The tenant's limits and its current usage."""
    return await service.quota()


@router.put("/policies/tagging", response_model=schemas.TaggingPolicyView, responses=_RESPONSES)
async def set_tagging_policy(
    body: schemas.TaggingPolicyBody, service: TenantAdmin
) -> schemas.TaggingPolicyView:
    """Require run tags (and restrict their values); runs missing them are flagged or rejected."""
    return await service.set_tagging_policy(body)


@router.get("/policies/tagging", response_model=schemas.TaggingPolicyView, responses=_RESPONSES)
async def get_tagging_policy(service: TenantAdmin) -> schemas.TaggingPolicyView:
    """The tenant's tagging policy (404 when it has none)."""
    return await service.tagging_policy()


@router.delete("/policies/tagging", response_model=schemas.Changed, responses=_RESPONSES)
async def clear_tagging_policy(service: TenantAdmin) -> schemas.Changed:
    """Remove the tagging policy."""
    return await service.clear_tagging_policy()


# --- sharing -------------------------------------------------------------------------------


@router.post("/shares", response_model=schemas.Changed, status_code=201, responses=_RESPONSES)
async def share_experiment(body: schemas.ShareCreate, service: TenantAdmin) -> schemas.Changed:
    """Share one experiment read-only with another tenant (recorded in both audit logs)."""
    return await service.share(body)


@router.get("/shares", response_model=schemas.ShareList, responses=_RESPONSES)
async def list_shares(service: TenantAdmin) -> schemas.ShareList:
    """Experiments this tenant shares (outgoing) and those shared with it (incoming)."""
    return await service.shares()


@router.delete(
    "/shares/{experiment_id}/{grantee_tenant}", response_model=schemas.Changed, responses=_RESPONSES
)
async def unshare_experiment(
    experiment_id: str, grantee_tenant: str, service: TenantAdmin
) -> schemas.Changed:
    """Withdraw a share."""
    return await service.unshare(experiment_id, grantee_tenant)


# --- audit ---------------------------------------------------------------------------------


@router.get("/audit", response_model=schemas.AuditPage, responses=_RESPONSES)
async def read_audit(
    request: Request,
    runtime: RuntimeDep,
    principal: TenantAdminPrincipal,
    limit: PageLimit = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="next_cursor of the previous page.")
    ] = None,
    outcome: Literal["ok", "denied"] | None = None,
    action: Annotated[str | None, Query(max_length=200, description="Prefix, e.g. `key.`.")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    scope: Literal["tenant", "platform"] = "tenant",
) -> schemas.AuditPage:
    """The tenant's audit log, newest first; scope=platform (superadmin) for platform entries."""
    if scope == "platform" and not principal.is_superadmin:
        raise forbid(runtime, request, principal, "the platform audit log is for the superadmin")
    service = _service(request, runtime, principal)
    return await service.audit(
        platform=scope == "platform", cursor=cursor, limit=limit, outcome=outcome, action=action, actor=actor
    )
