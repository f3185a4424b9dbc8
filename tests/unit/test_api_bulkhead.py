"""The per-tenant bulkhead for heavy writes."""

from __future__ import annotations

import asyncio

import pytest

from services.api.bulkhead import TenantBulkhead, is_heavy_json_write, release_held_slot


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_tenant_has_at_most_its_slots_and_the_others_wait_in_order() -> None:
    bulkhead = TenantBulkhead(per_tenant=2)
    gates = [asyncio.Event() for _ in range(4)]
    entered: list[int] = []

    async def write(tenant: str, i: int) -> None:
        async with bulkhead.slot(tenant):
            entered.append(i)
            await gates[i].wait()

    noisy = [asyncio.create_task(write("noisy", i)) for i in range(3)]
    await _settle()
    assert entered == [0, 1]  # the third waits
    other = asyncio.create_task(write("quiet", 3))
    await _settle()
    assert entered == [0, 1, 3]  # another tenant's lane is its own
    gates[1].set()
    await _settle()
    assert entered == [0, 1, 3, 2]
    for gate in gates:
        gate.set()
    await asyncio.gather(*noisy, other)
    assert bulkhead._lanes == {}  # idle tenants are forgotten


async def test_a_slot_released_early_lets_the_next_write_in_once() -> None:
    bulkhead = TenantBulkhead(per_tenant=1)
    projected = asyncio.Event()
    order: list[str] = []

    async def waits_for_projection() -> None:
        async with bulkhead.slot("t"):
            order.append("first parsed")
            release_held_slot()
            release_held_slot()  # idempotent: one slot given back, not two
            await projected.wait()
        order.append("first answered")

    async def second() -> None:
        async with bulkhead.slot("t"):
            order.append("second parsed")
            await asyncio.sleep(0.01)

    async def third() -> None:
        async with bulkhead.slot("t"):
            order.append("third parsed")

    first_task = asyncio.create_task(waits_for_projection())
    await _settle()
    second_task = asyncio.create_task(second())
    await _settle()
    third_task = asyncio.create_task(third())
    await _settle()
    assert order == ["first parsed", "second parsed"]  # the third waits for the second's slot
    await asyncio.gather(second_task, third_task)
    assert order[-1] == "third parsed"
    projected.set()
    await first_task
    assert bulkhead._lanes == {}


async def test_a_write_cancelled_while_waiting_gives_nothing_away() -> None:
    bulkhead = TenantBulkhead(per_tenant=1)
    release = asyncio.Event()

    async def holder() -> None:
        async with bulkhead.slot("t"):
            await release.wait()

    async def waiter() -> None:
        async with bulkhead.slot("t"):
            raise AssertionError("never admitted")

    held = asyncio.create_task(holder())
    await _settle()
    waiting = asyncio.create_task(waiter())
    await _settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await held
    assert bulkhead._lanes == {}
    async with bulkhead.slot("t"):  # the slot is free again
        pass


def test_heavy_means_a_large_or_chunked_json_body() -> None:
    json = (b"content-type", b"application/json")
    assert is_heavy_json_write([json, (b"content-length", b"40000")], 32768)
    assert not is_heavy_json_write([json, (b"content-length", b"100")], 32768)
    assert is_heavy_json_write([json, (b"transfer-encoding", b"chunked")], 32768)
    assert not is_heavy_json_write([json], 32768)  # no body
    # Artifact uploads stream their bytes: not parsed, not limited here.
    assert not is_heavy_json_write(
        [(b"content-type", b"application/octet-stream"), (b"content-length", b"99999999")], 32768
    )
    assert not is_heavy_json_write([json, (b"content-length", b"lots")], 32768)


async def test_without_a_limit_every_write_is_admitted_at_once() -> None:
    bulkhead = TenantBulkhead(per_tenant=0)
    assert not bulkhead.enabled
    async with bulkhead.slot("t"), bulkhead.slot("t"), bulkhead.slot("t"):
        release_held_slot()
    assert bulkhead._lanes == {}
