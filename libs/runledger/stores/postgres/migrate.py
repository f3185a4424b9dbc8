"""Create the metadata schema (idempotent); run by every service at start."""

from __future__ import annotations

from importlib.resources import files

from runledger.stores.postgres import PgConnection

# Serialises concurrent migrations from several processes starting at once.
_MIGRATION_LOCK = 7_301_001


def schema_sql() -> str:
    """The DDL of every metadata table."""
    return files("runledger.stores.postgres").joinpath("schema.sql").read_text()


async def migrate(conn: PgConnection) -> None:
    """Apply schema.sql under an advisory lock."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(schema_sql())
