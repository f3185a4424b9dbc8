"""Request and response shapes of the org-admin routes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runledger.auth.model import Role, TenantStatus
from runledger.events.models import Id, Key, TagValue

Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleGrant(BaseModel):
    role: Role
    experiment_id: str | None = Field(None, description="Set when the grant is narrowed to one experiment.")


# --- tenants (platform) ---------------------------------------------------------------------


class TenantCreate(_Body):
    """Body of POST /tenants."""

    tenant_id: Id
    name: Name
    admin_user: Name | None = Field(None, description="Create this user as the tenant's first admin.")


class Tenant(BaseModel):
    tenant_id: str
    name: str
    status: TenantStatus
    created_at: datetime


class NewKey(BaseModel):
    """A key just created: `api_key` is shown this once and never again."""

    key_id: str
    principal_id: str
    api_key: str
    expires_at: datetime | None = None


class Principal(BaseModel):
    principal_id: str
    kind: Literal["user", "service_account"]
    name: str
    created_at: datetime
    disabled_at: datetime | None = None
    roles: list[RoleGrant] = Field(default_factory=list)


class TenantCreated(BaseModel):
    tenant: Tenant
    admin: Principal | None = None
    api_key: NewKey | None = Field(
        None, description="The admin's first key (only when admin_user was given)."
    )


class TenantList(BaseModel):
    tenants: list[Tenant]


class QuotaUpdate(_Body):
    """Body of PUT /tenants/{id}/quotas; null = unlimited."""

    events_per_second: Annotated[int, Field(gt=0, le=2**31 - 1)] | None = None
    max_points: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    max_artifact_bytes: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    points_per_second: (
        Annotated[
            int,
            Field(
                gt=0,
                le=2**31 - 1,
                description="Metric points a second (a metrics event carries 1 to 100,000 points).",
            ),
        ]
        | None
    ) = None


class QuotaView(BaseModel):
    tenant_id: str
    events_per_second: int | None
    max_points: int | None
    max_artifact_bytes: int | None = None
    points_per_second: int | None = None
    points_used: int = Field(0, description="Metric points stored now (tenant_usage).")
    artifact_bytes_used: int = Field(
        0, description="Bytes of the distinct artifact contents the tenant stores (tenant_usage)."
    )


# --- principals, keys, grants ---------------------------------------------------------------


class PrincipalCreate(_Body):
    kind: Literal["user", "service_account"]
    name: Name


class PrincipalList(BaseModel):
    principals: list[Principal]


class KeyCreate(_Body):
    name: Annotated[str, Field(max_length=200)] = ""
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class KeyInfo(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    principal_id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyList(BaseModel):
    keys: list[KeyInfo]


class KeyRevoked(BaseModel):
    key_id: str
    revoked: bool = Field(description="False when the key had been revoked already.")


class GrantBody(_Body):
    principal_id: Id
    role: Role
    experiment_id: Id | None = None


class GrantView(BaseModel):
    principal_id: str
    role: Role
    experiment_id: str | None
    granted_at: datetime
    granted_by: str


class GrantList(BaseModel):
    grants: list[GrantView]


class Changed(BaseModel):
    changed: bool = Field(description="False when the request asked for what already was.")


# --- tagging policy ---------------------------------------------------------------------------


class Enforcement(StrEnum):
    FLAG = "flag"
    REJECT = "reject"


class TaggingPolicyBody(_Body):
    required: dict[Key, list[TagValue]] = Field(
        description="Required tag keys and their allowed values ([] = any value).", min_length=1
    )
    enforcement: Enforcement = Enforcement.FLAG


class TaggingPolicyView(BaseModel):
    required: dict[str, list[str]]
    enforcement: Enforcement


# --- sharing ----------------------------------------------------------------------------------


class ShareCreate(_Body):
    experiment_id: Id
    grantee_tenant: Id


class ShareView(BaseModel):
    owner_tenant: str
    experiment_id: str
    grantee_tenant: str
    experiment_name: str | None = None
    created_at: datetime


class ShareList(BaseModel):
    outgoing: list[ShareView]
    incoming: list[ShareView]


# --- audit -----------------------------------------------------------------------------------


class AuditRecord(BaseModel):
    seq: int
    tenant_id: str | None
    at: datetime
    actor: str
    action: str
    target: str
    outcome: Literal["ok", "denied"]
    source: str
    details: dict[str, Any]


class AuditPage(BaseModel):
    entries: list[AuditRecord]
    next_cursor: int | None = Field(None, description="Pass as `cursor` for older entries; null at the end.")
