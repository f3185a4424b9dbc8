"""Forgetting the ids of applied events once they are older than the dedup horizon.

`applied_events` lets the projector skip an event re-sent with the same id (the SDK's
resend after a broker restart, a retried sync). Kept forever it would grow by every
event ever projected (a fleet: ~100 events/s, 8.6M ids a day) and every round's
duplicate check would probe an ever larger index. Re-sends come within minutes (the
SDK's resend window) or are marked by `runledger sync`, so ids older than
RUNLEDGER_PROJECTOR_DEDUP_HORIZON_DAYS are deleted, a chunk at a time, by whichever
projector holds the advisory lock (one at a time across replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

import asyncpg

from runledger.stores.postgres import PgConnection

log = logging.getLogger(__name__)

PRUNE_LOCK = 0x72_6C_64_65_64_75_70  # pg advisory lock id ("rldedup")
PRUNE_CHUNK = 20_000  # ids per DELETE: short transactions, no long lock on the table
FIRST_PRUNE_AFTER_S = 60.0  # not in the start-up rush
PRUNE_EVERY_S = 600.0


async def prune_applied(conn: PgConnection, horizon: timedelta, chunk: int = PRUNE_CHUNK) -> int:
    """Delete the ids applied before now - `horizon`, `chunk` rows per statement; returns how many."""
    total = 0
    while True:
        status = await conn.execute(
            "DELETE FROM applied_events WHERE ctid = ANY(ARRAY("
            " SELECT ctid FROM applied_events WHERE applied_at < now() - $1::interval LIMIT $2))",
            horizon,
            chunk,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < chunk:
            return total


async def prune_once(pool: asyncpg.Pool[Any], horizon: timedelta) -> int | None:
    """One pruning pass under the advisory lock; None when another projector holds it."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PRUNE_LOCK):
            return None
        try:
            return await prune_applied(conn, horizon)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)


async def prune_forever(
    pool: asyncpg.Pool[Any],
    horizon_days: float,
    stop: asyncio.Event,
    first_after_s: float = FIRST_PRUNE_AFTER_S,
    every_s: float = PRUNE_EVERY_S,
) -> None:
    """Prune every `every_s` until `stop` is set (nothing at all when the horizon is 0)."""
    if horizon_days <= 0:
        return
    horizon = timedelta(days=horizon_days)
    wait = first_after_s
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set():
            return
        wait = every_s
        try:
            deleted = await prune_once(pool, horizon)
        except Exception as exc:  # Postgres away, a closed pool...: the next pass retries
            # Never let the task die: the projector awaits it when it stops, which would
            # raise a stale error there.
            log.warning("pruning applied_events failed (%s); retrying in %.0f s", exc, every_s)
            continue
        if deleted:
            log.info("pruned %d applied event ids older than %s", deleted, horizon)
