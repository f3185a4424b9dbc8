"""Replay of the projections, paused against the in-process projector."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import asyncpg

from runledger.stores.clickhouse import ClickHouse
from services.api.errors import InvalidState
from services.ingest.replay import ReplayStats, replay

_replay_running = asyncio.Lock()


async def replay_projections(
    clickhouse: ClickHouse, pool: asyncpg.Pool[Any], projector_lock: threading.Lock | None
) -> ReplayStats:
    """Pause the projector (its write lock), rebuild every projection, resume."""
    if projector_lock is None:
        raise InvalidState(
            "this API process runs no projector to pause; stop the ingest services and replay from a process"
            " that owns one (`runledger serve all`)"
        )
    if _replay_running.locked():
        raise InvalidState("a replay is already running")
    async with _replay_running:
        await asyncio.to_thread(projector_lock.acquire)
        try:
            return await replay(clickhouse, pool)
        finally:
            projector_lock.release()
