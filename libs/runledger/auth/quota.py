"""Per-tenant event rate limits: one token bucket per tenant, in process memory.

Pure (no I/O), so the API and the projector share it. A request needing more tokens
than a bucket holds is admitted once the bucket is full and leaves it in debt: a
large batch is never refused forever, and the tenant still averages its rate.
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
