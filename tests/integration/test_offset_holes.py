"""Both consumers of the events topic fetch a hole again from the real broker and take it in order.

The embedded broker's hole (a fetch that returns a later batch while an earlier one is not yet
stored, see services/ingest/offset_continuity.py) cannot be produced on demand. What it does to
kafka-python can: the consumer's position moves past records it never handed out. Here that
position is set with a seek; each consumer's screening must notice, seek back, and take the
missing records from the broker before the ones after them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import REGISTRY

from runledger.embedded.broker import EmbeddedBroker
from services.ingest.checkpoints import Member, PartitionKey
from services.ingest.offset_continuity import OffsetAnomaly, OffsetContinuity, screen_polled
from services.ingest.partition_buffer import PartitionBuffer
from services.ingest.range_reader import read_ranges

pytestmark = pytest.mark.integration

RECORDS = 20
SKIPPED = 7  # the position kafka-python would move to past a hole of offsets 0..6


def _topic_with_records(broker: EmbeddedBroker) -> TopicPartition:
    topic = f"holes-{uuid.uuid4().hex[:8]}"
    broker.ensure_topics({topic: 1})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    for i in range(RECORDS):
        producer.send(topic, partition=0, value=b"%d" % i)
        producer.flush()  # one batch each, as the fleet's events mostly are
    producer.close()
    return TopicPartition(topic, 0)


def _consumer_past_a_hole(broker: EmbeddedBroker, tp: TopicPartition) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    consumer.assign([tp])
    consumer.seek(tp, SKIPPED)
    return consumer


def _poll(consumer: KafkaConsumer, tp: TopicPartition) -> list[Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = consumer.poll(timeout_ms=200).get(tp, [])
        if records:
            return list(records)
    raise AssertionError("nothing polled in 10 s")


def _filled() -> float:
    value = REGISTRY.get_sample_value("runledger_projector_offset_anomalies_total", {"kind": "gap_filled"})
    return value or 0.0


def test_the_projector_buffer_fetches_a_hole_again_and_buffers_it_in_order(broker: EmbeddedBroker) -> None:
    tp = _topic_with_records(broker)
    consumer = _consumer_past_a_hole(broker, tp)
    filled_before = _filled()
    try:
        state = PartitionBuffer(key=PartitionKey("g", "inc", tp.topic, 0), tp=tp, committed=-1)
        assert state.extend(_poll(consumer, tp))  # offsets 7.. after nothing: a hole
        assert state.buffer == [] and state.offsets.hole_at == 0
        consumer.seek(tp, state.offsets.fetched_until + 1)  # what the projector's loop does
        while len(state.buffer) < RECORDS:
            assert not state.extend(_poll(consumer, tp))
    finally:
        consumer.close()
    assert [r.offset for r in state.buffer] == list(range(RECORDS))
    assert [r.value for r in state.buffer] == [b"%d" % i for i in range(RECORDS)]
    assert _filled() == filled_before + 1


def test_the_analysis_consumer_fetches_a_hole_again_before_analysing_past_it(broker: EmbeddedBroker) -> None:
    tp = _topic_with_records(broker)
    consumer = _consumer_past_a_hole(broker, tp)
    seen: list[OffsetAnomaly] = []
    continuity = {tp: OffsetContinuity(-1, "analysis test", seen.append)}
    analysed: list[Any] = []
    try:
        assert screen_polled(consumer, {tp: _poll(consumer, tp)}, continuity) == {}  # seeks back to 0
        while len(analysed) < RECORDS:
            analysed += screen_polled(consumer, {tp: _poll(consumer, tp)}, continuity).get(tp, [])
    finally:
        consumer.close()
    assert [r.offset for r in analysed] == list(range(RECORDS))
    assert seen == [OffsetAnomaly.GAP_REFETCH, OffsetAnomaly.GAP_FILLED]


def test_a_round_is_read_back_across_repeated_offsets_and_a_hole_that_stays(broker: EmbeddedBroker) -> None:
    """Re-forming a pending round screens what it reads back as the consumer did: a repeated
    offset keeps its first record, and a hole that stays is taken as it is (a strict count
    kept the projector retrying that round for ever, and projecting nothing else).

    The log is made with tansu's own defect (libs/runledger/embedded/rotation.py,
    `start_behind_gate`): produces acknowledged while the topic does not exist, then
    produces that reuse their offsets once it does."""
    topic = f"reread-{uuid.uuid4().hex[:8]}"
    broker.ensure_topics({topic: 1})
    # linger: each list below goes as one batch; a long metadata age: the producer goes on
    # sending to the topic it knows.
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", retries=0, linger_ms=100, metadata_max_age_ms=600_000
    )
    producer.send(topic, b"known", partition=0).get(10)
    admin = broker.admin()
    admin.delete_topics([topic])
    admin.close()

    def produce(values: list[bytes]) -> list[int] | None:
        try:
            return [
                future.get(10).offset for future in [producer.send(topic, v, partition=0) for v in values]
            ]
        except KafkaError:
            return None

    assert [produce([b"a0"]), produce([b"b0", b"b1"]), produce([b"x0"])] == [[0], [1, 2], [3]]
    broker.ensure_topics({topic: 1})  # its offsets start at 0 again
    assert [produce([b"c0"]), produce([b"c1"]), produce([b"c2"])] == [None, None, [2]]  # c2: a repeat
    assert produce([b"c3", b"c4", b"c5"]) is None  # refused at 3, which x0 holds: 4 and 5 stay empty
    assert produce([b"d0"]) == [6]
    producer.close()
    records = read_ranges([broker.bootstrap], topic, [Member(0, 0, 6)])[0]
    assert [(r.offset, r.value) for r in records] == [
        (0, b"a0"),
        (1, b"b0"),
        (2, b"b1"),
        (3, b"x0"),
        (6, b"d0"),
    ]
