"""The services' pool skips asyncpg's reset query on release: what a release must still undo
(a transaction left open) is undone, and the connection is reused, not replaced."""

from __future__ import annotations

import pytest

from runledger.stores.postgres.pool import open_pool

pytestmark = pytest.mark.integration


async def test_a_release_rolls_back_an_open_transaction_and_keeps_the_connection(fresh_dsn: str) -> None:
    pool = await open_pool(fresh_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE kept (v int)")
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            before = conn._protocol.queries_count  # the round trips asyncpg counts (private)
            await conn.execute("BEGIN")  # unmanaged, as a bug elsewhere could leave it
            await conn.execute("INSERT INTO kept VALUES (1)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
            # BEGIN, INSERT, ROLLBACK, then this session's two queries: no reset query in between
            assert conn._protocol.queries_count - before == 5
    finally:
        await pool.close()
