"""Webhook rows in Postgres; every query takes the caller's tenant id (another tenant's ids do not exist)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from runledger.auth.sealing import SecretBox, SecretUnreadable
from runledger.stores.postgres import PgConnection
from services.api.findings.repository import from_micros, to_micros
from services.api.sql import Conditions
from services.api.webhooks import schemas

log = logging.getLogger(__name__)

_COLUMNS = "webhook_id, url, kinds, enabled, created_at, created_by, updated_at"
_DELIVERY_COLUMNS = (
    "event_id::text AS event_id, status, attempts,"
    " CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at,"
    " last_status_code, last_error, created_at, delivered_at"
)


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A delivery and its exact keyset position (created_at in microseconds, event_id)."""

    delivery: schemas.Delivery
    micros: int


class WebhookRepository:
    """Reads and changes of one tenant's webhooks and their deliveries."""

    def __init__(self, pool: asyncpg.Pool[Any], tenant_id: str) -> None:
        """Bind the repository to the caller's tenant."""
        self._pool = pool
        self._tenant = tenant_id

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgConnection]:
        """One connection in one transaction: a change and its audit entry commit together."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    async def count(self, conn: PgConnection) -> int:
        """How many webhooks the tenant has."""
        n: int = await conn.fetchval("SELECT count(*) FROM webhooks WHERE tenant_id = $1", self._tenant)
        return n

    async def create(
        self,
        conn: PgConnection,
        webhook_id: str,
        url: str,
        secret: str,
        kinds: list[str],
        enabled: bool,
        created_by: str,
    ) -> schemas.Webhook:
        row = await conn.fetchrow(
            "INSERT INTO webhooks (tenant_id, webhook_id, url, secret, kinds, enabled, created_by)"
            f" VALUES ($1, $2, $3, $4, $5::text[], $6, $7) RETURNING {_COLUMNS}",
            self._tenant,
            webhook_id,
            url,
            secret,
            kinds,
            enabled,
            created_by,
        )
        assert row is not None
        return schemas.Webhook(**dict(row))

    async def list_all(self) -> list[schemas.Webhook]:
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, webhook_id",
            self._tenant,
        )
        return [schemas.Webhook(**dict(r)) for r in rows]

    async def get(self, webhook_id: str) -> schemas.Webhook | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2",
            self._tenant,
            webhook_id,
        )
        return schemas.Webhook(**dict(row)) if row else None

    async def update(
        self,
        conn: PgConnection,
        webhook_id: str,
        url: str | None,
        kinds: list[str] | None,
        enabled: bool | None,
    ) -> schemas.Webhook | None:
        """Change the fields given (None = unchanged); None when the webhook does not exist."""
        row = await conn.fetchrow(
            "UPDATE webhooks SET url = COALESCE($3, url), kinds = COALESCE($4::text[], kinds),"
            " enabled = COALESCE($5, enabled), updated_at = now()"
            f" WHERE tenant_id = $1 AND webhook_id = $2 RETURNING {_COLUMNS}",
            self._tenant,
            webhook_id,
            url,
            kinds,
            enabled,
        )
        return schemas.Webhook(**dict(row)) if row else None

    async def replace_secret(
        self, conn: PgConnection, webhook_id: str, sealed: str
    ) -> schemas.Webhook | None:
        """Store a new (sealed) signing secret; None when the webhook does not exist."""
        row = await conn.fetchrow(
            "UPDATE webhooks SET secret = $3, updated_at = now()"
            f" WHERE tenant_id = $1 AND webhook_id = $2 RETURNING {_COLUMNS}",
            self._tenant,
            webhook_id,
            sealed,
        )
        return schemas.Webhook(**dict(row)) if row else None

    async def delete(self, conn: PgConnection, webhook_id: str) -> bool:
        """Delete the webhook and its deliveries (history included: nothing could read it any more)."""
        status = await conn.execute(
            "DELETE FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2", self._tenant, webhook_id
        )
        if status.endswith(" 0"):
            return False
        await conn.execute(
            "DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2",
            self._tenant,
            webhook_id,
        )
        return True

    async def deliveries(
        self, webhook_id: str, status: str | None, after: tuple[int, str] | None, limit: int
    ) -> list[DeliveryRow]:
        """Deliveries by (created_at DESC, event_id), after a keyset position."""
        where = Conditions()
        where.add(f"tenant_id = {where.param(self._tenant)}")
        where.add(f"webhook_id = {where.param(webhook_id)}")
        if status is not None:
            where.add(f"status = {where.param(status)}")
        if after is not None:
            micros, event_id = after
            t, i = where.param(from_micros(micros)), where.param(event_id)
            where.add(f"(created_at < {t} OR (created_at = {t} AND event_id > {i}::uuid))")
        rows = await self._pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {where.sql}"
            f" ORDER BY created_at DESC, event_id LIMIT {where.param(limit)}",
            *where.args,
        )
        return [DeliveryRow(schemas.Delivery(**dict(r)), to_micros(r["created_at"])) for r in rows]


async def reseal_secrets(pool: asyncpg.Pool[Any], box: SecretBox) -> int:
    """Seal every webhook secret under the box's first key: those stored in plaintext (before
    sealing existed) and those sealed under an older key. Compare-and-set per row, so API
    processes starting together do not undo each other. Returns how many changed."""
    changed = 0
    async with pool.acquire() as conn:
        for row in await conn.fetch("SELECT tenant_id, webhook_id, secret FROM webhooks"):
            try:
                sealed = box.resealed(row["secret"])
            except SecretUnreadable:
                log.warning(
                    "webhook %s of %s: its secret opens with no configured key",
                    row["webhook_id"],
                    row["tenant_id"],
                )
                continue
            if sealed is None:
                continue
            done = await conn.execute(
                "UPDATE webhooks SET secret = $4 WHERE tenant_id = $1 AND webhook_id = $2 AND secret = $3",
                row["tenant_id"],
                row["webhook_id"],
                row["secret"],
                sealed,
            )
            changed += not done.endswith(" 0")
    return changed
