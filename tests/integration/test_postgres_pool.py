"""The services' pool skips asyncpg's reset query on release: what a release must still undo
(a transaction left open) is undone, and the connection is reused, not replaced."""

from __future__ import annotations

from typing import Any

import pytest

from runledger.stores.postgres.pool import open_pool

pytestmark = pytest.mark.integration


def _round_trips(conn: Any) -> int:
    """Queries asyncpg has sent on this connection (a private counter of its protocol)."""
    return int(conn._protocol.queries_count)


async def test_a_release_rolls_back_an_open_transaction_and_keeps_the_connection(fresh_dsn: str) -> None:
    pool = await open_pool(fresh_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE kept (v int)")
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            before = _round_trips(conn)
            await conn.execute("BEGIN")  # unmanaged, as a bug elsewhere could leave it
            await conn.execute("INSERT INTO kept VALUES (1)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
            # BEGIN, INSERT, ROLLBACK, then this session's two queries: no reset query in between
            assert _round_trips(conn) - before == 5
    finally:
        await pool.close()
