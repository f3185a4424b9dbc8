"""GET /api/v1/whoami: the caller's tenant, principal, key and roles."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.api.deps import Auth
from services.api.schemas import READ_RESPONSES

router = APIRouter(tags=["identity"])


class RoleGrant(BaseModel):
    role: str
    experiment_id: str | None = Field(None, description="Set when the grant is narrowed to one experiment.")


class WhoAmI(BaseModel):
    tenant_id: str
    principal_id: str
    key_id: str
    superadmin: bool
    roles: list[RoleGrant]


@router.get("/whoami", response_model=WhoAmI, responses=READ_RESPONSES)
async def whoami(principal: Auth) -> WhoAmI:
    """Who the presented API key acts as."""
    grants = [
        RoleGrant(role=g.role.value, experiment_id=g.experiment_id or None)
        for g in principal.authorizer.snapshot.grants
        if g.principal_id == principal.principal_id and g.tenant_id == principal.tenant_id
    ]
    return WhoAmI(
        tenant_id=principal.tenant_id,
        principal_id=principal.principal_id,
        key_id=principal.key_id,
        superadmin=principal.is_superadmin,
        roles=grants,
    )
