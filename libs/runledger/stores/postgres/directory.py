"""The control plane in Postgres: tenants, principals, keys, grants, shares, policies, audit.

Every function that changes what authorization sees calls `bump_generation` inside
the caller's transaction, so the change and its announcement commit together.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from runledger.auth.keys import ApiKey, generate_key
from runledger.auth.model import (
    AuthSnapshot,
    Grant,
    KeyRecord,
    Quota,
    Role,
    Share,
    TaggingPolicy,
    TenantStatus,
)
from runledger.auth.watcher import AuthWatcher
from runledger.stores.postgres import PgConnection

AUTH_CHANNEL = "runledger_auth"
BOOTSTRAP_PRINCIPAL = "admin"


async def current_generation(conn: PgConnection) -> int:
    """The control plane's change counter."""
    value = await conn.fetchval("SELECT generation FROM auth_generation")
    return int(value)


async def bump_generation(conn: PgConnection) -> int:
    """Announce a change (call inside the changing transaction)."""
    value = await conn.fetchval("UPDATE auth_generation SET generation = generation + 1 RETURNING generation")
    await conn.execute(f"NOTIFY {AUTH_CHANNEL}")
    return int(value)


async def load_snapshot(conn: PgConnection) -> AuthSnapshot:
    """Everything authorization needs, read in one repeatable-read transaction."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        generation = await current_generation(conn)
        tenants = {
            r["tenant_id"]: TenantStatus(r["status"])
            for r in await conn.fetch("SELECT tenant_id, status FROM tenants")
        }
        keys = {
            r["key_id"]: KeyRecord(
                key_id=r["key_id"],
                tenant_id=r["tenant_id"],
                principal_id=r["principal_id"],
                secret_hash=bytes(r["secret_hash"]),
                signing_key=bytes(r["signing_key"]),
                expires_at=r["expires_at"],
                revoked=r["revoked_at"] is not None,
            )
            for r in await conn.fetch(
                "SELECT key_id, tenant_id, principal_id, secret_hash, signing_key, expires_at, revoked_at"
                " FROM api_keys"
            )
        }
        principals = await conn.fetch("SELECT principal_id, is_superadmin, disabled_at FROM principals")
        grants = tuple(
            Grant(r["tenant_id"], r["principal_id"], Role(r["role"]), r["experiment_id"])
            for r in await conn.fetch("SELECT tenant_id, principal_id, role, experiment_id FROM role_grants")
        )
        shares = tuple(
            Share(r["owner_tenant"], r["experiment_id"], r["grantee_tenant"])
            for r in await conn.fetch(
                "SELECT owner_tenant, experiment_id, grantee_tenant FROM experiment_shares"
            )
        )
        tagging = {
            r["tenant_id"]: TaggingPolicy(
                {k: tuple(v) for k, v in json.loads(r["required"]).items()}, r["enforcement"] == "reject"
            )
            for r in await conn.fetch("SELECT tenant_id, required::text, enforcement FROM tagging_policies")
        }
        quotas = {
            r["tenant_id"]: Quota(
                r["events_per_second"], r["max_points"], r["max_artifact_bytes"], r["points_per_second"]
            )
            for r in await conn.fetch(
                "SELECT tenant_id, events_per_second, max_points, max_artifact_bytes, points_per_second"
                " FROM tenant_quotas"
            )
        }
    return AuthSnapshot(
        generation=generation,
        tenants=tenants,
        keys=keys,
        superadmins=frozenset(r["principal_id"] for r in principals if r["is_superadmin"]),
        disabled_principals=frozenset(r["principal_id"] for r in principals if r["disabled_at"] is not None),
        grants=grants,
        shares=shares,
        tagging=tagging,
        quotas=quotas,
    )


async def watch(pool: asyncpg.Pool[Any], poll_s: float) -> AuthWatcher:
    """A started AuthWatcher over the control-plane tables of `pool`'s database."""

    async def load() -> AuthSnapshot:
        async with pool.acquire() as conn:
            return await load_snapshot(conn)

    async def generation() -> int:
        async with pool.acquire() as conn:
            return await current_generation(conn)

    watcher = AuthWatcher(load, generation, poll_s)
    await watcher.start()
    return watcher


# --- changes -------------------------------------------------------------------------------


def new_principal_id(kind: str) -> str:
    """`u_<hex>` for users, `sa_<hex>` for service accounts."""
    return f"{'u' if kind == 'user' else 'sa'}_{secrets.token_hex(6)}"


async def create_tenant(conn: PgConnection, tenant_id: str, name: str) -> bool:
    """Create a tenant; False when it already exists."""
    status = await conn.execute(
        "INSERT INTO tenants (tenant_id, name, status) VALUES ($1, $2, 'active') ON CONFLICT DO NOTHING",
        tenant_id,
        name,
    )
    created = status.endswith(" 1")
    if created:
        await bump_generation(conn)
    return created


async def set_tenant_status(conn: PgConnection, tenant_id: str, status: TenantStatus) -> bool:
    """Suspend or re-activate a tenant; False when there is no such tenant."""
    done = await conn.execute("UPDATE tenants SET status = $2 WHERE tenant_id = $1", tenant_id, status.value)
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def create_principal(
    conn: PgConnection, tenant_id: str, kind: str, name: str, *, superadmin: bool = False
) -> str:
    """A user or service account of a tenant; returns its principal id."""
    principal_id = new_principal_id(kind)
    await conn.execute(
        "INSERT INTO principals (principal_id, tenant_id, kind, name, is_superadmin) VALUES ($1, $2, $3, $4, $5)",
        principal_id,
        tenant_id,
        kind,
        name,
        superadmin,
    )
    await bump_generation(conn)
    return principal_id


async def create_key(
    conn: PgConnection,
    principal_id: str,
    *,
    name: str = "",
    expires_at: datetime | None = None,
    key: ApiKey | None = None,
) -> ApiKey:
    """A new key of the principal (in the principal's tenant); the secret is returned, not stored."""
    key = key or generate_key()
    await conn.execute(
        "INSERT INTO api_keys (key_id, principal_id, tenant_id, name, secret_hash, signing_key, expires_at)"
        " SELECT $1, principal_id, tenant_id, $3, $4, $5, $6 FROM principals WHERE principal_id = $2",
        key.key_id,
        principal_id,
        name,
        key.secret_hash,
        key.signing_key,
        expires_at,
    )
    await bump_generation(conn)
    return key


async def revoke_key(conn: PgConnection, key_id: str) -> bool:
    """Revoke a key; False when it does not exist or was already revoked."""
    done = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def grant_role(conn: PgConnection, grant: Grant, granted_by: str = "") -> bool:
    """Grant a role (idempotent); False when it already existed."""
    done = await conn.execute(
        "INSERT INTO role_grants (tenant_id, principal_id, role, experiment_id, granted_by)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        grant.tenant_id,
        grant.principal_id,
        grant.role.value,
        grant.experiment_id,
        granted_by,
    )
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def revoke_role(conn: PgConnection, grant: Grant) -> bool:
    """Remove a grant; False when there was none."""
    done = await conn.execute(
        "DELETE FROM role_grants WHERE tenant_id = $1 AND principal_id = $2 AND role = $3 AND experiment_id = $4",
        grant.tenant_id,
        grant.principal_id,
        grant.role.value,
        grant.experiment_id,
    )
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def set_quota(conn: PgConnection, tenant_id: str, quota: Quota) -> None:
    """Set a tenant's limits (None = unlimited)."""
    await conn.execute(
        "INSERT INTO tenant_quotas"
        " (tenant_id, events_per_second, max_points, max_artifact_bytes, points_per_second)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (tenant_id) DO UPDATE SET events_per_second = EXCLUDED.events_per_second,"
        " max_points = EXCLUDED.max_points, max_artifact_bytes = EXCLUDED.max_artifact_bytes,"
        " points_per_second = EXCLUDED.points_per_second, updated_at = now()",
        tenant_id,
        quota.events_per_second,
        quota.max_points,
        quota.max_artifact_bytes,
        quota.points_per_second,
    )
    await bump_generation(conn)


async def disable_principal(conn: PgConnection, principal_id: str) -> bool:
    """Disable a principal (all its keys stop working); False when absent or already disabled."""
    done = await conn.execute(
        "UPDATE principals SET disabled_at = now() WHERE principal_id = $1 AND disabled_at IS NULL",
        principal_id,
    )
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def set_tagging_policy(conn: PgConnection, tenant_id: str, policy: TaggingPolicy) -> None:
    """Replace a tenant's tagging policy."""
    await conn.execute(
        "INSERT INTO tagging_policies (tenant_id, required, enforcement) VALUES ($1, $2::jsonb, $3)"
        " ON CONFLICT (tenant_id) DO UPDATE SET required = EXCLUDED.required,"
        " enforcement = EXCLUDED.enforcement, updated_at = now()",
        tenant_id,
        json.dumps({k: list(v) for k, v in policy.required.items()}),
        "reject" if policy.reject else "flag",
    )
    await bump_generation(conn)


async def clear_tagging_policy(conn: PgConnection, tenant_id: str) -> bool:
    """Remove a tenant's tagging policy; False when it had none."""
    done = await conn.execute("DELETE FROM tagging_policies WHERE tenant_id = $1", tenant_id)
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def share_experiment(conn: PgConnection, share: Share, created_by: str = "") -> bool:
    """Share an experiment read-only with another tenant; False when it already was."""
    done = await conn.execute(
        "INSERT INTO experiment_shares (owner_tenant, experiment_id, grantee_tenant, created_by)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        share.owner_tenant,
        share.experiment_id,
        share.grantee_tenant,
        created_by,
    )
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


async def unshare_experiment(conn: PgConnection, share: Share) -> bool:
    """Withdraw a share; False when there was none."""
    done = await conn.execute(
        "DELETE FROM experiment_shares WHERE owner_tenant = $1 AND experiment_id = $2 AND grantee_tenant = $3",
        share.owner_tenant,
        share.experiment_id,
        share.grantee_tenant,
    )
    if done.endswith(" 0"):
        return False
    await bump_generation(conn)
    return True


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """What `bootstrap` set up: the platform admin principal of the default tenant."""

    principal_id: str
    key_created: bool


async def bootstrap(conn: PgConnection, tenant_id: str, key: ApiKey) -> Bootstrap:
    """Idempotently: the default tenant, its `admin` user (superadmin, tenant admin) and `key`.

    A key that exists already is left as it is (a revoked bootstrap key stays revoked).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7301002)")
        await conn.execute(
            "INSERT INTO tenants (tenant_id, name, status) VALUES ($1, $1, 'active') ON CONFLICT DO NOTHING",
            tenant_id,
        )
        principal_id = await conn.fetchval(
            "SELECT principal_id FROM principals WHERE tenant_id = $1 AND kind = 'user' AND name = $2",
            tenant_id,
            BOOTSTRAP_PRINCIPAL,
        )
        if principal_id is None:
            principal_id = await create_principal(
                conn, tenant_id, "user", BOOTSTRAP_PRINCIPAL, superadmin=True
            )
            await grant_role(conn, Grant(tenant_id, principal_id, Role.ADMIN), "bootstrap")
        exists = await conn.fetchval("SELECT 1 FROM api_keys WHERE key_id = $1", key.key_id)
        if not exists:
            await create_key(conn, principal_id, name="bootstrap", key=key)
        await bump_generation(conn)
        return Bootstrap(principal_id, not exists)


# --- audit ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit log."""

    tenant_id: str | None
    actor: str
    action: str
    outcome: str  # ok | denied
    target: str = ""
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _storable(value: Any) -> Any:
    """`value` without NUL characters, which Postgres text and jsonb refuse (a request path of
    `%00` is the caller's to choose, and one such entry must not stop the whole log)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


async def append_audit(conn: PgConnection, entries: Sequence[AuditEntry]) -> None:
    """Append entries (the table refuses every other change)."""
    if not entries:
        return
    await conn.executemany(
        "INSERT INTO audit_log (tenant_id, actor, action, target, outcome, source, details)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        [
            (
                _storable(e.tenant_id),
                _storable(e.actor),
                _storable(e.action),
                _storable(e.target),
                e.outcome,
                _storable(e.source),
                json.dumps(_storable(e.details)),
            )
            for e in entries
        ],
    )


async def tenant_ids(conn: PgConnection, ids: Iterable[str]) -> set[str]:
    """Which of `ids` are tenants."""
    rows = await conn.fetch("SELECT tenant_id FROM tenants WHERE tenant_id = ANY($1::text[])", list(ids))
    return {r["tenant_id"] for r in rows}
