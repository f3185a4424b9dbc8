"""Control-plane reads for the org-admin routes; every tenant-side query takes the tenant id.

Changes go through runledger.stores.postgres.directory (which bumps the auth generation);
the service runs them and their audit entries in one transaction (`transaction`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from runledger.stores.postgres import PgConnection
from services.api.orgs import schemas
from services.api.sql import Conditions

_TENANT_COLUMNS = "tenant_id, name, status, created_at"
_KEY_COLUMNS = "key_id, principal_id, name, created_at, expires_at, revoked_at"


class OrgRepository:
    """Reads of tenants, principals, keys, grants, policies, shares and the audit log."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgConnection]:
        """One connection in one transaction: a change and its audit entries commit together."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    # --- tenants ---------------------------------------------------------------------------

    async def tenant(self, conn: PgConnection, tenant_id: str) -> schemas.Tenant | None:
        row = await conn.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id)
        return schemas.Tenant(**dict(row)) if row else None

    async def tenants(self) -> list[schemas.Tenant]:
        rows = await self._pool.fetch(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY tenant_id")
        return [schemas.Tenant(**dict(r)) for r in rows]

    async def quota(self, tenant_id: str) -> schemas.QuotaView:
        row = await self._pool.fetchrow(
            "SELECT q.events_per_second, q.max_points, q.max_artifact_bytes, q.points_per_second,"
            " COALESCE(u.points, 0) AS points_used, COALESCE(u.artifact_bytes, 0) AS artifact_bytes_used"
            " FROM (SELECT $1::text AS tenant_id) t"
            " LEFT JOIN tenant_quotas q USING (tenant_id) LEFT JOIN tenant_usage u USING (tenant_id)",
            tenant_id,
        )
        assert row is not None
        return schemas.QuotaView(tenant_id=tenant_id, **dict(row))

    # --- principals and grants -------------------------------------------------------------

    async def principal(self, conn: PgConnection, tenant_id: str, principal_id: str) -> asyncpg.Record | None:
        """The principal if it belongs to the tenant (else None: another tenant's ids do not exist)."""
        return await conn.fetchrow(
            "SELECT principal_id, kind, name, created_at, disabled_at FROM principals"
            " WHERE tenant_id = $1 AND principal_id = $2",
            tenant_id,
            principal_id,
        )

    async def principal_named(self, conn: PgConnection, tenant_id: str, kind: str, name: str) -> bool:
        found = await conn.fetchval(
            "SELECT 1 FROM principals WHERE tenant_id = $1 AND kind = $2 AND name = $3", tenant_id, kind, name
        )
        return found is not None

    async def principals(self, tenant_id: str) -> list[schemas.Principal]:
        rows = await self._pool.fetch(
            "SELECT principal_id, kind, name, created_at, disabled_at FROM principals"
            " WHERE tenant_id = $1 ORDER BY created_at, principal_id",
            tenant_id,
        )
        roles: dict[str, list[schemas.RoleGrant]] = {}
        for g in await self.grants(tenant_id):
            roles.setdefault(g.principal_id, []).append(
                schemas.RoleGrant(role=g.role, experiment_id=g.experiment_id)
            )
        return [schemas.Principal(**dict(r), roles=roles.get(r["principal_id"], [])) for r in rows]

    async def grants(self, tenant_id: str, principal_id: str | None = None) -> list[schemas.GrantView]:
        where = Conditions()
        where.add(f"tenant_id = {where.param(tenant_id)}")
        if principal_id is not None:
            where.add(f"principal_id = {where.param(principal_id)}")
        rows = await self._pool.fetch(
            "SELECT principal_id, role, NULLIF(experiment_id, '') AS experiment_id, granted_at, granted_by"
            f" FROM role_grants WHERE {where.sql} ORDER BY principal_id, role, experiment_id",
            *where.args,
        )
        return [schemas.GrantView(**dict(r)) for r in rows]

    async def experiment_name(self, conn: PgConnection, tenant_id: str, experiment_id: str) -> str | None:
        name: str | None = await conn.fetchval(
            "SELECT name FROM experiments WHERE tenant_id = $1 AND experiment_id = $2",
            tenant_id,
            experiment_id,
        )
        return name

    # --- keys ------------------------------------------------------------------------------

    async def key(self, conn: PgConnection, tenant_id: str, key_id: str) -> schemas.KeyInfo | None:
        row = await conn.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2", tenant_id, key_id
        )
        return schemas.KeyInfo(**dict(row)) if row else None

    async def keys(self, tenant_id: str, principal_id: str | None) -> list[schemas.KeyInfo]:
        where = Conditions()
        where.add(f"tenant_id = {where.param(tenant_id)}")
        if principal_id is not None:
            where.add(f"principal_id = {where.param(principal_id)}")
        rows = await self._pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE {where.sql} ORDER BY created_at, key_id", *where.args
        )
        return [schemas.KeyInfo(**dict(r)) for r in rows]

    # --- tagging policy, shares ------------------------------------------------------------

    async def tagging_policy(self, tenant_id: str) -> schemas.TaggingPolicyView | None:
        row = await self._pool.fetchrow(
            "SELECT required::text, enforcement FROM tagging_policies WHERE tenant_id = $1", tenant_id
        )
        if row is None:
            return None
        return schemas.TaggingPolicyView(required=json.loads(row["required"]), enforcement=row["enforcement"])

    async def shares(self, tenant_id: str) -> schemas.ShareList:
        """Shares the tenant gave (outgoing) and received (incoming), with the experiment names."""
        rows = await self._pool.fetch(
            "SELECT s.owner_tenant, s.experiment_id, s.grantee_tenant, s.created_at, e.name AS experiment_name"
            " FROM experiment_shares s LEFT JOIN experiments e"
            "   ON e.tenant_id = s.owner_tenant AND e.experiment_id = s.experiment_id"
            " WHERE s.owner_tenant = $1 OR s.grantee_tenant = $1"
            " ORDER BY s.created_at, s.experiment_id, s.grantee_tenant",
            tenant_id,
        )
        views = [schemas.ShareView(**dict(r)) for r in rows]
        return schemas.ShareList(
            outgoing=[v for v in views if v.owner_tenant == tenant_id],
            incoming=[v for v in views if v.grantee_tenant == tenant_id],
        )

    # --- audit -----------------------------------------------------------------------------

    async def audit(
        self,
        tenant_id: str | None,
        *,
        before: int | None,
        limit: int,
        outcome: str | None,
        action: str | None,
        actor: str | None,
    ) -> list[schemas.AuditRecord]:
        """Entries of one tenant (None: the platform's, tenant NULL), newest first, older than `before`."""
        where = Conditions()
        where.add("tenant_id IS NULL" if tenant_id is None else f"tenant_id = {where.param(tenant_id)}")
        if before is not None:
            where.add(f"seq < {where.param(before)}")
        if outcome is not None:
            where.add(f"outcome = {where.param(outcome)}")
        if action is not None:
            # A prefix: `key.` matches key.create and key.revoke, `POST ` every denied POST.
            where.add(f"starts_with(action, {where.param(action)})")
        if actor is not None:
            where.add(f"actor = {where.param(actor)}")
        rows = await self._pool.fetch(
            "SELECT seq, tenant_id, at, actor, action, target, outcome, source, details::text"
            f" FROM audit_log WHERE {where.sql} ORDER BY seq DESC LIMIT {where.param(limit)}",
            *where.args,
        )
        return [schemas.AuditRecord(**{**dict(r), "details": json.loads(r["details"])}) for r in rows]
