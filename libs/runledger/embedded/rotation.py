"""Replace the embedded broker by an empty one without losing or repeating an acknowledged event.

The embedded broker (tansu 0.6.0, memory storage) keeps every record for as long as it
runs: its memory grows with the log (about 37 MiB a minute under the fleet benchmark) and
so does the cost of each fetch, which lists the partition's stored batches. It cannot
delete records (DeleteRecords is unimplemented, retention is not applied). So, past a size,
the supervisor replaces it by a new broker on another port, behind the same produce gate
(libs/runledger/embedded/produce_gate.py), and this module does so without loss:

1. While producers go on: the consumers' checkpoints in PostgreSQL (the projector's and the
   analysis service's, per partition) say where the oldest of them stands; the records
   from there on, and the whole dead-letter topic, are read into memory. The new broker
   starts under a cluster id that declares the old incarnation carried over
   (libs/runledger/incarnation.py) and gets them, each to its partition, in order (the gate
   routes the rotation's staging client to it).
2. The gate holds every new produce and waits until each forwarded one is answered: from
   then on the old log does not change. What came after step 1's read is read and written
   too. Table `broker_carry_over` records where the carried records start and end in each
   partition, and each consumer group's checkpoints are copied to the new incarnation,
   moved to the carried records' new offsets. A consumer that has not checkpointed on the
   old incarnation at all is still counted (it needs all of it), unless it is gone.
3. The gate holds every request, sends new connections to the new broker and stops the old
   one; its connections drop, and clients reconnect to the new one.
4. The gate lets every request but produces through, so consumers reach the new broker; once
   the projector has applied the carried records, produces too. (A write acknowledged by the
   new broker is then never ahead of an unprojected older one, which read-your-writes relies on.)

Consumers see a new incarnation, as after any broker restart, and resume from their copied
checkpoints; what they had applied after those were copied they drop (the projector by event
id, ADR 0003, as it does a producer's resend; the analysis by step). A round the projector
left pending on the old incarnation it finishes from the carried records
(services/ingest/projector.py). Producers see a cluster id that names their old incarnation
as carried over, so they do not send what it acknowledged again (runledger_sdk/resend.py).
If anything fails before step 3, the new broker is dropped and the old one goes on as if
nothing happened.

Produces wait during steps 2 to 4: the data of a few seconds to read and write, the swap,
and the projection of what it had not applied yet. (ADR 0015.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.embedded.broker import ADMIN_CLIENT_ID, EmbeddedBroker, ensure_topics
from runledger.embedded.ports import free_port
from runledger.embedded.produce_gate import ProduceGate
from runledger.incarnation import CarryOver, new_incarnation, successor_incarnation

log = logging.getLogger(__name__)

# The gate lets these clients' requests through while it holds everyone else's; it sends the
# staging client's connections to the next broker while the rotation fills it.
ROTATION_CLIENT_ID = "runledger-rotation"
STAGING_CLIENT_ID = "runledger-rotation-staging"
GATE_PRIVILEGED_CLIENTS = (ROTATION_CLIENT_ID, STAGING_CLIENT_ID, ADMIN_CLIENT_ID)
_MAX_RECORD_BYTES = 2 * 1024 * 1024
_T = TypeVar("_T")


def gated_broker(
    log_path: Path, *, port: int = 0, host: str = "127.0.0.1"
) -> tuple[ProduceGate, EmbeddedBroker]:
    """A started produce gate on `port` (0: a free one) and a broker, not started yet, behind it
    on a free port, advertising the gate's address: the layout a rotation needs."""
    gate = ProduceGate(free_port(host), port=port, host=host, privileged_client_ids=GATE_PRIVILEGED_CLIENTS)
    gate.start()
    return gate, EmbeddedBroker(gate.upstream_port, log_path, host=host, advertised_port=gate.port)


def start_behind_gate(broker: EmbeddedBroker, gate: ProduceGate, topics: Mapping[str, int]) -> None:
    """Start `broker` (again) behind `gate` and create its topics, holding every client's
    requests until they exist.

    tansu 0.6.0 acknowledges a produce to a topic that does not exist yet, and creating the
    topic afterwards starts its partitions' offsets at 0 again: the next produces reuse the
    offsets already given (one fails, UNKNOWN_SERVER_ERROR; the others store records at
    offsets that are taken, which consumers skip as repeats), and a failed one leaves a
    hole. A client that outlives a restart knows the topic from before and produces at
    once, so a restarted broker is reachable only once its topics are there (the defect:
    tests/integration/test_offset_holes.py; the hold: tests/integration/test_broker_rotation.py).
    """
    incarnation = new_incarnation()
    gate.hold_all()
    try:
        # Declared before the broker listens: no connection to it goes unfenced.
        gate.switch(broker.port, incarnation)
        broker.start(cluster_id=incarnation)
        ensure_topics(gate.bootstrap, topics, client_id=broker.admin_client_id)
    finally:
        gate.release()


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
    preread_s: float  # reading most of the tail and writing it to the new broker, before the pause
    paused_s: float  # produces held, in all; of which:
    read_s: float  # waiting for the produces in flight, reading the rest of the tail
    write_s: float  # writing the rest to the new broker, recording the carry-over
    switch_s: float  # sending clients to the new broker, stopping the old one
    project_s: float  # until the projector had applied the carried records


class ConsumerCheckpoints(Protocol):
    """What a rotation asks of the consumers' checkpoints."""

    def needed_from(self, incarnation: str, topic: str) -> Mapping[int, int]:
        """The lowest offset some consumer still needs, per partition of `topic` in
        `incarnation`; partitions not in the answer are needed from offset 0."""
        ...

    def carried_over(self, carry: CarryOver) -> None:
        """Record what `carry` brought into the new incarnation, and start each consumer
        there where it stood on the old one (the same records, at their new offsets)."""
        ...

    def wait_projected(
        self, incarnation: str, topic: str, carried_until: Mapping[int, int], timeout_s: float
    ) -> bool:
        """Whether the projector has applied `incarnation`'s records below `carried_until`
        within `timeout_s`."""
        ...


# A consumer group none of whose checkpoints moved for this long is taken for gone (a removed
# service, an old analysis shard layout): what it would need is not carried, nor is its
# position, so it cannot hold every later replacement back.
CONSUMER_GONE_AFTER_S = 3600.0
# The consumers' checkpoint tables; a consumer is "<table>:<group>".
_CHECKPOINT_TABLES = ("projector_checkpoints", "analysis_checkpoints")


def _live_groups(table: str, gone_after_param: str) -> str:
    """SQL for the consumer groups of checkpoint `table` that are not gone: one of their
    checkpoints moved within the last `gone_after_param` (a query parameter, seconds)."""
    return (
        f"SELECT consumer_group FROM {table} GROUP BY consumer_group"
        f" HAVING max(updated_at) > now() - make_interval(secs => {gone_after_param})"
    )


class PostgresCheckpoints:
    """ConsumerCheckpoints on the projector's and the analysis service's tables in PostgreSQL."""

    def __init__(self, dsn: str, projector_group: str) -> None:
        """Read and write through `dsn`; `projector_group` is the projector's consumer group."""
        self._dsn = dsn
        self._projector_group = projector_group

    def needed_from(self, incarnation: str, topic: str) -> Mapping[int, int]:
        """Per partition, the lowest next offset over every consumer group (and analysis
        shard) that is not gone (CONSUMER_GONE_AFTER_S); a group without a row for a
        partition of `incarnation` needs it from 0, one without any row there all of it
        (it has not checkpointed since the broker last restarted empty)."""

        async def read(conn: Any) -> Mapping[int, int]:
            rows = await conn.fetch(
                " UNION ALL ".join(
                    f"SELECT '{table}:' || consumer_group AS consumer, partition, committed,"
                    f" incarnation = $1 AS here FROM {table}"
                    f" WHERE topic = $2 AND consumer_group IN ({_live_groups(table, '$3')})"
                    for table in _CHECKPOINT_TABLES
                ),
                incarnation,
                topic,
                CONSUMER_GONE_AFTER_S,
            )
            by_consumer: dict[str, dict[int, int]] = {row["consumer"]: {} for row in rows}
            for row in rows:
                if row["here"]:
                    by_consumer[row["consumer"]][row["partition"]] = row["committed"] + 1
            if any(not marks for marks in by_consumer.values()):
                return {}
            seen = {p for marks in by_consumer.values() for p in marks}
            return {p: min(marks.get(p, 0) for marks in by_consumer.values()) for p in seen}

        return self._with_connection(read)

    def carried_over(self, carry: CarryOver) -> None:
        """Rows of `broker_carry_over` (the API's read-your-writes waits translate with them, the
        projector finishes a round left pending on the predecessor with them) and each
        consumer group's checkpoints on the new incarnation, from its rows on the old one:
        offsets moved down by where the carried records start, the time they were taken kept
        (the analysis picks its shard layout by it). One transaction."""
        old, incarnation, topic = carry.predecessor, carry.incarnation, carry.topic
        parts = sorted(carry.carried_until)
        starts = [carry.carried_from.get(p, 0) for p in parts]
        untils = [carry.carried_until[p] for p in parts]

        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO broker_carry_over"
                    " (incarnation, topic, partition, carried_until, predecessor, carried_from)"
                    " SELECT $1, $2, p, u, $5, f FROM unnest($3::int[], $4::bigint[], $6::bigint[]) AS c(p, u, f)"
                    " ON CONFLICT (incarnation, topic, partition) DO UPDATE"
                    " SET carried_until = excluded.carried_until, predecessor = excluded.predecessor,"
                    " carried_from = excluded.carried_from",
                    incarnation,
                    topic,
                    parts,
                    untils,
                    old,
                    starts,
                )
                # No consumer has seen the new incarnation yet (the gate holds them off). A
                # round pending on the old one is not carried: the projector finishes it there.
                for table in _CHECKPOINT_TABLES:
                    await conn.execute(
                        f"INSERT INTO {table} (consumer_group, incarnation, topic, partition, committed, updated_at)"
                        " SELECT c.consumer_group, $2, c.topic, c.partition,"
                        " GREATEST(-1, LEAST(c.committed - s.start, s.until - 1)), c.updated_at"
                        f" FROM {table} AS c"
                        " JOIN unnest($4::int[], $5::bigint[], $6::bigint[]) AS s(p, start, until) ON c.partition = s.p"
                        " WHERE c.incarnation = $1 AND c.topic = $3"
                        f" AND c.consumer_group IN ({_live_groups(table, '$7')})"
                        " ON CONFLICT (consumer_group, incarnation, topic, partition) DO NOTHING",
                        old,
                        incarnation,
                        topic,
                        parts,
                        starts,
                        untils,
                        CONSUMER_GONE_AFTER_S,
                    )

        self._with_connection(write)

    def wait_projected(
        self, incarnation: str, topic: str, carried_until: Mapping[int, int], timeout_s: float
    ) -> bool:
        """Poll the projector's checkpoints of `incarnation` until they pass `carried_until`."""
        wanted = {p: until - 1 for p, until in carried_until.items() if until > 0}
        deadline = time.monotonic() + timeout_s

        async def poll(conn: Any) -> bool:
            while True:
                rows = await conn.fetch(
                    "SELECT partition, committed FROM projector_checkpoints"
                    " WHERE consumer_group = $1 AND incarnation = $2 AND topic = $3",
                    self._projector_group,
                    incarnation,
                    topic,
                )
                committed = {r["partition"]: r["committed"] for r in rows}
                if all(committed.get(p, -1) >= last for p, last in wanted.items()):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.05)

        return self._with_connection(poll)

    def _with_connection(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        async def run() -> _T:
            conn = await asyncpg.connect(self._dsn, timeout=10)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())


def rotate(
    broker: EmbeddedBroker,
    gate: ProduceGate,
    checkpoints: ConsumerCheckpoints,
    *,
    events_topic: str,
    dlq_topic: str,
    topics: Mapping[str, int],
    max_carry_bytes: int,
    drain_timeout_s: float = 10.0,
    projection_timeout_s: float = 30.0,
) -> tuple[EmbeddedBroker, RotationReport]:
    """Replace `broker` by a new incarnation holding what consumers still need (see module doc);
    return the new broker (it listens on another port, behind the same gate) and a report."""
    old = broker.incarnation
    partitions = topics[events_topic]
    successor = EmbeddedBroker(
        free_port(broker.host),
        broker.log_path,
        host=broker.host,
        advertised_port=gate.port,
        admin_client_id=STAGING_CLIENT_ID,
    )
    gate.route(STAGING_CLIENT_ID, successor.port)
    switched = False
    try:
        # Most of the tail is read and written while producers go on; only what came after it
        # waits for them.
        prereading = time.monotonic()
        needed = checkpoints.needed_from(old, events_topic)
        start_offsets = {p: max(0, needed.get(p, 0)) for p in range(partitions)}
        events, events_next = read_tail(gate.bootstrap, events_topic, start_offsets, settled=False)
        letters, letters_next = read_tail(gate.bootstrap, dlq_topic, None, settled=False)
        _carry_size(events, letters, max_carry_bytes)
        new = successor_incarnation(old)
        successor.start(cluster_id=new)
        ensure_topics(gate.bootstrap, topics, client_id=STAGING_CLIENT_ID)
        produce_all(gate.bootstrap, events_topic, events)
        produce_all(gate.bootstrap, dlq_topic, letters)
        started = time.monotonic()
        gate.hold_produce()
        try:
            if not gate.wait_idle(drain_timeout_s):
                raise RotationSkipped(f"produce requests still unanswered after {drain_timeout_s} s")
            rest = read_tail(gate.bootstrap, events_topic, events_next, settled=True)[0]
            letters_rest = read_tail(gate.bootstrap, dlq_topic, letters_next, settled=True)[0]
            events += rest
            letters += letters_rest
            carried_bytes = _carry_size(events, letters, max_carry_bytes)
            writing = time.monotonic()
            produce_all(gate.bootstrap, events_topic, rest)
            produce_all(gate.bootstrap, dlq_topic, letters_rest)
            per_partition = Counter(r.partition for r in events)
            carried_until = {p: per_partition[p] for p in range(partitions)}
            # The carried records of a partition are its old offsets start.., in order.
            carry = CarryOver(old, new, events_topic, start_offsets, carried_until)
            checkpoints.carried_over(carry)
            # The swap: no client reaches either broker meanwhile; connections to the old one
            # drop with it, and clients reconnect to the new one.
            gate.hold_all()
            switching = time.monotonic()
            gate.switch(successor.port, new)
            switched = True
            broker.stop(grace=0.0)  # memory storage: nothing to flush
            gate.route(STAGING_CLIENT_ID, None)
            # Consumers may reach the new broker now; producers once the projector has applied
            # the carried records. So no write is acknowledged ahead of an older one still
            # unprojected, which read-your-writes tokens assume (services/api/pending.py, `merged`).
            gate.hold_produce()
            projecting = time.monotonic()
            if not checkpoints.wait_projected(new, events_topic, carried_until, projection_timeout_s):
                log.warning(
                    "the projector has not applied the carried records within %.0f s; letting produces through",
                    projection_timeout_s,
                )
            done = time.monotonic()
        finally:
            gate.release()
    except BaseException:
        if not switched:
            gate.route(STAGING_CLIENT_ID, None)
            successor.stop(grace=0.0)
        raise
    return successor, RotationReport(
        old,
        new,
        len(events),
        len(letters),
        carried_bytes,
        preread_s=started - prereading,
        paused_s=done - started,
        read_s=writing - started,
        write_s=switching - writing,
        switch_s=projecting - switching,
        project_s=done - projecting,
    )


def _carry_size(events: list[CarriedRecord], letters: list[CarriedRecord], max_carry_bytes: int) -> int:
    """The bytes to carry over; RotationSkipped when more than `max_carry_bytes`."""
    carried = sum(len(r.value) + len(r.key or b"") for r in (*events, *letters))
    if carried > max_carry_bytes:
        raise RotationSkipped(
            f"consumers are {carried / 2**20:.0f} MiB behind, more than the"
            f" {max_carry_bytes / 2**20:.0f} MiB a rotation carries over"
        )
    return carried


def read_tail(
    bootstrap: str,
    topic: str,
    start_offsets: Mapping[int, int] | None,
    *,
    settled: bool,
    timeout_s: float = 60.0,
) -> tuple[list[CarriedRecord], dict[int, int]]:
    """The records of `topic` from `start_offsets` (by partition; None: from the start) on, and
    the next offset of each partition after them.

    settled (nothing is being produced): to the end, the high watermark a fetch reports, and
    a partition must come back without a gap. Not settled: to the high watermark a partition
    had at its first fetch, and a gap ends that partition early (a produce whose batch the
    broker has not stored yet: services/ingest/offset_continuity.py); a settled read goes on
    from there.
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
        targets: dict[TopicPartition, int] = {}  # not settled: where each partition's read ends
        ended: set[TopicPartition] = set()  # not settled: stopped early at a gap
        out: list[CarriedRecord] = []
        deadline = time.monotonic() + timeout_s

        def end_of(tp: TopicPartition) -> int | None:
            highwater: int | None = consumer.highwater(tp)  # the last fetch's; final if nothing is produced
            if settled or highwater is None:
                return highwater
            return targets.setdefault(tp, highwater)

        def at_end(tp: TopicPartition) -> bool:
            end = end_of(tp)
            return tp in ended or (end is not None and expected[tp] >= end)

        while not all(at_end(tp) for tp in parts):
            if time.monotonic() > deadline:
                raise RotationSkipped(f"reading {topic} back did not finish within {timeout_s} s")
            for tp, records in consumer.poll(timeout_ms=200, max_records=100_000).items():
                end = end_of(tp)
                for r in records:
                    if end is not None and r.offset >= end:
                        break
                    if r.offset != expected[tp]:
                        if settled:
                            raise RotationSkipped(
                                f"{tp}: offset {r.offset} read where {expected[tp]} was due"
                            )
                        ended.add(tp)
                        break
                    expected[tp] = r.offset + 1
                    out.append(
                        CarriedRecord(tp.partition, r.key, r.value, list(r.headers or ()), r.timestamp)
                    )
                if at_end(tp):
                    consumer.pause(tp)
        return out, {tp.partition: expected[tp] for tp in parts}
    finally:
        consumer.close(autocommit=False)


def produce_all(bootstrap: str, topic: str, records: list[CarriedRecord], timeout_s: float = 60.0) -> None:
    """Produce `records` to their partitions of the next broker, in order, and wait until all
    are acknowledged."""
    if not records:
        return
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id=STAGING_CLIENT_ID,  # the gate routes it to the next broker
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
