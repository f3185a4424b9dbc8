"""Consistency tokens and the projection waiter's bookkeeping (no Postgres: notifications are fed by hand)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from services.api.consistency import ConsistencyToken, ProjectionWaiter, parse_notification
from services.api.errors import InvalidParameter
from services.ingest.checkpoints import PartitionKey, notification


def test_token_keeps_the_highest_offset_per_partition_and_round_trips() -> None:
    token = ConsistencyToken.from_positions("inc-1", "topic", [(2, 5), (0, 9), (2, 7), (0, 3)])
    assert token.offsets == ((0, 9), (2, 7))
    assert ConsistencyToken.decode(token.encode()) == token


@pytest.mark.parametrize("raw", ["", "x", "e30", "eyJpbmNhcm5hdGlvbiI6MX0", "W1td"])
def test_foreign_tokens_are_invalid(raw: str) -> None:
    with pytest.raises(InvalidParameter):
        ConsistencyToken.decode(raw)


def test_notification_payloads() -> None:
    key = PartitionKey("g", "a|b|inc", "runledger.events.v1", 3)
    assert parse_notification(notification(key, 42), "g") == (("a|b|inc", "runledger.events.v1", 3), 42)
    assert parse_notification(notification(key, 42), "other-group") is None
    assert parse_notification('{"group": "g", "partition": "x"}', "g") is None
    assert parse_notification("nonsense", "g") is None


def _waiter() -> ProjectionWaiter:
    return ProjectionWaiter("postgresql://unused", cast(Any, None), "g")


async def test_wait_resolves_when_every_partition_is_projected() -> None:
    waiter = _waiter()
    token = ConsistencyToken.from_positions("inc", "t", [(0, 5), (1, 2)])
    task = asyncio.create_task(waiter.wait(token, 5))
    await asyncio.sleep(0.01)
    waiter._on_notify(None, 0, "", notification(PartitionKey("g", "inc", "t", 0), 5))
    await asyncio.sleep(0.01)
    assert not task.done()  # partition 1 still behind
    waiter._on_notify(None, 0, "", notification(PartitionKey("g", "inc", "t", 1), 1))
    await asyncio.sleep(0.01)
    assert not task.done()
    waiter._on_notify(None, 0, "", notification(PartitionKey("g", "inc", "t", 1), 9))
    assert await task is True
    assert waiter._waiters == {}  # nothing left behind


async def test_wait_is_immediate_when_already_known_and_times_out_otherwise() -> None:
    waiter = _waiter()
    waiter._on_notify(None, 0, "", notification(PartitionKey("g", "inc", "t", 0), 10))
    assert await waiter.wait(ConsistencyToken("inc", "t", ((0, 10),)), 0.01) is True
    # Another incarnation's offsets are unrelated: the same offset there is not projected.
    assert await waiter.wait(ConsistencyToken("other", "t", ((0, 10),)), 0.02) is False
    assert waiter._waiters == {}


async def test_checkpoints_only_move_forward() -> None:
    waiter = _waiter()
    waiter._on_notify(None, 0, "", notification(PartitionKey("g", "inc", "t", 0), 10))
    waiter._on_notify(
        None, 0, "", notification(PartitionKey("g", "inc", "t", 0), 4)
    )  # a late, stale notification
    assert waiter.committed("inc", "t", 0) == 10
