"""applied_events forgets ids older than the dedup horizon, a chunk at a time, one pruner at a
time; younger ids still make the projector skip a re-sent event."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from runledger.stores.postgres import PgConnection
from runledger.stores.postgres.migrate import migrate
from runledger.stores.postgres.pool import open_pool
from services.ingest.dedup_horizon import PRUNE_LOCK, prune_applied, prune_forever, prune_once
from services.ingest.metadata_writer import already_applied

pytestmark = pytest.mark.integration


async def _seed(conn: PgConnection, old: int, young: int) -> tuple[list[str], list[str]]:
    old_ids = [str(uuid.uuid4()) for _ in range(old)]
    young_ids = [str(uuid.uuid4()) for _ in range(young)]
    await conn.execute(
        "INSERT INTO applied_events (event_id, applied_at) SELECT unnest($1::uuid[]), now() - interval '40 days'",
        old_ids,
    )
    await conn.execute(
        "INSERT INTO applied_events (event_id, applied_at) SELECT unnest($1::uuid[]), now() - interval '2 days'",
        young_ids,
    )
    return old_ids, young_ids


async def test_ids_beyond_the_horizon_are_pruned_in_chunks_and_the_rest_still_dedup(fresh_dsn: str) -> None:
    pool = await open_pool(fresh_dsn, min_size=1, max_size=3)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            old_ids, young_ids = await _seed(conn, old=2_500, young=300)
            assert await prune_applied(conn, timedelta(days=30), chunk=1_000) == 2_500  # three statements
            assert await conn.fetchval("SELECT count(*) FROM applied_events") == 300
            assert await already_applied(conn, old_ids[:5] + young_ids[:5]) == set(young_ids[:5])

            await _seed(conn, old=10, young=0)
            async with pool.acquire() as other:  # another projector is pruning: this one skips
                assert await other.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK)
                assert await prune_once(pool, timedelta(days=30)) is None
                await other.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)
            assert await prune_once(pool, timedelta(days=30)) == 10

            await _seed(conn, old=7, young=0)
            stop = asyncio.Event()
            task = asyncio.create_task(prune_forever(pool, 30.0, stop, first_after_s=0.05, every_s=60))
            for _ in range(100):
                if await conn.fetchval("SELECT count(*) FROM applied_events") == 300:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 5)  # stops at once, not after its 60 s wait
            assert await conn.fetchval("SELECT count(*) FROM applied_events") == 300
            # A horizon of 0 never prunes.
            await _seed(conn, old=3, young=0)
            await asyncio.wait_for(prune_forever(pool, 0.0, asyncio.Event(), first_after_s=0), 1)
            assert await conn.fetchval("SELECT count(*) FROM applied_events") == 303
    finally:
        await pool.close()
