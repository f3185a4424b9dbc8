"""The metadata schema migrates a database created by an earlier version in place."""

from __future__ import annotations

import asyncpg
import pytest

from runledger.stores.postgres.migrate import migrate

pytestmark = pytest.mark.integration


async def test_migrate_adds_columns_to_tables_of_an_earlier_version(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        # latest_metrics as the first version created it (no first_step), with a row.
        await conn.execute(
            "CREATE TABLE latest_metrics (tenant_id text NOT NULL, run_id text NOT NULL, key text NOT NULL,"
            " value double precision NOT NULL, step bigint NOT NULL, timestamp bigint NOT NULL,"
            " PRIMARY KEY (tenant_id, run_id, key))"
        )
        await conn.execute("INSERT INTO latest_metrics VALUES ('t', 'r', 'loss', 0.5, 9, 1)")
        await migrate(conn)
        await migrate(conn)  # and again: idempotent
        row = await conn.fetchrow("SELECT step, first_step FROM latest_metrics")
    finally:
        await conn.close()
    assert row is not None and (row["step"], row["first_step"]) == (9, 0)
