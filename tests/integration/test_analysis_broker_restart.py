"""The broker restarts empty after the analysis service published a finding: the finding is
published again to the new broker, so the projector gets it even if the old one lost it.

Found by the chaos suite: the detectors resume from a checkpoint past the finding's points,
so they never find it again; without the republish a finding the projector had not read
before the restart was lost.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import numpy as np
from kafka import KafkaProducer

from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.stores.postgres.migrate import migrate
from tests.integration.test_analysis_service import (
    TENANT,
    World,
    analysed_through,
    curve,
    kinds_of,
    metrics,
    reported,
    running,
    send,
    until,
)
from tests.support.auth import provision

TOPICS = {"runledger.events.v1": 2, "runledger.events.dlq": 1}


@asynccontextmanager
async def _own_broker_world(dsn: str, tmp_path: Path) -> AsyncIterator[tuple[EmbeddedBroker, World]]:
    """A world on a broker of its own (the tests restart it), with the schema in `dsn`."""
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    broker.ensure_topics(TOPICS)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    engineer = await provision(dsn, TENANT, Role.ENGINEER)
    platform = await provision(dsn, "platform", None, superadmin=True)
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        postgres_dsn=dsn,
        analysis_checkpoint_interval_s=0.5,
        auth_poll_interval_s=0.2,
        attribution_auto=False,
    )
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
    world = World(settings, dsn, engineer, platform, producer)
    try:
        yield broker, world
    finally:
        world.producer.close(5)
        broker.stop()


def _restart_empty(broker: EmbeddedBroker, world: World) -> None:
    """Restart the broker (memory storage: what it held is gone) and reconnect the world's producer."""
    world.producer.close(5)
    broker.restart()
    broker.ensure_topics(TOPICS)
    world.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)


async def test_a_finding_is_published_again_to_a_broker_that_restarted_empty(
    fresh_dsn: str, tmp_path: Path
) -> None:
    run = f"run-{uuid.uuid4().hex[:12]}"
    values = curve(200, 3)
    values[120] = np.nan
    async with _own_broker_world(fresh_dsn, tmp_path) as (broker, world), running(world) as service:
        send(world, [metrics(world.engineer, run, 0, values)], run)
        await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)])
        await analysed_through(world, service, 200)  # checkpointed past step 120
        _restart_empty(broker, world)  # the finding is gone with the old broker
        # Nothing new is logged: the finding comes back only because it is republished.
        await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)], limit_s=60)


async def test_a_finding_is_published_again_by_the_next_process_when_the_broker_lost_it(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """The process that published the finding is gone (killed, or stopped) when the broker
    restarts empty, and its checkpoint has passed the finding's points: the next process
    publishes it again from the outbox stored with that checkpoint (chaos trial, seed 16)."""
    run = f"run-{uuid.uuid4().hex[:12]}"
    values = curve(200, 4)
    values[120] = np.nan
    async with _own_broker_world(fresh_dsn, tmp_path) as (broker, world):
        async with running(world) as service:
            send(world, [metrics(world.engineer, run, 0, values)], run)
            await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)])
            await analysed_through(world, service, 200)  # checkpointed past step 120
        _restart_empty(broker, world)  # the finding is gone with the old broker
        assert kinds_of(reported(world), run) == []
        async with running(world):
            await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)], limit_s=60)
