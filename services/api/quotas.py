"""API-side tenant quotas: events and metric points per second (token buckets), stored points.

Both are checked before anything is produced. The points in store come from
tenant_usage (kept by the projector), cached per tenant for at most a second so
that a write costs no extra database round trip.

A client that retries a rate 429 before its Retry-After is tarpitted (`hold`): the
edge (services/api/deps.py) sleeps until the Retry-After is due, at most
RUNLEDGER_API_TARPIT_MAX_S, so each of its connections costs one request per wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from runledger.auth.model import Quota
from runledger.auth.quota import Hold, Tarpit, TokenBuckets
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
        tarpit: Tarpit | None = None,
    ) -> None:
        self._read_usage = read_usage
        self._buckets = buckets or TokenBuckets()
        self._point_buckets = TokenBuckets(clock=clock)
        self._clock = clock
        self._usage: dict[str, tuple[int, float]] = {}
        self.tarpit = tarpit or Tarpit(clock=clock)

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
        """The 429 for a write of a tenant whose events bucket is empty, decided before the
        request body is even read: a client flooding past its quota costs almost nothing.
        (Not for points: whether a write carries any is known only from its body.)"""
        if quota.events_per_second is None:
            return None
        wait = self._buckets.wait_for_one(tenant_id, quota.events_per_second)
        if wait <= 0:
            return None
        return self._rate_exceeded(tenant_id, quota.events_per_second, wait, "")

    def hold(self, tenant_id: str, max_s: float) -> Hold:
        """How long to hold a write of the tenant before checking it (see Tarpit.hold)."""
        return self.tarpit.hold(tenant_id, max_s)

    def release(self, tenant_id: str) -> None:
        """A write held by `hold` is done sleeping."""
        self.tarpit.release(tenant_id)

    def refuse_held(self, tenant_id: str, hold: Hold) -> RequestLimitExceeded:
        """The 429 of a write that came back too early and may not wait out the rest here."""
        return self._rate_refusal(
            tenant_id,
            max(1, math.ceil(hold.retry_after_s)),
            "retried before the Retry-After of an earlier 429 (the tenant's events or points per second quota)",
        )

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
        points_rate = quota.points_per_second
        if points_rate is not None and points > 0:
            wait = self._point_buckets.take(tenant_id, points, points_rate)
            if wait > 0:
                # Tarpitted like an events 429: a client retrying at once would otherwise cost
                # a parse of its whole body each time (measured: bench/RESULTS.md, "Noisy neighbour").
                raise self._rate_refusal(
                    tenant_id,
                    max(1, math.ceil(wait)),
                    f"points-per-second quota of {points_rate} exceeded (this request carries {points} points)",
                )
        if quota.events_per_second is not None and events > 0:
            wait = self._buckets.take(tenant_id, events, quota.events_per_second)
            if wait > 0:
                if points_rate is not None and points > 0:  # not written: its points were not spent
                    self._point_buckets.refund(tenant_id, points, points_rate)
                raise self._rate_exceeded(
                    tenant_id, quota.events_per_second, wait, f" (this request produces {events} events)"
                )

    def _rate_exceeded(self, tenant_id: str, rate: int, wait: float, what: str) -> RequestLimitExceeded:
        seconds = max(1, math.ceil(wait)) if math.isfinite(wait) else POINTS_RETRY_AFTER_S
        return self._rate_refusal(tenant_id, seconds, f"events-per-second quota of {rate} exceeded{what}")

    def _rate_refusal(self, tenant_id: str, seconds: int, reason: str) -> RequestLimitExceeded:
        """A rate 429 (events or points per second) whose Retry-After the tarpit holds the tenant
        to. Not a stored-points 429: it must not hold the tenant's writes without points, which
        go on."""
        self.tarpit.told_to_wait(tenant_id, seconds)
        return RequestLimitExceeded(
            f"{reason}; retry after {seconds} s", headers={"Retry-After": str(seconds)}
        )
