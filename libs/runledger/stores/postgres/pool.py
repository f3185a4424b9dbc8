"""The asyncpg connection pool every service opens.

asyncpg resets a connection on each release with one more round trip (`RESET ALL`,
`UNLISTEN *`, `CLOSE ALL`, `pg_advisory_unlock_all()`). Nothing here leaves session state on
a pooled connection: settings are `SET LOCAL`, cursors live inside transactions, the one
advisory lock (the retention sweep) is released by its holder, and LISTEN has its own
connection (services/api/consistency.py). So the release only rolls back a transaction left
open, which asyncpg does before calling `reset` anyway, and saves the round trip: one per
request phase of the API and per projector round.
"""

from __future__ import annotations

from typing import Any

import asyncpg


async def _keep_session(_conn: asyncpg.Connection[Any]) -> None:
    """Pool reset hook: nothing to reset (asyncpg has already rolled back an open transaction)."""


async def open_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool[Any]:
    """A pool whose release costs no round trip (see the module's docstring)."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)
    assert pool is not None
    return pool
