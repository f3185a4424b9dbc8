"""API-side tenant quotas: events per second (token buckets) and stored points.

Both are checked before anything is produced. The points in store come from
tenant_usage (kept by the projector), cached per tenant for at most a second so
that a write costs no extra database round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from runledger.auth.model import Quota
from runledger.auth.quota import TokenBuckets
from services.api.errors import RequestLimitExceeded

USAGE_CACHE_S = 1.0
POINTS_RETRY_AFTER_S = 60


def usage_reader(pool: asyncpg.Pool[Any]) -> Callable[[str], Awaitable[int]]:
    """Reads a tenant's stored points from tenant_usage (0 before its first point)."""

    async def read(tenant_id: str) -> int:
        value = await pool.fetchval("SELECT points FROM tenant_usage WHERE tenant_id = $1", tenant_id)
        return int(value or 0)

    return read


class QuotaGate:
    """Admits or refuses (429) a write of `events` events carrying `points` metric points."""

    def __init__(
        self,
        read_usage: Callable[[str], Awaitable[int]],
        buckets: TokenBuckets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_usage = read_usage
        self._buckets = buckets or TokenBuckets()
        self._clock = clock
        self._usage: dict[str, tuple[int, float]] = {}

    async def stored_points(self, tenant_id: str) -> int:
        """The tenant's stored points, at most USAGE_CACHE_S old."""
        now = self._clock()
        cached = self._usage.get(tenant_id)
        if cached is not None and now - cached[1] < USAGE_CACHE_S:
            return cached[0]
        points = await self._read_usage(tenant_id)
        self._usage[tenant_id] = (points, now)
        return points

    def refuse_early(self, tenant_id: str, quota: Quota) -> RequestLimitExceeded | None:
        """The 429 for a write of a tenant whose rate bucket is empty, decided before the
        request body is even read: a client flooding past its quota costs almost nothing."""
        if quota.events_per_second is None:
            return None
        wait = self._buckets.wait_for_one(tenant_id, quota.events_per_second)
        if wait <= 0:
            return None
        return _rate_exceeded(quota.events_per_second, wait, "")

    async def admit(self, tenant_id: str, quota: Quota, events: int, points: int) -> None:
        """Raise RequestLimitExceeded (with Retry-After) when the write is over a quota."""
        # Points first: a write refused for its points must not spend rate tokens.
        if quota.max_points is not None and points > 0:
            stored = await self.stored_points(tenant_id)
            if stored + points > quota.max_points:
                raise RequestLimitExceeded(
                    f"stored-points quota of {quota.max_points} reached: the tenant stores {stored} points"
                    f" and this request adds {points}",
                    headers={"Retry-After": str(POINTS_RETRY_AFTER_S)},
                )
        if quota.events_per_second is not None and events > 0:
            wait = self._buckets.take(tenant_id, events, quota.events_per_second)
            if wait > 0:
                raise _rate_exceeded(
                    quota.events_per_second, wait, f" (this request produces {events} events)"
                )


def _rate_exceeded(rate: int, wait: float, what: str) -> RequestLimitExceeded:
    seconds = max(1, math.ceil(wait)) if math.isfinite(wait) else POINTS_RETRY_AFTER_S
    return RequestLimitExceeded(
        f"events-per-second quota of {rate} exceeded{what}; retry after {seconds} s",
        headers={"Retry-After": str(seconds)},
    )
