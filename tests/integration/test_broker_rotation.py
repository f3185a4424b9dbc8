"""Replacing the embedded broker while producers write: nothing acknowledged is lost, nothing is sent twice.

Real tansu behind the real produce gate; the producers are the SDK's Kafka transport (with
its resend window), the consumer is a plain kafka-python consumer that starts over at each
new incarnation, as the projector does. The consumer stops reading before each rotation, so
that a real tail (records acknowledged but not consumed) has to be carried over.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from runledger.embedded.broker import EmbeddedBroker, ensure_topics
from runledger.embedded.produce_gate import ProduceGate, produce_acks
from runledger.embedded.rotation import (
    ConsumerCheckpoints,
    PostgresCheckpoints,
    RotationReport,
    RotationSkipped,
    gated_broker,
    read_tail,
    rotate,
    start_behind_gate,
)
from runledger.incarnation import CarryOver, carried_over, new_incarnation, successor_incarnation
from runledger.stores.postgres.migrate import migrate
from runledger_sdk.config import load_settings
from runledger_sdk.transport import Outcome, Record
from runledger_sdk.transport_kafka import KafkaTransport
from services.ingest import checkpoints as ingest_checkpoints
from services.ingest.offset_continuity import OffsetAnomaly, OffsetContinuity, screen_polled

pytestmark = pytest.mark.integration

EVENTS = "rotation.events"
DLQ = "rotation.dlq"
PARTITIONS = 3


TOPICS = {EVENTS: PARTITIONS, DLQ: 1}


@dataclass
class Gated:
    """The broker clients reach through the gate (a rotation replaces it)."""

    broker: EmbeddedBroker
    gate: ProduceGate

    def rotate(self, checkpoints: ConsumerCheckpoints, max_carry_bytes: int) -> RotationReport:
        self.broker, report = rotate(
            self.broker,
            self.gate,
            checkpoints,
            events_topic=EVENTS,
            dlq_topic=DLQ,
            topics=TOPICS,
            max_carry_bytes=max_carry_bytes,
        )
        return report


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Gated]:
    gate, broker = gated_broker(tmp_path / "broker.log")
    state = Gated(broker, gate)
    try:
        state.broker.start()
        ensure_topics(gate.bootstrap, TOPICS)
        yield state
    finally:
        state.broker.stop()
        gate.stop()


class TailingConsumer:
    """Reads every partition; starts over from 0 when the broker is a new incarnation.

    Like the projector and the analysis service, it fetches again across a hole in a
    partition's offsets: tansu can answer a fetch with a later batch while an earlier one is
    still being stored (services/ingest/offset_continuity.py), and a consumer that took that
    answer would never read the earlier batch, nor report a position before it.
    """

    def __init__(self, bootstrap: str) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50, group_id=None
        )
        self.incarnation = ""
        self.values: list[bytes] = []
        self.positions: dict[int, int] = {}
        self.anomalies: Counter[OffsetAnomaly] = Counter()
        self._continuity: dict[TopicPartition, OffsetContinuity] = {}
        self.carried_until: dict[int, int] = {}
        self.reading = threading.Event()
        self.reading.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _assign(self) -> None:
        parts = [TopicPartition(EVENTS, p) for p in range(PARTITIONS)]
        self._consumer.assign(parts)
        self._consumer.seek_to_beginning(*parts)
        self.incarnation = str(self._consumer._client.cluster.cluster_id)
        self.positions = {}
        self._continuity = {tp: OffsetContinuity(-1, count=self._count) for tp in parts}

    def _count(self, anomaly: OffsetAnomaly) -> None:
        self.anomalies[anomaly] += 1

    def _run(self) -> None:
        while EVENTS not in self._consumer.topics():
            time.sleep(0.1)
        self._assign()
        while not self._stop.is_set():
            if not self.reading.is_set():
                time.sleep(0.05)
                continue
            polled = self._consumer.poll(timeout_ms=100)
            cluster = self._consumer._client.cluster
            if cluster.need_update or str(cluster.cluster_id) != self.incarnation:
                # Records polled around a reconnect may be the new broker's: wait for the
                # metadata to say which broker answered, and start over on a new one.
                deadline = time.monotonic() + 10
                while cluster.need_update and time.monotonic() < deadline:
                    time.sleep(0.05)
                if str(cluster.cluster_id) != self.incarnation:
                    with self._lock:
                        self._assign()
                    continue
            with self._lock:
                for tp, records in screen_polled(self._consumer, polled, self._continuity).items():
                    self.values += [r.value for r in records]
                    if records:
                        self.positions[tp.partition] = records[-1].offset + 1

    # ConsumerCheckpoints, as this consumer's own (the projector's are in PostgreSQL).
    def needed_from(self, incarnation: str, topic: str) -> Mapping[int, int]:
        assert incarnation == self.incarnation and topic == EVENTS
        with self._lock:
            return dict(self.positions)

    def carried_over(self, carry: CarryOver) -> None:
        self.carried_until = dict(carry.carried_until)

    def wait_projected(
        self, incarnation: str, topic: str, carried_until: Mapping[int, int], timeout_s: float
    ) -> bool:
        return True  # this consumer's positions do not gate the producers

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_rotation_under_load_carries_the_unconsumed_tail_and_producers_do_not_resend(
    gated: Gated,
) -> None:
    gate = gated.gate
    letters = [f"letter-{i}".encode() for i in range(3)]
    producer = KafkaProducer(bootstrap_servers=gate.bootstrap)
    for value in letters:
        producer.send(DLQ, value=value, key=b"k", headers=[("reason", b"test")])
    producer.flush()
    producer.close()

    consumer = TailingConsumer(gate.bootstrap)
    consumer.start()
    transports = [
        KafkaTransport(
            load_settings(
                kafka_bootstrap=gate.bootstrap,
                events_topic=EVENTS,
                send_timeout_s=5.0,
                kafka_resend_window_s=300,
            )
        )
        for _ in range(3)
    ]
    acked: list[bytes] = []
    acked_lock = threading.Lock()
    stop_producing = threading.Event()

    def produce(index: int) -> None:
        transport = transports[index]
        seq = 0
        while not stop_producing.is_set():
            batch = [
                Record(seq + i, f"run-{index}-{(seq + i) % 7}".encode(), f"p{index}-{seq + i:06d}".encode())
                for i in range(20)
            ]
            outcomes = transport.send(batch, 5.0)
            with acked_lock:
                acked.extend(r.value for r, o in zip(batch, outcomes, strict=True) if o is Outcome.ACKED)
            # A batch that failed while the broker was swapped is sent again under new seqs:
            # at-least-once from the client's side, as the SDK's spool does.
            seq += 20
            time.sleep(0.005)

    threads = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        reports = []
        for _ in range(2):
            time.sleep(1.5)
            consumer.reading.clear()  # the consumer falls behind: a real tail to carry
            time.sleep(1.0)
            reports.append(gated.rotate(consumer, 64 * 2**20))
            consumer.reading.set()
        time.sleep(1.5)
    finally:
        stop_producing.set()
        for t in threads:
            t.join(30)

    try:
        for report in reports:
            assert report.carried_events > 0
            assert report.carried_letters == len(letters)
            assert report.project_s < 1.0
            assert carried_over(report.old_incarnation, report.new_incarnation)
        assert reports[1].old_incarnation == reports[0].new_incarnation
        assert sum(consumer.carried_until.values()) == reports[1].carried_events
        assert gate.held_requests > 0, "no produce met the barrier: the test did not exercise it"

        acked_values = set(acked)
        try:
            _wait(lambda: acked_values <= set(consumer.values), 30, "every acknowledged event to be consumed")
        except AssertionError:
            missing = sorted(acked_values - set(consumer.values))
            in_log = {r.value for r in read_tail(gate.bootstrap, EVENTS, None, settled=True)[0]}
            raise AssertionError(
                f"{len(missing)} acknowledged events never consumed (first {missing[:5]}, last {missing[-5:]});"
                f" {len(set(missing) & in_log)} of them are in the current broker's log;"
                f" consumer on {consumer.incarnation}, broker {gated.broker.incarnation},"
                f" offset anomalies {dict(consumer.anomalies)}, reports {reports}"
            ) from None
        assert not consumer.anomalies[OffsetAnomaly.GAP_ACCEPTED]
        # Producers forgot what the replaced brokers acknowledged instead of sending it again.
        assert sum(t._resend.carried for t in transports) > 0
        # The final broker holds the last carried tail and what came after, once each.
        final = [r.value for r in read_tail(gate.bootstrap, EVENTS, None, settled=True)[0]]
        assert len(final) == len(set(final))
        assert len(final) < len(acked_values)
        assert [r.value for r in read_tail(gate.bootstrap, DLQ, None, settled=True)[0]] == letters
    finally:
        for transport in transports:
            transport.close(2.0)
        consumer.close()


class NothingConsumed:
    """Checkpoints of a consumer that has read nothing."""

    def needed_from(self, incarnation: str, topic: str) -> Mapping[int, int]:
        return {}

    def carried_over(self, carry: CarryOver) -> None:
        raise AssertionError("a rotation put off carries nothing over")

    def wait_projected(
        self, incarnation: str, topic: str, carried_until: Mapping[int, int], timeout_s: float
    ) -> bool:
        raise AssertionError("a rotation put off carries nothing over")


def test_a_consumer_too_far_behind_puts_the_rotation_off(gated: Gated) -> None:
    gate = gated.gate
    producer = KafkaProducer(bootstrap_servers=gate.bootstrap)
    for i in range(200):
        producer.send(EVENTS, value=b"x" * 1000 + str(i).encode(), partition=i % PARTITIONS)
    producer.flush()
    before = gated.broker
    with pytest.raises(RotationSkipped, match="behind"):
        gated.rotate(NothingConsumed(), max_carry_bytes=100_000)
    assert gated.broker is before and before.is_running()
    # The gate is open again: produces go through.
    producer.send(EVENTS, value=b"after", partition=0).get(timeout=10)
    producer.close()


def test_incarnation_names_say_what_was_carried_over() -> None:
    first = new_incarnation()
    second = successor_incarnation(first)
    third = successor_incarnation(second)
    assert carried_over(first, second) and carried_over(second, third)
    assert not carried_over(first, third)  # two steps: not declared, so resent
    assert not carried_over(first, new_incarnation())
    assert not carried_over(first, None)
    assert len(third) == len(second)  # names do not grow with each rotation


def test_produce_acks_is_read_from_every_request_version() -> None:
    import struct

    def request(version: int, acks: int, txn: bytes | None) -> bytes:
        header = struct.pack(">hhi", 0, version, 7) + struct.pack(">h", 4) + b"abcd"
        if version >= 9:
            header += b"\x00"  # no tagged fields
            body = bytes([0 if txn is None else len(txn) + 1]) + (txn or b"")
        elif version >= 3:
            body = struct.pack(">h", -1 if txn is None else len(txn)) + (txn or b"")
        else:
            body = b""
        return header + body + struct.pack(">h", acks) + b"rest"

    for version in (2, 3, 7, 8, 9, 11):
        for acks in (0, 1, -1):
            assert produce_acks(request(version, acks, None)) == acks
            assert produce_acks(request(version, acks, b"txn-1")) == acks


async def test_checkpoints_carried_over_count_every_live_consumer_and_move_its_position(
    fresh_dsn: str,
) -> None:
    """PostgresCheckpoints on real tables: who holds a replacement back, and where each
    consumer resumes on the new incarnation."""
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await migrate(conn)
        rows = [  # (table, group, incarnation, partition, committed, pending_until, age in s)
            ("projector_checkpoints", "projector", "old", 0, 9, 12, 0),
            ("projector_checkpoints", "projector", "old", 1, 19, None, 0),
            ("analysis_checkpoints", "analysis#0/1", "old", 0, 4, None, 0),
            ("analysis_checkpoints", "analysis#0/1", "old", 1, 30, None, 5),
            # An analysis layout that stopped two hours ago: it holds nothing back.
            ("analysis_checkpoints", "analysis#0/2", "old", 0, 0, None, 7200),
            ("analysis_checkpoints", "analysis#0/2", "old", 1, 0, None, 7200),
        ]
        for table, group, incarnation, partition, committed, pending, age in rows:
            pending_column = ", pending_until" if table == "projector_checkpoints" else ""
            pending_value = ", $6" if table == "projector_checkpoints" else ""
            await conn.execute(
                f"INSERT INTO {table} (consumer_group, incarnation, topic, partition, committed,"
                f" updated_at{pending_column}) VALUES ($1, $2, 'events', $3, $4,"
                f" now() - make_interval(secs => $5){pending_value})",
                *(group, incarnation, partition, committed, float(age)),
                *((pending,) if table == "projector_checkpoints" else ()),
            )
        checkpoints = PostgresCheckpoints(fresh_dsn, "projector")
        needed = await asyncio.to_thread(checkpoints.needed_from, "old", "events")
        assert needed == {0: 5, 1: 20}

        # A live group with no checkpoint on this incarnation (it has not written one since
        # the broker last restarted empty) needs all of it.
        await conn.execute(
            "INSERT INTO analysis_checkpoints (consumer_group, incarnation, topic, partition, committed)"
            " VALUES ('other', 'before-the-restart', 'events', 0, 99)"
        )
        assert await asyncio.to_thread(checkpoints.needed_from, "old", "events") == {}
        await conn.execute("DELETE FROM analysis_checkpoints WHERE consumer_group = 'other'")

        carry = CarryOver("old", "new", "events", carried_from={0: 5, 1: 20}, carried_until={0: 10, 1: 15})
        await asyncio.to_thread(checkpoints.carried_over, carry)
        copied = await conn.fetch(
            "SELECT 'projector' AS t, consumer_group, partition, committed, pending_until, updated_at"
            " FROM projector_checkpoints WHERE incarnation = 'new'"
            " UNION ALL SELECT 'analysis', consumer_group, partition, committed, NULL, updated_at"
            " FROM analysis_checkpoints WHERE incarnation = 'new' ORDER BY 1, 2, 3"
        )
        # Old offset o is new offset o - carried_from; nothing pending comes along (the
        # projector finishes that round on the old incarnation); the gone layout stays behind.
        assert [
            (r["t"], r["consumer_group"], r["partition"], r["committed"], r["pending_until"]) for r in copied
        ] == [
            ("analysis", "analysis#0/1", 0, -1, None),
            ("analysis", "analysis#0/1", 1, 10, None),
            ("projector", "projector", 0, 4, None),
            ("projector", "projector", 1, -1, None),
        ]
        originals = await conn.fetch(
            "SELECT partition, updated_at FROM analysis_checkpoints"
            " WHERE consumer_group = 'analysis#0/1' AND incarnation = 'old' ORDER BY partition"
        )
        assert [r["updated_at"] for r in copied if r["t"] == "analysis"] == [
            r["updated_at"] for r in originals
        ]
        assert await ingest_checkpoints.load_carry_over(conn, "new", "events") == carry
        assert await asyncio.to_thread(checkpoints.needed_from, "new", "events") == {0: 0, 1: 0}
    finally:
        await conn.close()


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record of `topic`, in fetch order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, 0)
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(300).items():
                out += [(tp.partition, r.offset, r.value) for r in records]
            ends = [consumer.highwater(tp) for tp in parts]
            if all(
                end is not None and consumer.position(tp) >= end for tp, end in zip(parts, ends, strict=True)
            ):
                break
        return out
    finally:
        consumer.close()


def test_behind_the_gate_a_restarted_broker_takes_produces_only_once_its_topics_exist(gated: Gated) -> None:
    """Producers that outlive the restart write all the while: every record the new broker
    acknowledged is there once, at an offset of its own. (Without the hold, tansu takes
    produces before the topic exists and then gives their offsets out again: repeated
    offsets in every run tried.)"""
    gate = gated.gate
    acked: list[bytes] = []
    stop, pause = threading.Event(), threading.Event()
    paused: set[str] = set()

    def write(name: str, per_batch: int) -> None:
        # Batches of different sizes: a produce reusing an offset then lands inside another's
        # batch (a repeated offset), not only on its first offset (a refused produce).
        producer = KafkaProducer(bootstrap_servers=gate.bootstrap, acks="all", linger_ms=5, retries=0)
        i = 0
        while not stop.is_set():
            if pause.is_set():
                paused.add(name)
                time.sleep(0.01)
                continue
            paused.discard(name)
            values = [f"{name}-{i + n}".encode() for n in range(per_batch)]
            i += per_batch
            futures = [producer.send(EVENTS, value, partition=0) for value in values]
            for value, future in zip(values, futures, strict=True):
                with contextlib.suppress(KafkaError):  # the broker is down for a while
                    future.get(10)
                    acked.append(value)
            time.sleep(0.002)
        producer.close()

    writers = [threading.Thread(target=write, args=(f"w{n}", size)) for n, size in enumerate((1, 5, 9))]
    for writer in writers:
        writer.start()
    try:
        time.sleep(0.5)
        pause.set()  # what the old broker acknowledged is gone with it (memory storage)
        _wait(lambda: len(paused) == len(writers), 15, "the writers to pause")
        before = len(acked)
        gated.broker.stop(grace=0.0)
        pause.clear()  # the writer goes on while the broker is down and while it starts
        time.sleep(0.3)
        start_behind_gate(gated.broker, gate, TOPICS)  # in this thread: the broker lives with it
        time.sleep(1.0)
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    after = acked[before:]
    assert after, "nothing was acknowledged after the restart"
    records = _read_all(gate.bootstrap, EVENTS, PARTITIONS)
    positions = Counter((partition, offset) for partition, offset, _ in records)
    assert max(positions.values()) == 1, "an offset was given out twice"
    for p in range(PARTITIONS):
        offsets = sorted(offset for partition, offset in positions if partition == p)
        assert offsets == list(range(len(offsets))), f"a hole in partition {p}"
    stored = Counter(value for _, _, value in records)
    assert [value for value in after if stored[value] != 1] == []
