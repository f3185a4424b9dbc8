"""Token buckets, the quota gate and the signatures of the events the API builds (no services)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
import pytest

from runledger.auth import signing
from runledger.auth.keys import generate_key
from runledger.auth.model import AuthSnapshot, Quota
from runledger.auth.quota import TokenBuckets
from runledger.auth.rbac import Authorizer
from runledger.events.codec import decode
from runledger.events.models import EventType
from services.api.errors import RequestLimitExceeded
from services.api.principal import Principal
from services.api.quotas import QuotaGate
from services.api.runs.schemas import MetricPoint
from services.api.runs.service import metric_payloads
from services.api.writes import build_event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_two_seconds_of_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert buckets.take("a", 20, rate=10) == 0.0  # a full bucket holds 2 s worth
    wait = buckets.take("a", 5, rate=10)
    assert wait == pytest.approx(0.5)
    assert buckets.take("b", 20, rate=10) == 0.0  # another tenant has its own bucket
    clock.now += 0.5
    assert buckets.take("a", 5, rate=10) == 0.0


def test_a_batch_larger_than_the_bucket_waits_for_a_full_bucket_and_leaves_debt() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert buckets.take("a", 1, rate=4) == 0.0
    assert buckets.take("a", 100, rate=4) == 0.25  # not until the bucket (8 tokens) is full
    clock.now += 0.25
    assert buckets.take("a", 100, rate=4) == 0.0
    assert buckets.take("a", 1, rate=4) == 23.25  # 92 tokens of debt, then one


def test_waiting_for_one_token_takes_nothing() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock=clock)
    assert buckets.wait_for_one("a", rate=2) == 0.0  # an unseen tenant has a full bucket
    assert buckets.take("a", 4, rate=2) == 0.0
    assert buckets.wait_for_one("a", rate=2) == pytest.approx(0.5)
    assert buckets.wait_for_one("a", rate=2) == pytest.approx(0.5)  # peeking spent nothing
    clock.now += 0.5
    assert buckets.wait_for_one("a", rate=2) == 0.0


async def test_gate_refuses_over_the_rate_with_retry_after() -> None:
    clock = Clock()
    gate = QuotaGate(_usage({}), TokenBuckets(clock=clock), clock)
    quota = Quota(events_per_second=1)
    await gate.admit("a", quota, 2, 0)
    with pytest.raises(RequestLimitExceeded) as refused:
        await gate.admit("a", quota, 1, 0)
    assert refused.value.status_code == 429 and refused.value.error_code == "REQUEST_LIMIT_EXCEEDED"
    assert refused.value.headers == {"Retry-After": "1"}
    await gate.admit("b", quota, 2, 0)


async def test_gate_refuses_points_over_the_stored_quota_and_caches_usage_a_second() -> None:
    clock = Clock()
    stored = {"a": 90}
    reads: list[str] = []

    async def read(tenant_id: str) -> int:
        reads.append(tenant_id)
        return stored.get(tenant_id, 0)

    gate = QuotaGate(read, TokenBuckets(clock=clock), clock)
    quota = Quota(max_points=100)
    await gate.admit("a", quota, 1, 10)
    with pytest.raises(RequestLimitExceeded) as refused:
        await gate.admit("a", quota, 1, 11)
    assert "stored-points quota of 100 reached" in refused.value.message
    assert refused.value.headers == {"Retry-After": "60"}
    await gate.admit("a", quota, 1, 0)  # writes without points are not held back
    stored["a"] = 0
    with pytest.raises(RequestLimitExceeded):
        await gate.admit("a", quota, 1, 11)  # still cached
    clock.now += 1.0
    await gate.admit("a", quota, 1, 11)
    assert reads == ["a", "a"]


def _usage(values: dict[str, int]) -> Callable[[str], Awaitable[int]]:
    async def read(tenant_id: str) -> int:
        return values.get(tenant_id, 0)

    return read


def test_events_the_api_builds_are_signed_by_the_callers_key() -> None:
    key = generate_key()
    principal = Principal(
        tenant_id="t",
        authorizer=Authorizer(AuthSnapshot(generation=1)),
        key_id=key.key_id,
        signing_key=key.signing_key,
    )
    points = [MetricPoint(key="loss", value=v, step=i) for i, v in enumerate([1.5, math.nan, math.inf, 0.1])]
    (payload,) = metric_payloads(points, 1_700_000_000_000)
    events = [
        build_event(principal, EventType.METRICS_LOGGED, payload, run_id="r1", experiment_id="e1"),
        build_event(principal, EventType.EXPERIMENT_CREATED, {"name": "x", "tags": {}}, experiment_id="e1"),
    ]
    for event in events:
        envelope = orjson.loads(event.value)
        assert envelope["key_id"] == key.key_id and envelope["tenant_id"] == "t"
        assert signing.verify(envelope, key.signing_key)  # as the projector checks it, from the bytes
        assert not signing.verify(envelope, generate_key().signing_key)
    columns = decode(events[0].value).payload
    assert np.isnan(columns.values[1])  # type: ignore[union-attr]


async def test_gate_limits_points_per_second_apart_from_events() -> None:
    """A tenant writing few events of many points is held to its points rate; a write refused
    for its events spends none of its points."""
    clock = Clock()
    gate = QuotaGate(_usage({}), TokenBuckets(clock=clock), clock)
    quota = Quota(points_per_second=1_000)  # 2 s of burst: 2,000 points banked
    await gate.admit("a", quota, 1, 1_500)
    with pytest.raises(RequestLimitExceeded) as refused:
        await gate.admit("a", quota, 1, 1_000)
    assert (
        "points-per-second quota of 1000 exceeded (this request carries 1000 points)" in refused.value.message
    )
    assert refused.value.headers == {"Retry-After": "1"}  # 500 banked, 500 more in 0.5 s
    await gate.admit("a", quota, 1, 0)  # a write without points is not held back by them
    await gate.admit("a", quota, 1, 500)
    # Whether a write carries points shows only in its body: no refusal before it is read,
    # but a retry before the 429's Retry-After is held (tarpit), as for events.
    assert gate.refuse_early("a", quota) is None
    assert gate.hold("a", 2.0).seconds > 0
    await gate.admit("b", quota, 1, 2_000)  # another tenant's bucket

    # Both rates: the events quota refuses, and the points it would have spent stay banked.
    both = Quota(events_per_second=1, points_per_second=1_000)
    await gate.admit("c", both, 2, 100)  # both buckets: 2 events, 2,000 points banked
    with pytest.raises(RequestLimitExceeded) as refused:
        await gate.admit("c", both, 1, 100)
    assert "events-per-second quota of 1 exceeded" in refused.value.message
    clock.now += 1.0  # one event back; 1,900 points banked, not 1,800
    await gate.admit("c", both, 1, 1_900)
