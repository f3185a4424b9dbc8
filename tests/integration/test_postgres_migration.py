"""The metadata schema migrates a database created by an earlier version in place."""

from __future__ import annotations

import asyncpg
import pytest

from runledger.stores.postgres.migrate import migrate
from services.analysis.store import StateKey, load_states

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


async def test_migrate_turns_jsonb_detector_states_into_bytes_that_load_as_before(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        # analysis_state as the first version created it: states as jsonb.
        await conn.execute(
            "CREATE TABLE analysis_state (tenant_id text NOT NULL, scope text NOT NULL, scope_id text NOT NULL,"
            " key text NOT NULL, member text NOT NULL, state jsonb NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, scope, scope_id, key, member))"
        )
        state = {"n": 3, "best": -0.25, "bh": [1.5, None, 2.0], "name": "é"}
        await conn.execute(
            "INSERT INTO analysis_state (tenant_id, scope, scope_id, key, member, state)"
            " VALUES ('t', 'series', 'r', 'loss', '', $1::jsonb)",
            '{"n": 3, "best": -0.25, "bh": [1.5, null, 2.0], "name": "\\u00e9"}',
        )
        await migrate(conn)
        await migrate(conn)  # and again: idempotent, the bytes untouched
        kind = await conn.fetchval("SELECT pg_typeof(state)::text FROM analysis_state")
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'analysis_state'")
        key = StateKey("t", "series", "r", "loss")
        loaded = await load_states(conn, [key])
    finally:
        await conn.close()
    assert kind == "bytea" and "fillfactor=50" in options
    assert loaded == {key: {"": state}}


async def test_a_start_with_the_schema_applied_waits_for_no_writer(fresh_dsn: str) -> None:
    """Applying schema.sql locks two dozen tables even where it changes nothing (ADD COLUMN IF
    NOT EXISTS, CREATE INDEX IF NOT EXISTS): a service start then waited behind any open
    write, and held the writers queued behind it. Once applied, it is not applied again."""
    conn = await asyncpg.connect(fresh_dsn)
    writer = await asyncpg.connect(fresh_dsn)
    try:
        await migrate(conn)
        await writer.execute(
            "BEGIN; LOCK TABLE latest_metrics, runs, projector_checkpoints IN ROW EXCLUSIVE MODE"
        )
        await conn.execute("SET lock_timeout = '500ms'")
        await migrate(conn)  # LockNotAvailableError if it waited for the writer
        assert await conn.fetchval("SELECT count(*) FROM schema_applied") == 1
    finally:
        await writer.close()
        await conn.close()
