"""Per-tenant rate limits (events, metric points): one token bucket per tenant, in process memory.

Pure (no I/O), so the API and the projector share it. A request needing more tokens
than a bucket holds is admitted once the bucket is full and leaves it in debt: a
large batch is never refused forever, and the tenant still averages its rate.
The Tarpit decides which writes came back before their 429's Retry-After and how
long to hold them; the API does the sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_BURST_S = 2.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets by tenant: `rate` tokens a second, at most `burst_s` seconds' worth banked."""

    def __init__(self, burst_s: float = DEFAULT_BURST_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst_s = burst_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()  # the projector takes from worker threads

    def capacity(self, rate: float) -> float:
        """Most tokens a bucket of this rate holds (at least one event's worth)."""
        return max(rate * self._burst_s, 1.0)

    def take(self, tenant_id: str, n: int, rate: float) -> float:
        """Take `n` tokens: 0.0 when admitted, else the seconds until the request would be."""
        if rate <= 0:
            return float("inf") if n > 0 else 0.0
        capacity = self.capacity(rate)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant_id)
            if bucket is None:
                bucket = self._buckets[tenant_id] = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            needed = min(float(n), capacity)
            if bucket.tokens >= needed:
                bucket.tokens -= n
                return 0.0
            return (needed - bucket.tokens) / rate

    def refund(self, tenant_id: str, n: int, rate: float) -> None:
        """Give back `n` tokens taken for a request that was refused after all (another quota)."""
        with self._lock:
            bucket = self._buckets.get(tenant_id)
            if bucket is not None:
                bucket.tokens = min(self.capacity(rate), bucket.tokens + n)

    def wait_for_one(self, tenant_id: str, rate: float) -> float:
        """Seconds until the tenant's bucket holds one token (0.0: now), taking nothing."""
        if rate <= 0:
            return float("inf")
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant_id)
            if bucket is None:
                return 0.0
            tokens = min(self.capacity(rate), bucket.tokens + (now - bucket.updated) * rate)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate


# A client that waited its Retry-After is never held; this much slack absorbs timer jitter.
TARPIT_GRACE_S = 0.05
# Held requests keep a connection and a coroutine each: bounded per tenant and overall,
# so the tarpit cannot be used to exhaust memory. Beyond them an early request is refused at once.
TARPIT_MAX_HELD_PER_TENANT = 64
TARPIT_MAX_HELD = 1024
# Promises of tenants that never came back are dropped once this many are kept.
_PRUNE_AT = 4096


@dataclass(frozen=True, slots=True)
class Hold:
    """What to do with a write: sleep `seconds` (0: none), then refuse it (429 with
    Retry-After `retry_after_s`) when `refuse`, else check its quota as usual."""

    seconds: float = 0.0
    refuse: bool = False
    retry_after_s: float = 0.0


ADMIT = Hold()


class Tarpit:
    """Holds the writes of a tenant that come back before its 429's Retry-After.

    A client retrying at once costs the API a parse, an authentication and a 429 each
    time, thousands a second; held (the caller sleeps without a thread) it costs one
    request per connection per Retry-After. The promise kept per tenant is the
    earliest Retry-After still pending, never a later one: every client that waited
    the Retry-After it was given arrives after it and is never held, even when the
    tenant's other clients got later ones. Event-loop only (no lock).
    """

    def __init__(
        self,
        max_held_per_tenant: int = TARPIT_MAX_HELD_PER_TENANT,
        max_held: int = TARPIT_MAX_HELD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_held_per_tenant = max_held_per_tenant
        self._max_held = max_held
        self._clock = clock
        self._not_before: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._held_total = 0

    def told_to_wait(self, tenant_id: str, seconds: float) -> None:
        """A 429 told a client of the tenant to retry after `seconds`."""
        now = self._clock()
        due = now + seconds
        pending = self._not_before.get(tenant_id)
        if pending is None or pending <= now or due < pending:
            self._not_before[tenant_id] = due
        if len(self._not_before) > _PRUNE_AT:
            self._not_before = {t: d for t, d in self._not_before.items() if d > now}

    def hold(self, tenant_id: str, max_s: float) -> Hold:
        """How long to hold a write of the tenant arriving now, at most `max_s` (0: never).

        A hold of more than 0 s counts against the caps until `release(tenant_id)`.
        """
        if max_s <= 0:
            return ADMIT
        due = self._not_before.get(tenant_id)
        if due is None:
            return ADMIT
        remaining = due - self._clock()
        if remaining <= TARPIT_GRACE_S:
            if remaining <= 0:
                del self._not_before[tenant_id]
            return ADMIT
        held = self._held.get(tenant_id, 0)
        if held >= self._max_held_per_tenant or self._held_total >= self._max_held:
            return Hold(0.0, True, remaining)
        seconds = min(remaining, max_s)
        self._held[tenant_id] = held + 1
        self._held_total += 1
        # Held to the end of the wait, the write is then checked as if it had waited.
        return Hold(seconds, remaining > max_s, remaining - seconds)

    def release(self, tenant_id: str) -> None:
        """A held write of the tenant is done sleeping."""
        held = self._held.get(tenant_id, 0) - 1
        if held > 0:
            self._held[tenant_id] = held
        else:
            self._held.pop(tenant_id, None)
        self._held_total = max(0, self._held_total - 1)

    def held(self, tenant_id: str | None = None) -> int:
        """Writes being held now (of one tenant, or of all)."""
        return self._held_total if tenant_id is None else self._held.get(tenant_id, 0)
