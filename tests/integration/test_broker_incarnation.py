"""A consumer that outlives an embedded-broker restart must not take the new broker's records
for the old incarnation's.

Root cause of the "resend window loses the spooled batches" bug (tests/e2e/test_broker_outage.py
with RUNLEDGER_KAFKA_RESEND_WINDOW_S=300): the projector compares `cluster_id` after each
poll, but kafka-python reconnects and fetches at the old positions before the metadata
refresh that changes `cluster_id`. The new broker's log, refilled by the SDK's resend of the
old one's events, had grown past the old position, so the records below it (the spooled
batches) were skipped and the run's later events projected first, under the old incarnation.
See services/ingest/incarnation.py. With `guarded=False` (the projector's check as it is)
the first test fails: new-8.. accepted as the old incarnation's, 6 of 6 tries (1 s and 3 s
outages); with the guard, none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from services.ingest.incarnation import metadata_settled
from services.ingest.projector import consumer_config

pytestmark = pytest.mark.integration

TOPIC = "incarnation.race"
OLD, NEW = 8, 12  # records in the old incarnation; in the new one (more: the old position is valid)


def _produce(bootstrap: str, tag: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in range(n):
            producer.send(TOPIC, key=b"run", value=f"{tag}-{i}".encode())
        producer.flush()
    finally:
        producer.close()


def _accepted_after_restart(consumer: KafkaConsumer, old: str, guarded: bool) -> list[tuple[str, str]]:
    """(incarnation the loop believes, record value) of what a projector-like loop accepts."""
    accepted: list[tuple[str, str]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100)
        cluster: Any = consumer._client.cluster
        if polled and guarded and not metadata_settled(cluster, 5.0):
            break  # the projector drops the records and reloads its positions
        if (cluster.cluster_id or "static") != old:
            break  # the projector's existing check: reload positions for the new incarnation
        for records in polled.values():
            accepted += [(old, r.value.decode()) for r in records]
    return accepted


@pytest.mark.parametrize("outage_s", [1.0, 3.0])
def test_records_of_a_restarted_broker_are_never_taken_for_the_old_incarnation(
    tmp_path: Path, outage_s: float
) -> None:
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    consumer: KafkaConsumer | None = None
    try:
        broker.ensure_topics({TOPIC: 1})
        _produce(broker.bootstrap, "old", OLD)
        consumer = KafkaConsumer(**consumer_config(Settings(kafka_bootstrap=broker.bootstrap)))
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        seen = 0
        deadline = time.monotonic() + 15
        while seen < OLD and time.monotonic() < deadline:
            seen += sum(len(records) for records in consumer.poll(timeout_ms=100).values())
        assert seen == OLD
        old = consumer._client.cluster.cluster_id
        assert old == broker.incarnation

        broker.stop()
        until = time.monotonic() + outage_s
        while time.monotonic() < until:  # the consumer keeps polling, as the projector does
            consumer.poll(timeout_ms=100)
        broker.start()
        broker.ensure_topics({TOPIC: 1})
        _produce(broker.bootstrap, "new", NEW)  # past the old position, as the resend window does

        accepted = _accepted_after_restart(consumer, old, guarded=True)
        assert not [value for _, value in accepted if value.startswith("new-")], (
            f"records of incarnation {broker.incarnation} accepted as {old}'s: {accepted}"
        )
    finally:
        if consumer is not None:
            consumer.close()
        broker.stop()


class _Future:
    def __init__(self, done_after: int, ok: bool) -> None:
        self._polls, self._done_after, self._ok = 0, done_after, ok

    @property
    def is_done(self) -> bool:
        self._polls += 1
        return self._polls > self._done_after

    def succeeded(self) -> bool:
        return self._ok


class _Cluster:
    def __init__(self, need_update: bool, future: _Future) -> None:
        self.need_update = need_update
        self.future = future
        self.requested = 0

    def request_update(self) -> _Future:
        self.requested += 1
        return self.future


def test_metadata_settled_waits_for_the_refresh_a_dropped_connection_asked_for() -> None:
    fresh = _Cluster(need_update=False, future=_Future(0, True))
    assert metadata_settled(fresh, 1.0) and fresh.requested == 0  # the usual case costs nothing
    refreshed = _Cluster(need_update=True, future=_Future(3, True))
    assert metadata_settled(refreshed, 1.0)
    failed = _Cluster(need_update=True, future=_Future(0, False))
    assert not metadata_settled(failed, 1.0)  # broker still down: records of unknown origin
    pending = _Cluster(need_update=True, future=_Future(10**9, True))
    started = time.monotonic()
    assert not metadata_settled(pending, 0.1)
    assert time.monotonic() - started < 1.0
