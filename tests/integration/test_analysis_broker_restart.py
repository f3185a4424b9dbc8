"""The broker restarts empty after the analysis service published a finding: the finding is
published again to the new broker, so the projector gets it even if the old one lost it.

Found by the chaos suite: the detectors resume from a checkpoint past the finding's points,
so they never find it again; without the republish a finding the projector had not read
before the restart was lost.
"""

from __future__ import annotations

import uuid
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


async def test_a_finding_is_published_again_to_a_broker_that_restarted_empty(
    fresh_dsn: str, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    broker.ensure_topics(TOPICS)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    engineer = await provision(fresh_dsn, TENANT, Role.ENGINEER)
    platform = await provision(fresh_dsn, "platform", None, superadmin=True)
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        postgres_dsn=fresh_dsn,
        analysis_checkpoint_interval_s=0.5,
        auth_poll_interval_s=0.2,
        attribution_auto=False,
    )
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
    world = World(settings, fresh_dsn, engineer, platform, producer)
    run = f"run-{uuid.uuid4().hex[:12]}"
    values = curve(200, 3)
    values[120] = np.nan
    try:
        async with running(world) as service:
            send(world, [metrics(engineer, run, 0, values)], run)
            await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)])
            await analysed_through(world, service, 200)  # checkpointed past step 120
            producer.close(5)
            broker.restart()  # memory storage: the finding is gone with the old broker
            broker.ensure_topics(TOPICS)
            world.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
            # Nothing new is logged: the finding comes back only because it is republished.
            await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)], limit_s=60)
    finally:
        world.producer.close(5)
        broker.stop()


async def test_a_finding_is_published_again_by_the_next_process_when_the_broker_lost_it(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """The process that published the finding is gone (killed, or stopped) when the broker
    restarts empty, and its checkpoint has passed the finding's points: the next process
    publishes it again from the outbox stored with that checkpoint (chaos trial, seed 16)."""
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    broker.ensure_topics(TOPICS)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    engineer = await provision(fresh_dsn, TENANT, Role.ENGINEER)
    platform = await provision(fresh_dsn, "platform", None, superadmin=True)
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        postgres_dsn=fresh_dsn,
        analysis_checkpoint_interval_s=0.5,
        auth_poll_interval_s=0.2,
        attribution_auto=False,
    )
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
    world = World(settings, fresh_dsn, engineer, platform, producer)
    run = f"run-{uuid.uuid4().hex[:12]}"
    values = curve(200, 4)
    values[120] = np.nan
    try:
        async with running(world) as service:
            send(world, [metrics(engineer, run, 0, values)], run)
            await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)])
            await analysed_through(world, service, 200)  # checkpointed past step 120
        producer.close(5)
        broker.restart()  # memory storage: the finding is gone with the old broker
        broker.ensure_topics(TOPICS)
        world.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
        assert kinds_of(reported(world), run) == []
        async with running(world):
            await until(lambda: kinds_of(reported(world), run) == [("non_finite", 120)], limit_s=60)
    finally:
        world.producer.close(5)
        broker.stop()
