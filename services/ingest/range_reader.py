"""Read exact offset ranges of partitions back from Kafka (re-forming a pending round).

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


class RangeUnavailable(Exception):
    """The broker did not return a whole range in time (the caller retries later)."""


def read_ranges(
    bootstrap: Sequence[str], topic: str, members: Sequence[Member], timeout_s: float = 30.0
) -> dict[int, list[Any]]:
    """The records of each member's offsets first..last, by partition (blocking)."""
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
                m = wanted[tp.partition]
                if tp.partition not in open_:
                    continue
                got[tp.partition].extend(r for r in records if m.first <= r.offset <= m.last)
                if records and records[-1].offset >= m.last:
                    open_.discard(tp.partition)
                    consumer.pause(tp)
        for m in members:  # a fetch can skip a batch (services/ingest/offset_continuity.py)
            if len(got[m.partition]) != m.last - m.first + 1:
                raise RangeUnavailable(
                    f"partition {m.partition} of {topic}: {len(got[m.partition])} records read back"
                    f" for offsets {m.first}..{m.last}"
                )
        return got
    finally:
        consumer.close(autocommit=False)
