"""The API's writes answered at the broker's ack survive a broker that restarts empty.

MLflow run writes (by default) and `?wait=false` writes answer once the broker acknowledged
their events. The embedded broker keeps its log in memory: one that restarts before the
projector took them comes back without them. The publisher keeps them for a while and sends
them again, first, to the new incarnation (services/api/publisher.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from services.api.publisher import KafkaEventPublisher, OutgoingEvent

pytestmark = pytest.mark.integration

TOPIC = "runledger.events.v1"


def _values(bootstrap: str, expected: int, timeout: float = 20.0) -> list[bytes]:
    """Every record value on the topic's single partition, in offset order, once `expected` came."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += [r.value for r in records]
        return out
    finally:
        consumer.close()


def _events(first: int, n: int) -> list[OutgoingEvent]:
    return [
        OutgoingEvent(b"run-a", f"event-{i:03d}".encode(), str(uuid.uuid4())) for i in range(first, first + n)
    ]


async def test_acknowledged_writes_go_again_to_a_broker_that_restarted_empty(tmp_path: Path) -> None:
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    try:
        broker.ensure_topics({TOPIC: 1})
        publisher = await KafkaEventPublisher.connect(
            Settings(kafka_bootstrap=broker.bootstrap, events_topic=TOPIC, postgres_dsn="")
        )
        try:
            before = _events(0, 20)
            first = await publisher.publish(before)
            assert len(first.positions) == 20

            await asyncio.to_thread(broker.restart)  # memory storage: the 20 acknowledged events are gone
            await asyncio.to_thread(broker.ensure_topics, {TOPIC: 1})
            # No write comes: the watcher sends them again by itself.
            resent = await asyncio.to_thread(_values, broker.bootstrap, 20)
            assert resent == [e.value for e in before]
            assert publisher.resent == 20

            after = _events(20, 5)
            result = await publisher.publish(after)
            assert result.incarnation != first.incarnation
            values = await asyncio.to_thread(_values, broker.bootstrap, 25)
            assert values == [e.value for e in before + after]  # nothing twice, in order
        finally:
            await publisher.close()
    finally:
        broker.stop()
