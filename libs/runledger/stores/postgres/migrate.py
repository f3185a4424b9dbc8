"""Create the metadata schema (idempotent); run by every service at start."""

from __future__ import annotations

import hashlib
from importlib.resources import files

from runledger.stores.postgres import PgConnection

# Serialises concurrent migrations from several processes starting at once.
_MIGRATION_LOCK = 7_301_001


def schema_sql() -> str:
    """The DDL of every metadata table."""
    return files("runledger.stores.postgres").joinpath("schema.sql").read_text()


async def migrate(conn: PgConnection) -> None:
    """Apply schema.sql under an advisory lock, unless this very schema was applied already.

    Applying it takes locks even where it changes nothing (`ADD COLUMN IF NOT EXISTS` an
    exclusive one, `CREATE INDEX IF NOT EXISTS` one that keeps writers out), all held until
    its transaction ends: every service start would wait behind any open write transaction
    on two dozen tables and hold the writers queued behind it. A database that has the
    schema's digest in `schema_applied` is left alone, so a start with an unchanged schema
    takes no lock at all.
    """
    sql = schema_sql()
    digest = hashlib.sha256(sql.encode()).hexdigest()
    if await _applied(conn, digest):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        if await _applied(conn, digest):  # another process applied it meanwhile
            return
        await conn.execute(sql)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_applied"
            " (digest text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("INSERT INTO schema_applied (digest) VALUES ($1) ON CONFLICT DO NOTHING", digest)


async def _applied(conn: PgConnection, digest: str) -> bool:
    """Whether schema.sql with this digest has been applied to the database."""
    if await conn.fetchval("SELECT to_regclass('schema_applied')") is None:
        return False
    applied: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM schema_applied WHERE digest = $1)", digest
    )
    return applied
