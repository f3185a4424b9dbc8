"""Read offset ranges of partitions back from Kafka (re-forming a pending round).

A round left pending by a crash may span partitions this projector is not assigned
(another consumer of the group got them in the rebalance); its members are read with a
consumer outside the group, so the round can be re-formed exactly wherever it is found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from services.ingest.checkpoints import Member
from services.ingest.offset_continuity import OffsetContinuity


class RangeUnavailable(Exception):
    """The broker did not return a whole range in time (the caller retries later)."""


def read_ranges(
    bootstrap: Sequence[str], topic: str, members: Sequence[Member], timeout_s: float = 30.0
) -> dict[int, list[Any]]:
    """The records of each member's offsets first..last, by partition (blocking).

    Screened as the consumer that formed the round screened them
    (services/ingest/offset_continuity.py): a repeated offset keeps its first record, and a
    hole is fetched again until it fills or has stayed long enough to be taken as it is
    (the consumer took it so, or could not have read the records after it).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=list(bootstrap),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    try:
        wanted = {m.partition: m for m in members}
        got: dict[int, list[Any]] = {m.partition: [] for m in members}
        continuity = {
            m.partition: OffsetContinuity(m.first - 1, f"re-forming a round, partition {topic}-{m.partition}")
            for m in members
        }
        consumer.assign([TopicPartition(topic, p) for p in wanted])
        for m in members:
            consumer.seek(TopicPartition(topic, m.partition), m.first)
        open_ = set(wanted)
        deadline = time.monotonic() + timeout_s
        while open_:
            if time.monotonic() > deadline:
                raise RangeUnavailable(
                    f"partitions {sorted(open_)} of {topic} not read back in {timeout_s} s"
                )
            for tp, records in consumer.poll(200).items():
                if tp.partition not in open_:
                    continue
                m, screen = wanted[tp.partition], continuity[tp.partition]
                taken, refetch = screen.screen([r for r in records if r.offset <= m.last])
                got[tp.partition].extend(taken)
                if refetch:  # kafka-python drops what it fetched past the new position
                    consumer.seek(tp, screen.fetched_until + 1)
                elif records and records[-1].offset >= m.last:
                    open_.discard(tp.partition)
                    consumer.pause(tp)
        return got
    finally:
        consumer.close(autocommit=False)
