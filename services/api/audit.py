"""The API's side of the audit log: denied requests are appended in the background.

Admin actions are appended in the same transaction as the change they record
(runledger.stores.postgres.directory.append_audit). Denials are many and must not
slow the answer, so they are queued and written in batches; a flood of them is
capped (counted in the next entry that gets through) so it cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from runledger.stores.postgres.directory import AuditEntry, append_audit

log = logging.getLogger(__name__)

_FLUSH_S = 0.2
_MAX_QUEUED = 10_000


class AuditSink:
    """Queues audit entries and appends them to Postgres in batches."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool
        self._queue: list[AuditEntry] = []
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, entry: AuditEntry) -> None:
        """Queue one entry (never blocks; beyond the cap entries are counted, not kept)."""
        if len(self._queue) >= _MAX_QUEUED:
            self._dropped += 1
            return
        self._queue.append(entry)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-sink")

    async def flush(self) -> None:
        """Write what is queued now."""
        entries, self._queue = self._queue, []
        if self._dropped:
            entries.append(
                AuditEntry(None, "runledger", "audit.dropped", "denied", details={"entries": self._dropped})
            )
            self._dropped = 0
        if not entries:
            return
        try:
            async with self._pool.acquire() as conn:
                await append_audit(conn, entries)
        except asyncpg.DataError:
            # Entries Postgres refuses would be refused forever and hold back every later one.
            log.exception("dropping %d audit entries Postgres refused", len(entries))
        except Exception:
            self._queue[:0] = entries  # kept for the next flush (the database may come back)
            raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("audit flush failed (retrying): %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
