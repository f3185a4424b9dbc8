"""The embedded broker restarts empty: what it had acknowledged is sent again, ahead of newer events.

Found by the chaos suite (tests/e2e/test_chaos.py): an in-memory tansu that is restarted
loses the events it had acknowledged but the projector had not read yet; the SDK had
dropped them on the acknowledgement, so they were lost for good (6,000 of 16,000 points
in the first trial).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.rotation import gated_broker, start_behind_gate
from runledger.incarnation import fenced_client_id, may_write, new_incarnation, successor_incarnation
from runledger_sdk.config import load_settings
from runledger_sdk.resend import ResendWindow
from runledger_sdk.transport import Outcome, Record
from runledger_sdk.transport_kafka import KafkaTransport

pytestmark = pytest.mark.integration

TOPIC = "runledger.events.v1"


def _read(bootstrap: str, expected: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record on the topic, partition by partition, once `expected` came."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        parts = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out += [(r.key, r.value) for r in records]
        time.sleep(0.5)
        for records in consumer.poll(timeout_ms=500).values():  # a surplus shows too
            out += [(r.key, r.value) for r in records]
        return out
    finally:
        consumer.close()


def _transport(bootstrap: str, send_timeout_s: float) -> KafkaTransport:
    """An SDK Kafka transport with a 5-minute resend window."""
    return KafkaTransport(
        load_settings(
            kafka_bootstrap=bootstrap,
            events_topic=TOPIC,
            send_timeout_s=send_timeout_s,
            kafka_resend_window_s=300,
        )
    )


def _records(first: int, n: int) -> list[Record]:
    return [Record(seq, b"run-a", f"event-{seq:03d}".encode()) for seq in range(first, first + n)]


def test_events_acknowledged_by_a_broker_that_restarted_empty_are_sent_again_first(tmp_path: Path) -> None:
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    try:
        broker.ensure_topics({TOPIC: 1})
        transport = _transport(broker.bootstrap, 5.0)
        before = _records(0, 50)
        assert transport.send(before, 5.0) == [Outcome.ACKED] * 50

        broker.restart()  # memory storage: the 50 acknowledged events are gone
        broker.ensure_topics({TOPIC: 1})
        after = _records(50, 10)
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + 30
        while outcomes != [Outcome.ACKED] * 10 and time.monotonic() < deadline:
            outcomes = transport.send(after, 5.0)  # FAILED while the client reconnects
        assert outcomes == [Outcome.ACKED] * 10

        seen = _read(broker.bootstrap, 60)
        values = [v for _, v in seen]
        # The lost ones first (in order), then the new ones: consumers that skip steps they
        # have already seen (the analysis) must get them in logging order.
        assert values[:50] == [r.value for r in before]
        # A send that failed while the client reconnected may have reached the broker all the
        # same (at-least-once); consumers drop such repeats by event id.
        assert set(values[50:]) == {r.value for r in after}
        transport.close(2.0)
    finally:
        broker.stop()


def test_a_produce_meant_for_the_old_broker_never_reaches_its_empty_successor_first(tmp_path: Path) -> None:
    """The chaos trial, seed 8: each writer's next chunk reached the restarted, empty broker
    ahead of the records sent again, and the analysis skipped those as replays (a planted
    spike at step 516 was never analysed). The SDK checks the incarnation before each send,
    but what its producer queued or retried, or what the relay held while the broker
    restarted, goes out after the check; the relay fences such produces instead."""
    gate, broker = gated_broker(tmp_path / "broker.log")
    try:
        start_behind_gate(broker, gate, {TOPIC: 1})
        transport = _transport(gate.bootstrap, 2.0)
        before = _records(0, 50)
        assert transport.send(before, 2.0) == [Outcome.ACKED] * 50
        stale = transport._producer  # fenced to the first incarnation

        broker.stop(grace=0.0)  # memory storage: the 50 acknowledged events are gone
        start_behind_gate(broker, gate, {TOPIC: 1})
        # Produced after the check, as if queued just before the restart.
        queued = _records(50, 5)
        assert transport._produce(stale, queued, 2.0) == [Outcome.FAILED] * 5
        assert gate.fenced_produces > 0

        outcomes: list[Outcome] = []
        deadline = time.monotonic() + 30
        while outcomes != [Outcome.ACKED] * 5 and time.monotonic() < deadline:
            outcomes = transport.send(queued, 2.0)
        assert outcomes == [Outcome.ACKED] * 5
        values = [v for _, v in _read(gate.bootstrap, 55)]
        assert values[:50] == [r.value for r in before]
        assert set(values[50:]) == {r.value for r in queued}
        transport.close(2.0)
    finally:
        gate.stop()
        broker.stop(grace=0.0)


def test_a_fenced_client_writes_to_its_incarnation_and_to_what_carries_it_over() -> None:
    first = new_incarnation()
    client = fenced_client_id("runledger-sdk", first)
    assert may_write(client, first)
    assert may_write(client, successor_incarnation(first))
    assert not may_write(client, new_incarnation())  # restarted empty
    assert not may_write(client, successor_incarnation(new_incarnation()))
    assert may_write("runledger-sdk", new_incarnation())  # not fenced
    assert may_write(client, None)  # a broker of unknown incarnation


def test_the_resend_window_is_bounded_by_time_and_bytes() -> None:
    now = [0.0]
    window = ResendWindow(10.0, 10 * len(b"run-a" + b"event-000"), clock=lambda: now[0])
    window.add("one", _records(0, 5))
    now[0] = 5.0
    window.add("one", _records(5, 5))
    assert window.orphans("one") == []  # same incarnation: nothing to send again
    window.add("one", _records(10, 3))  # over the byte bound: the oldest go
    assert len(window) == 10 and window.dropped == 3
    now[0] = 12.0  # what was kept at t=0 aged out
    assert [r.seq for r in window.orphans("two")] == list(range(5, 13))
    assert len(window) == 0
    assert not ResendWindow(0, 1 << 20).enabled


def test_records_a_replacement_carried_over_are_kept_as_its_own() -> None:
    """Not sent again to the replacement that holds them, but sent again if it restarts empty
    before the consumers took them (the chaos trial, seed 8: two planted spikes were never
    analysed when the SDK had forgotten them)."""
    first = new_incarnation()
    second = successor_incarnation(first)  # a planned replacement: everything carried over
    third = new_incarnation()  # then a crash: an empty broker
    window = ResendWindow(60.0, 1 << 20, clock=lambda: 0.0)
    window.add(first, _records(0, 3))
    assert window.orphans(second) == [] and len(window) == 3 and window.carried == 3
    window.add(second, _records(3, 2))
    assert [r.seq for r in window.orphans(third)] == [0, 1, 2, 3, 4]
