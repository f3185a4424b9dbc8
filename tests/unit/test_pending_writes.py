"""PendingWrites: what an API process acknowledged and has not seen projected, and the waits on it."""

from __future__ import annotations

from typing import Any, cast

import pytest

from runledger.incarnation import new_incarnation, successor_incarnation
from services.api import pending as pending_module
from services.api.consistency import ConsistencyToken, ProjectionWaiter
from services.api.errors import TemporarilyUnavailable
from services.api.pending import PendingWrites, merged
from services.api.principal import Principal
from services.api.publisher import PublishResult
from services.api.runs.schemas import RunInfo
from services.api.writes import EventWriter
from services.ingest.checkpoints import PartitionKey, notification

GROUP = "g"


class Broker:
    """Only what PendingWrites asks of a publisher: the incarnation."""

    topic = "events"

    def __init__(self) -> None:
        self.incarnation = "one"

    async def publish(self, events: Any) -> PublishResult:
        raise AssertionError("not used")


def setup(timeout_s: float = 0.05) -> tuple[PendingWrites, ProjectionWaiter, Broker]:
    broker = Broker()
    waiter = ProjectionWaiter("postgresql://unused", cast(Any, None), GROUP)
    writer = EventWriter(cast(Any, broker), waiter, timeout_s)
    return PendingWrites(writer), waiter, broker


def project(waiter: ProjectionWaiter, partition: int, committed: int, incarnation: str = "one") -> None:
    """The projector's NOTIFY that `partition` is applied up to `committed`."""
    key = PartitionKey(GROUP, incarnation, "events", partition)
    waiter._on_notify(None, 0, "", notification(key, committed))


def token(*positions: tuple[int, int], incarnation: str = "one") -> ConsistencyToken:
    return ConsistencyToken.from_positions(incarnation, "events", positions)


def caller(key_id: str = "k1", tenant: str = "t") -> Principal:
    return Principal(tenant_id=tenant, authorizer=cast(Any, None), key_id=key_id)


def run(run_id: str = "r1", status: str = "RUNNING") -> RunInfo:
    return RunInfo(
        run_id=run_id,
        experiment_id="0",
        name="n",
        user_id="u",
        status=status,
        start_time=1,
        lifecycle_stage="active",
    )


def test_merged_keeps_the_highest_offset_per_partition() -> None:
    assert merged(None, token((1, 5))) == token((1, 5))
    assert merged(token((1, 5), (2, 9)), token((1, 3), (3, 0))) == token((1, 5), (2, 9), (3, 0))
    # A new broker incarnation: the old log is gone, only the new positions count.
    assert merged(token((1, 5)), token((1, 2), incarnation="two")) == token((1, 2), incarnation="two")


def test_a_created_run_is_known_until_its_creation_is_projected() -> None:
    pending, waiter, _ = setup()
    pending.record(caller(), token((0, 10)), created=run())
    assert pending.created_run("t", "r1") == run()
    assert pending.created_run("other-tenant", "r1") is None
    pending.remember_run("t", run(status="FINISHED"))
    assert pending.created_run("t", "r1") == run(status="FINISHED")
    project(waiter, 0, 9)
    assert pending.created_run("t", "r1") is not None
    project(waiter, 0, 10)
    assert pending.created_run("t", "r1") is None  # read it from the projection now
    pending.remember_run("t", run(status="KILLED"))  # no longer held: nothing to update
    assert pending.created_run("t", "r1") is None


async def test_settle_waits_for_the_callers_own_writes_only() -> None:
    pending, waiter, _ = setup()
    pending.record(caller("k1"), token((0, 3), (1, 7)))
    await pending.settle(caller("k2"))  # another key wrote nothing here: no wait
    with pytest.raises(TemporarilyUnavailable):
        await pending.settle(caller("k1"))  # nothing projected: 503 after the write wait
    project(waiter, 0, 3)
    with pytest.raises(TemporarilyUnavailable):
        await pending.settle(caller("k1"))  # partition 1 is still behind
    project(waiter, 1, 7)
    await pending.settle(caller("k1"))
    assert len(pending) == 0  # a settled caller is forgotten


async def test_settle_params_waits_for_that_runs_params() -> None:
    pending, waiter, _ = setup()
    pending.record(caller(), token((2, 4)), params_of="r1")
    await pending.settle_params("t", "r2")
    with pytest.raises(TemporarilyUnavailable):
        await pending.settle_params("t", "r1")
    project(waiter, 2, 4)
    await pending.settle_params("t", "r1")


async def test_writes_to_a_past_broker_incarnation_wait_for_nothing() -> None:
    pending, _, broker = setup()
    pending.record(caller(), token((0, 1)), created=run())
    broker.incarnation = "two"  # the embedded broker restarted: its log (and our writes) are gone
    await pending.settle(caller())
    assert pending.created_run("t", "r1") is None


class CarryOverTable:
    """The `broker_carry_over` rows a broker replacement wrote (the only query the waiter sends)."""

    def __init__(self, carried_until: dict[int, int]) -> None:
        self.rows = [
            {"topic": "events", "partition": p, "carried_until": u} for p, u in carried_until.items()
        ]
        self.queries = 0

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        assert "broker_carry_over" in query
        self.queries += 1
        return self.rows


async def test_writes_carried_over_to_a_replacement_broker_wait_for_their_new_place() -> None:
    old = new_incarnation()
    new = successor_incarnation(old)
    table = CarryOverTable({0: 5, 1: 0})  # partition 0 held 5 unprojected records, carried to 0..4
    broker = Broker()
    broker.incarnation = old
    waiter = ProjectionWaiter("postgresql://unused", cast(Any, table), GROUP)
    pending = PendingWrites(EventWriter(cast(Any, broker), waiter, 0.05))
    pending.record(caller(), token((0, 812), incarnation=old), created=run())
    broker.incarnation = new  # replaced: the write now sits among the carried records

    # Not known yet where it went: the run as created still answers (and the lookup starts).
    assert pending.created_run("t", "r1") == run()
    with pytest.raises(TemporarilyUnavailable):
        await pending.settle(caller())  # the carried records are not projected yet
    project(waiter, 0, 3, incarnation=new)
    assert pending.created_run("t", "r1") == run()
    project(waiter, 0, 4, incarnation=new)
    assert pending.created_run("t", "r1") is None
    await pending.settle(caller())
    assert table.queries == 1  # looked up once per replacement

    # A token of a partition that carried nothing: nothing of it is left to wait for.
    assert await pending._writer.wait_for(token((1, 40), incarnation=old))
    # A broker that restarted empty instead (no carry-over declared): nothing to wait for either.
    broker.incarnation = new_incarnation()
    assert await pending._writer.wait_for(token((0, 1), incarnation=new))


def test_sweeps_keep_memory_bounded_by_what_is_unprojected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending_module, "_MIN_SWEEP", 8)
    pending, waiter, _ = setup()
    for offset in range(100):
        pending.record(
            caller(f"k{offset}"), token((0, offset)), created=run(f"r{offset}"), params_of=f"r{offset}"
        )
        project(waiter, 0, offset - 2)  # the projector trails by two events
    # Each write holds three entries; all but the last couple are projected and swept.
    assert len(pending) <= 2 * 3 * 2 + 8
    assert pending.created_run("t", "r99") is not None
