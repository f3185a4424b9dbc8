"""GET /api/v1/me: the caller and what it may do, so a page shows only the controls it may use."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from runledger.auth.model import Action
from services.api.deps import Auth
from services.api.principal import Principal
from services.api.schemas import READ_RESPONSES

router = APIRouter(tags=["identity"])


class Grant(BaseModel):
    role: str
    experiment_id: str | None = Field(None, description="Set when the grant is narrowed to one experiment.")


class Permissions(BaseModel):
    """What the caller may do in its tenant (a route may still refuse one experiment)."""

    read: bool = Field(description="May read at least part of the tenant.")
    write: bool = Field(description="May create or change experiments and runs (on at least one).")
    admin: bool = Field(description="Tenant admin: users, keys, roles, policies, audit log.")
    superadmin: bool = Field(description="Platform superadmin: tenants and quotas.")


class Me(BaseModel):
    tenant_id: str
    principal_id: str
    key_id: str
    via: str = Field(description="How the request authenticated: api_key, or session (the web UI's cookie).")
    session_expires_at: int | None = Field(None, description="Milliseconds since the epoch (sessions only).")
    roles: list[Grant]
    permissions: Permissions


def describe(principal: Principal, via: str, expires_at: datetime | None = None) -> Me:
    """The caller as the UI needs it."""
    grants = [
        Grant(role=g.role.value, experiment_id=g.experiment_id or None)
        for g in principal.authorizer.snapshot.grants
        if g.principal_id == principal.principal_id and g.tenant_id == principal.tenant_id
    ]
    return Me(
        tenant_id=principal.tenant_id,
        principal_id=principal.principal_id,
        key_id=principal.key_id,
        via=via,
        session_expires_at=int(expires_at.timestamp() * 1000) if expires_at else None,
        roles=grants,
        permissions=Permissions(
            read=principal.may_act(Action.READ),
            write=principal.may_act(Action.WRITE),
            admin=principal.can(Action.ADMIN),
            superadmin=principal.is_superadmin,
        ),
    )


@router.get("/me", response_model=Me, responses=READ_RESPONSES)
async def me(principal: Auth, request: Request) -> Me:
    """Who the caller is and what it may do (read, write, admin), by API key or UI session."""
    session = getattr(request.state, "session", None)
    if session is not None:
        return describe(principal, "session", session.expires_at)
    return describe(principal, "api_key")
