"""The control-plane state every process authorizes against, as one immutable snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Action(StrEnum):
    """What a request does to what it touches."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"  # users, keys, roles, sharing, policies, quotas, audit of one tenant


class Role(StrEnum):
    """Built-in roles inside one tenant."""

    VIEWER = "viewer"
    ENGINEER = "engineer"
    ADMIN = "admin"


ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.ENGINEER: frozenset({Action.READ, Action.WRITE}),
    Role.ADMIN: frozenset({Action.READ, Action.WRITE, Action.ADMIN}),
}


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key: whose it is and the derivations of its secret."""

    key_id: str
    tenant_id: str
    principal_id: str
    secret_hash: bytes
    signing_key: bytes
    expires_at: datetime | None = None
    revoked: bool = False

    def usable_at(self, now: datetime) -> bool:
        """Not revoked and not expired."""
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class Grant:
    """A role of a principal in a tenant, optionally narrowed to one experiment ('' = all)."""

    tenant_id: str
    principal_id: str
    role: Role
    experiment_id: str = ""


@dataclass(frozen=True, slots=True)
class Share:
    """Experiment `experiment_id` of `owner_tenant`, readable by `grantee_tenant`."""

    owner_tenant: str
    experiment_id: str
    grantee_tenant: str


@dataclass(frozen=True, slots=True)
class TaggingPolicy:
    """Tags every run of a tenant must carry; an empty list of values allows any value."""

    required: dict[str, tuple[str, ...]]
    reject: bool = False

    def violations(self, tags: dict[str, str]) -> list[str]:
        """Why `tags` do not satisfy the policy (empty: they do)."""
        problems = []
        for key, allowed in sorted(self.required.items()):
            if key not in tags:
                problems.append(f"missing tag {key!r}")
            elif allowed and tags[key] not in allowed:
                problems.append(f"tag {key!r}={tags[key]!r} is not one of {list(allowed)}")
        return problems


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-tenant limits; None = unlimited."""

    events_per_second: int | None = None
    max_points: int | None = None
    max_artifact_bytes: int | None = None
    # Metric points a second: what projection, analysis and merges cost in proportion to (an
    # event may carry 1 point or 100,000).
    points_per_second: int | None = None


@dataclass(frozen=True, slots=True)
class AuthSnapshot:
    """Everything authorization needs, loaded at once; replaced whole when `generation` moves."""

    generation: int
    tenants: dict[str, TenantStatus] = field(default_factory=dict)
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    superadmins: frozenset[str] = frozenset()
    disabled_principals: frozenset[str] = frozenset()
    grants: tuple[Grant, ...] = ()
    shares: tuple[Share, ...] = ()
    tagging: dict[str, TaggingPolicy] = field(default_factory=dict)
    quotas: dict[str, Quota] = field(default_factory=dict)

    def tenant_active(self, tenant_id: str) -> bool:
        """The tenant exists and is not suspended."""
        return self.tenants.get(tenant_id) is TenantStatus.ACTIVE

    def usable_key(self, key_id: str, now: datetime) -> KeyRecord | None:
        """The key, if it may act now: usable, its principal enabled, its tenant active."""
        record = self.keys.get(key_id)
        if record is None or not record.usable_at(now):
            return None
        if record.principal_id in self.disabled_principals or not self.tenant_active(record.tenant_id):
            return None
        return record

    def shares_to(self, grantee_tenant: str) -> dict[str, str]:
        """Experiments shared with a tenant: experiment id -> owner tenant."""
        return {s.experiment_id: s.owner_tenant for s in self.shares if s.grantee_tenant == grantee_tenant}

    def quota(self, tenant_id: str) -> Quota:
        """The tenant's limits (unlimited when none are set)."""
        return self.quotas.get(tenant_id, Quota())
