"""Artifact metadata (the projected `artifacts` table) and the per-tenant storage ledger."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.api.artifacts.blob_locks import lock_for_upload


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    """One logged file of a run."""

    path: str
    size: int
    digest: str
    media_type: str


@dataclass(frozen=True, slots=True)
class StorageQuota:
    """A tenant's artifact quota (None = unlimited) and the bytes it stores."""

    limit: int | None
    used: int

    def room_for(self, size: int) -> bool:
        return self.limit is None or self.used + size <= self.limit


class QuotaReached(Exception):
    """Charging a new blob would take the tenant past its quota."""

    def __init__(self, quota: StorageQuota, size: int) -> None:
        super().__init__("artifact storage quota reached")
        self.quota = quota
        self.size = size


def _like_prefix(directory: str) -> str:
    escaped = directory.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}/%" if escaped else "%"


class ArtifactRepository:
    """Reads artifact rows of one tenant's runs; charges stored blobs to tenants (BlobCharge)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def get(self, tenant_id: str, run_id: str, path: str) -> ArtifactRow | None:
        row = await self._pool.fetchrow(
            "SELECT path, size, digest, media_type FROM artifacts WHERE tenant_id = $1 AND run_id = $2 AND path = $3",
            tenant_id,
            run_id,
            path,
        )
        return None if row is None else ArtifactRow(**dict(row))

    async def under(self, tenant_id: str, run_id: str, directory: str) -> list[ArtifactRow]:
        """Every file of the run below `directory` ('' = the whole run), by path."""
        rows = await self._pool.fetch(
            "SELECT path, size, digest, media_type FROM artifacts"
            " WHERE tenant_id = $1 AND run_id = $2 AND path LIKE $3 ORDER BY path",
            tenant_id,
            run_id,
            _like_prefix(directory),
        )
        return [ArtifactRow(**dict(r)) for r in rows]

    async def quota(self, tenant_id: str) -> StorageQuota:
        row = await self._pool.fetchrow(
            "SELECT (SELECT max_artifact_bytes FROM tenant_quotas WHERE tenant_id = $1) AS limit_,"
            " coalesce((SELECT artifact_bytes FROM tenant_usage WHERE tenant_id = $1), 0) AS used",
            tenant_id,
        )
        assert row is not None
        return StorageQuota(row["limit_"], int(row["used"]))

    def blob_charge(self) -> BlobCharge:
        """A charge for one upload, to enter before its blob is stored (see BlobCharge)."""
        return BlobCharge(self._pool)


class BlobCharge:
    """One upload's charge, made under its blob's lock.

    `hold(digest)` is the store's before_commit: it opens a transaction and takes the blob's
    lock shared (services/api/artifacts/blob_locks.py), so a retention sweep cannot delete the
    blob between the store finding it stored and `charge` recording it. Leaving the context
    commits the charge (rolls it back on an exception) and releases the lock.
    """

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool
        self._held = contextlib.AsyncExitStack()  # the connection and its transaction, once held
        self._conn: PoolConnectionProxy[Any] | None = None

    async def __aenter__(self) -> BlobCharge:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._conn = None
        await self._held.__aexit__(*exc)  # commits, or rolls back on an exception; releases

    async def hold(self, digest: str) -> None:
        if self._conn is not None:
            raise RuntimeError("a BlobCharge holds one blob")
        conn = await self._held.enter_async_context(self._pool.acquire())
        await self._held.enter_async_context(conn.transaction())
        self._conn = conn
        await lock_for_upload(conn, digest)

    async def charge(self, tenant_id: str, digest: str, size: int) -> bool:
        """Record that the tenant stores this blob and add its size to the tenant's usage, once
        per (tenant, digest): True when newly charged, False when the tenant had it already.
        QuotaReached when it does not fit (nothing is recorded: the context rolls back); exact
        under concurrency, since the tenant's usage row is locked while deciding."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("charge before hold: the blob's lock is not held")
        inserted = await conn.fetchval(
            "INSERT INTO artifact_blobs (tenant_id, digest, size) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING true",
            tenant_id,
            digest,
            size,
        )
        if not inserted:
            return False
        await conn.execute(
            "INSERT INTO tenant_usage (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant_id
        )
        used = await conn.fetchval(
            "SELECT artifact_bytes FROM tenant_usage WHERE tenant_id = $1 FOR UPDATE", tenant_id
        )
        limit = await conn.fetchval(
            "SELECT max_artifact_bytes FROM tenant_quotas WHERE tenant_id = $1", tenant_id
        )
        quota = StorageQuota(limit, int(used))
        if not quota.room_for(size):
            raise QuotaReached(quota, size)
        await conn.execute(
            "UPDATE tenant_usage SET artifact_bytes = artifact_bytes + $2 WHERE tenant_id = $1",
            tenant_id,
            size,
        )
        return True
