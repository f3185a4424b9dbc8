"""The tarpit for clients that retry a 429 before its Retry-After (pure logic, fake clock)."""

from __future__ import annotations

import pytest

from runledger.auth.model import Quota
from runledger.auth.quota import ADMIT, TARPIT_GRACE_S, Tarpit, TokenBuckets
from services.api.quotas import QuotaGate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_early_retry_is_held_for_the_rest_of_the_wait_then_checked() -> None:
    clock = Clock()
    tarpit = Tarpit(clock=clock)
    tarpit.told_to_wait("a", 1.0)
    clock.now += 0.3
    hold = tarpit.hold("a", max_s=2.0)
    assert hold.seconds == pytest.approx(0.7) and not hold.refuse
    assert tarpit.held("a") == 1 and tarpit.held() == 1
    tarpit.release("a")
    assert tarpit.held("a") == 0 and tarpit.held() == 0
    assert tarpit.hold("b", max_s=2.0) == ADMIT  # another tenant was told nothing


def test_a_hold_is_capped_and_the_write_then_refused_with_the_rest_of_the_wait() -> None:
    clock = Clock()
    tarpit = Tarpit(clock=clock)
    tarpit.told_to_wait("a", 60.0)
    hold = tarpit.hold("a", max_s=2.0)
    assert hold.seconds == 2.0 and hold.refuse and hold.retry_after_s == pytest.approx(58.0)


def test_a_client_that_waited_its_retry_after_is_never_held() -> None:
    clock = Clock()
    tarpit = Tarpit(clock=clock)
    tarpit.told_to_wait("a", 1.0)
    clock.now += 1.0
    assert tarpit.hold("a", max_s=2.0) == ADMIT
    tarpit.told_to_wait("a", 1.0)
    clock.now += 1.0 - TARPIT_GRACE_S / 2  # timer jitter
    assert tarpit.hold("a", max_s=2.0) == ADMIT


def test_the_earliest_pending_retry_after_counts_so_no_polite_client_is_held() -> None:
    clock = Clock()
    tarpit = Tarpit(clock=clock)
    tarpit.told_to_wait("a", 1.0)  # client 1: back at 101
    clock.now += 0.5
    tarpit.told_to_wait("a", 1.0)  # client 2: back at 101.5
    clock.now = 101.0
    assert tarpit.hold("a", max_s=2.0) == ADMIT  # client 1 is on time
    tarpit.told_to_wait("a", 1.0)  # once due, a new 429 starts a new wait
    clock.now += 0.1
    assert tarpit.hold("a", max_s=2.0).seconds == pytest.approx(0.9)


def test_zero_disables_the_tarpit() -> None:
    tarpit = Tarpit(clock=Clock())
    tarpit.told_to_wait("a", 1.0)
    assert tarpit.hold("a", max_s=0) == ADMIT


def test_held_writes_are_capped_per_tenant_and_overall_beyond_which_they_are_refused_at_once() -> None:
    clock = Clock()
    tarpit = Tarpit(max_held_per_tenant=2, max_held=3, clock=clock)
    for tenant in ("a", "b"):
        tarpit.told_to_wait(tenant, 1.0)
    assert [tarpit.hold("a", 2.0).seconds for _ in range(2)] == [1.0, 1.0]
    over = tarpit.hold("a", 2.0)
    assert over.seconds == 0 and over.refuse and over.retry_after_s == 1.0
    assert tarpit.hold("b", 2.0).seconds == 1.0  # the third held write of all
    assert tarpit.hold("b", 2.0).refuse  # the overall cap
    tarpit.release("a")
    assert tarpit.hold("a", 2.0).seconds == 1.0  # a released place is free again
    assert tarpit.held() == 3


def test_promises_of_tenants_that_never_come_back_are_dropped() -> None:
    clock = Clock()
    tarpit = Tarpit(clock=clock)
    for i in range(5000):
        tarpit.told_to_wait(f"t{i}", 1.0)
    clock.now += 2
    tarpit.told_to_wait("last", 1.0)
    assert len(tarpit._not_before) < 5000


async def _no_usage(tenant_id: str) -> int:
    return 0


def test_the_gate_remembers_its_rate_429s_and_holds_an_early_retry() -> None:
    clock = Clock()
    gate = QuotaGate(_no_usage, TokenBuckets(clock=clock), clock=clock)
    quota = Quota(events_per_second=1)
    assert gate.refuse_early("a", quota) is None
    assert gate.tarpit.hold("a", 2.0) == ADMIT  # never refused: nothing to hold
    gate._buckets.take("a", 2, rate=1)  # the bucket (2 s at 1/s) is now empty
    refused = gate.refuse_early("a", quota)
    assert refused is not None and refused.headers == {"Retry-After": "1"}
    clock.now += 0.01  # retried at once
    hold = gate.hold("a", 2.0)
    assert hold.seconds == pytest.approx(0.99) and not hold.refuse
    gate.release("a")
    clock.now += hold.seconds
    assert gate.refuse_early("a", quota) is None  # after the wait it is checked as usual


def test_the_gate_refuses_a_write_held_to_the_cap_with_the_rest_of_the_wait() -> None:
    clock = Clock()
    gate = QuotaGate(_no_usage, TokenBuckets(clock=clock), clock=clock)
    gate.tarpit.told_to_wait("a", 5.0)
    hold = gate.hold("a", 2.0)
    assert hold.refuse
    error = gate.refuse_held("a", hold)
    assert error.status_code == 429 and error.headers == {"Retry-After": "3"}
    assert "Retry-After of an earlier 429" in error.message
