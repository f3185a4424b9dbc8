"""Identities for tests: tenants, principals with a role, their keys; signing raw events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from runledger.auth import signing
from runledger.auth.keys import ApiKey
from runledger.auth.model import Grant, Role
from runledger.stores.postgres import directory
from runledger.stores.postgres.migrate import migrate


@dataclass(frozen=True)
class Identity:
    """A principal of a tenant and one key of it."""

    tenant_id: str
    principal_id: str
    key: ApiKey

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate as this identity."""
        return {"Authorization": f"Bearer {self.key.token}"}

    def sign(self, event: bytes | dict[str, Any]) -> bytes:
        """The event (raw bytes or an envelope dict) signed with this identity's key, as topic bytes."""
        envelope = orjson.loads(event) if isinstance(event, bytes) else dict(event)
        signing.sign(envelope, self.key.key_id, self.key.signing_key)
        return orjson.dumps(envelope, option=orjson.OPT_SERIALIZE_NUMPY)


async def provision(
    dsn: str,
    tenant_id: str,
    role: Role | None = Role.ENGINEER,
    *,
    experiment_id: str = "",
    superadmin: bool = False,
    kind: str = "user",
    name: str | None = None,
) -> Identity:
    """Create (if needed) the tenant, then a principal with `role` (None: no role) and a key."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        async with conn.transaction():
            await directory.create_tenant(conn, tenant_id, tenant_id)
            principal_id = await directory.create_principal(
                conn, tenant_id, kind, name or directory.new_principal_id(kind), superadmin=superadmin
            )
            if role is not None:
                await directory.grant_role(conn, Grant(tenant_id, principal_id, role, experiment_id))
            key = await directory.create_key(conn, principal_id, name="test")
    finally:
        await conn.close()
    return Identity(tenant_id, principal_id, key)
