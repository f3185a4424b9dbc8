"""Replace the embedded broker by an empty one without losing or repeating an acknowledged event.

The embedded broker (tansu 0.6.0, memory storage) keeps every record for as long as it
runs: its memory grows with the log (about 37 MiB a minute under the fleet benchmark) and
so does the cost of each fetch, which lists the partition's stored batches. It cannot
delete records (DeleteRecords is unimplemented, retention is not applied). So, past a size,
the supervisor replaces it, and this module does so without loss:

1. The produce gate (libs/runledger/embedded/produce_gate.py) holds every new produce and
   waits until each forwarded one is answered: from then on the log does not change.
   (Fetches go on: consumers keep reading meanwhile.)
2. The consumers' checkpoints in PostgreSQL (the projector's and the analysis service's,
   per partition) say where the oldest of them stands; records from there on are read
   into memory, with the whole dead-letter topic.
3. The gate holds every client's requests; the broker starts again, empty, under a cluster
   id that declares the old incarnation carried over (libs/runledger/incarnation.py); its
   topics are created and the records read in step 2 are produced into it, each to its
   partition, in order.
4. The gate lets the held requests through, to the new broker.

Consumers see a new incarnation, as after any broker restart, and read the carried records
from its start; the ones they had already applied they drop by event id (ADR 0003), as they
do a producer's resend. Producers see a cluster id that names their old incarnation as
carried over, so they forget what it acknowledged instead of sending it again. If carrying
over fails, the broker is restarted once more under a plain new id: producers then send
again what they hold (their resend window), as after a crash.

The pause is step 2 and 3: about a second plus the time to read and write the carried tail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.produce_gate import ProduceGate
from runledger.incarnation import successor_incarnation

log = logging.getLogger(__name__)

# The gate lets this client's produces through while it holds everyone else's.
ROTATION_CLIENT_ID = "runledger-rotation"
_MAX_RECORD_BYTES = 2 * 1024 * 1024


class RotationSkipped(Exception):
    """The broker was left as it was (the reason says why); held produces went on."""


@dataclass(frozen=True, slots=True)
class CarriedRecord:
    """One record read from the old broker, to produce again into the new one."""

    partition: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What a rotation did."""

    old_incarnation: str
    new_incarnation: str
    carried_events: int
    carried_letters: int
    carried_bytes: int
    paused_s: float  # produces held, in all
    read_s: float  # of which reading the tail back
    restart_s: float  # starting the new broker (and its topics)
    write_s: float  # producing the tail into it


#: The lowest offset still needed per partition of a topic, from the consumers' checkpoints
#: of an incarnation; partitions not in the answer are needed from offset 0.
NeededFrom = Callable[[str, str], Mapping[int, int]]


def checkpoint_low_marks(dsn: str) -> NeededFrom:
    """A NeededFrom reading the projector's and the analysis service's checkpoints in PostgreSQL.

    Per partition, the lowest next offset over every consumer group (and analysis shard)
    that has checkpointed anything on that incarnation; a group without a row for a
    partition needs it from 0.
    """

    async def low_marks(incarnation: str, topic: str) -> dict[int, int]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT 'projector:' || consumer_group AS consumer, partition, committed"
                " FROM projector_checkpoints WHERE incarnation = $1 AND topic = $2"
                " UNION ALL SELECT 'analysis:' || consumer_group, partition, committed"
                " FROM analysis_checkpoints WHERE incarnation = $1 AND topic = $2",
                incarnation,
                topic,
            )
        finally:
            await conn.close()
        by_consumer: dict[str, dict[int, int]] = {}
        for row in rows:
            by_consumer.setdefault(row["consumer"], {})[row["partition"]] = row["committed"] + 1
        seen = {p for marks in by_consumer.values() for p in marks}
        return {p: min(marks.get(p, 0) for marks in by_consumer.values()) for p in seen}

    def needed_from(incarnation: str, topic: str) -> Mapping[int, int]:
        return asyncio.run(low_marks(incarnation, topic))

    return needed_from


def rotate(
    broker: EmbeddedBroker,
    gate: ProduceGate,
    *,
    events_topic: str,
    dlq_topic: str,
    partitions: int,
    needed_from: NeededFrom,
    ensure_topics: Callable[[], None],
    max_carry_bytes: int,
    drain_timeout_s: float = 10.0,
) -> RotationReport:
    """Replace `broker` by an empty incarnation holding what consumers still need (see module doc)."""
    old = broker.incarnation
    started = time.monotonic()
    gate.hold_produce()
    try:
        if not gate.wait_idle(drain_timeout_s):
            raise RotationSkipped(f"produce requests still unanswered after {drain_timeout_s} s")
        start_offsets = {p: max(0, needed_from(old, events_topic).get(p, 0)) for p in range(partitions)}
        reading = time.monotonic()
        events = read_tail(gate.bootstrap, events_topic, start_offsets)
        letters = read_tail(gate.bootstrap, dlq_topic, None)
        restarting = time.monotonic()
        carried_bytes = sum(len(r.value) + len(r.key or b"") for r in (*events, *letters))
        if carried_bytes > max_carry_bytes:
            raise RotationSkipped(
                f"consumers are {carried_bytes / 2**20:.0f} MiB behind, more than the"
                f" {max_carry_bytes / 2**20:.0f} MiB a rotation carries over"
            )
        new = successor_incarnation(old)
        # No client may reach the new broker before its topics and the tail are in.
        gate.hold_all()
        # Memory storage has nothing to flush: no grace for open connections.
        broker.restart(cluster_id=new, grace=0.0)
        try:
            ensure_topics()
            writing = time.monotonic()
            produce_all(gate.bootstrap, events_topic, events)
            produce_all(gate.bootstrap, dlq_topic, letters)
        except Exception:
            # The new broker may hold part of the tail: start over under an id that declares
            # nothing, so producers send again what they acknowledged (their resend window).
            log.exception("carrying the log over failed; restarting the broker without a carry-over")
            broker.restart(grace=0.0)
            ensure_topics()
            raise
        done = time.monotonic()
        return RotationReport(
            old,
            new,
            len(events),
            len(letters),
            carried_bytes,
            paused_s=done - started,
            read_s=restarting - reading,
            restart_s=writing - restarting,
            write_s=done - writing,
        )
    finally:
        gate.release()


def read_tail(
    bootstrap: str, topic: str, start_offsets: Mapping[int, int] | None, timeout_s: float = 60.0
) -> list[CarriedRecord]:
    """Every record of `topic` from `start_offsets` (by partition; None: from the start) to its end.

    Only while nothing is produced: the end is the high watermark a fetch reports, and each
    partition must come back without a gap.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id=ROTATION_CLIENT_ID,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    try:
        numbers = consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, (start_offsets or {}).get(tp.partition, 0))
        expected = {tp: consumer.position(tp) for tp in parts}
        out: list[CarriedRecord] = []
        deadline = time.monotonic() + timeout_s

        def at_end(tp: TopicPartition) -> bool:
            highwater = consumer.highwater(tp)  # from the last fetch; exact while nothing is produced
            return highwater is not None and expected[tp] >= highwater

        while not all(at_end(tp) for tp in parts):
            if time.monotonic() > deadline:
                raise RotationSkipped(f"reading {topic} back did not finish within {timeout_s} s")
            for tp, records in consumer.poll(timeout_ms=200, max_records=100_000).items():
                for r in records:
                    if r.offset != expected[tp]:
                        raise RotationSkipped(f"{tp}: offset {r.offset} read where {expected[tp]} was due")
                    expected[tp] = r.offset + 1
                    out.append(
                        CarriedRecord(tp.partition, r.key, r.value, list(r.headers or ()), r.timestamp)
                    )
        return out
    finally:
        consumer.close(autocommit=False)


def produce_all(bootstrap: str, topic: str, records: list[CarriedRecord], timeout_s: float = 60.0) -> None:
    """Produce `records` to their partitions, in order, and wait until all are acknowledged."""
    if not records:
        return
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id=ROTATION_CLIENT_ID,
        acks="all",
        linger_ms=5,
        batch_size=1024 * 1024,
        compression_type="lz4",
        max_request_size=_MAX_RECORD_BYTES + 64 * 1024,
        # One request at a time per connection keeps each partition's order through retries.
        max_in_flight_requests_per_connection=1,
        retries=5,
    )
    try:
        futures: list[Any] = [
            producer.send(
                topic,
                value=r.value,
                key=r.key,
                headers=r.headers,
                partition=r.partition,
                timestamp_ms=r.timestamp_ms,
            )
            for r in records
        ]
        producer.flush(timeout=timeout_s)
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(records)} carried records were not acknowledged")
    finally:
        producer.close(timeout=5)
