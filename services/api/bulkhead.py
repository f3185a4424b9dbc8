"""A per-tenant bulkhead for heavy writes: at most N of one tenant's large JSON writes are
read, parsed and produced at a time; its others wait their turn (asyncio, no CPU).

Why: the API's event loop parses every JSON body itself (about 8 ms for a 2,000-point
metrics write). When a tenant's writers come back together (16 polite clients returning
after the same Retry-After), their bodies filled the loop for 150-300 ms, and every other
tenant's request waited behind them (bench/RESULTS.md, "Noisy neighbour: a bulkhead for
heavy writes"). With the bulkhead another tenant's request waits behind at most N of
them. Small writes (below RUNLEDGER_API_HEAVY_WRITE_BYTES) cost little and pass freely.

A slot is held from before the body is read until the write starts waiting for its
projection (`release_held_slot`: the loop is then idle for it) or, at the latest, until
its response is sent; so a tenant's synchronous writes still wait for their projection
side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_HELD: ContextVar[Callable[[], None] | None] = ContextVar("runledger_heavy_write_slot", default=None)


@dataclass
class _Lane:
    """One tenant's slots: a semaphore, and how many requests hold or wait for it."""

    slots: asyncio.Semaphore
    users: int = 0


class TenantBulkhead:
    """At most `per_tenant` heavy writes of each tenant at a time (0: no limit)."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._lanes: dict[str, _Lane] = {}

    @property
    def enabled(self) -> bool:
        """Whether writes are limited at all."""
        return self.per_tenant > 0

    @asynccontextmanager
    async def slot(self, tenant_id: str) -> AsyncIterator[None]:
        """Hold one of the tenant's slots (waiting for it) until the block ends, or until
        `release_held_slot()` in the same task gives it back earlier. Without a limit
        (`per_tenant` 0) it admits at once.
        """
        if not self.enabled:
            yield
            return
        lane = self._lanes.get(tenant_id)
        if lane is None:
            lane = self._lanes[tenant_id] = _Lane(asyncio.Semaphore(self.per_tenant))
        lane.users += 1
        acquired = False
        try:
            await lane.slots.acquire()
            acquired = True

            def release() -> None:
                nonlocal acquired
                if acquired:
                    acquired = False
                    lane.slots.release()

            token = _HELD.set(release)
            try:
                yield
            finally:
                _HELD.reset(token)
                release()
        finally:
            lane.users -= 1
            if lane.users == 0:  # nobody holds or waits: forget the tenant
                del self._lanes[tenant_id]


def release_held_slot() -> None:
    """Release the heavy-write slot this request holds, if any (before a long idle wait)."""
    release = _HELD.get()
    if release is not None:
        release()


def is_heavy_json_write(headers: list[tuple[bytes, bytes]], threshold_bytes: int) -> bool:
    """Whether a request with these headers sends a JSON body of at least `threshold_bytes`
    (a chunked one, whose size is not declared, counts as heavy)."""
    declared: int | None = None
    chunked = json = False
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return False  # refused as malformed further in
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"content-type":
            json = b"json" in value.lower()
    if not json:
        return False
    if declared is not None:
        return declared >= threshold_bytes
    return chunked
