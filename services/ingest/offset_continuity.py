"""Whether polled records follow the offsets before them, and fetching again across a hole.

A plain topic's offsets have no holes (no transactions or compaction here), yet under a fleet
the embedded broker handed the projector a record past the next offset of its partition: the
records between never came, and those events were never projected. The likely cause, read in
tansu 0.6.0's object-store storage (`dynostore.rs`): a produce raises the partition's high
watermark first and stores its batch after, so a fetch that lands between the two steps of
one produce, after a later produce stored its batch, returns that later batch, and
kafka-python moves its position past the missing one.

Both consumers of the events topic (the projector, the analysis service) pass every polled
record through an `OffsetContinuity`: a record past a hole is not taken, and the caller
fetches again from the hole until its records arrive; after GAP_REFETCHES fetches over at
least GAP_WAIT_S the hole is taken as it is (the records are gone: lost by the broker, or
deleted by retention unread).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import TopicPartition

log = logging.getLogger(__name__)

GAP_REFETCHES = 5
GAP_WAIT_S = 2.0


class OffsetAnomaly(enum.Enum):
    """A polled record that does not follow the one before it."""

    # At or before an offset already taken: a re-fetch after a seek (dropped, as expected).
    REPEAT = "repeat"
    # Past the next offset: not taken; the caller fetches again from the next offset.
    GAP_REFETCH = "gap_refetch"
    # The records of a hole arrived on a later fetch.
    GAP_FILLED = "gap_filled"
    # The same hole after GAP_REFETCHES fetches over at least GAP_WAIT_S: taken as it is.
    GAP_ACCEPTED = "gap_accepted"


@dataclass
class OffsetContinuity:
    """The offsets of one partition taken so far, and the hole being fetched again, if any."""

    fetched_until: int  # the last offset taken (the position before the first poll, minus one)
    label: str = ""  # names the consumer and partition in logs
    count: Callable[[OffsetAnomaly], None] = field(default=lambda _anomaly: None, repr=False)
    hole_at: int = -1  # the first offset of a hole being fetched again (-1: none)
    # The first offset of the hole the last GAP_* anomaly was about, and its fetches so far.
    last_hole: int = field(default=-1, init=False)
    hole_fetches: int = field(default=0, init=False)
    _hole_since: float = field(default=0.0, init=False, repr=False)

    def screen(self, records: Sequence[Any]) -> tuple[list[Any], bool]:
        """The records to take, in order, and whether to fetch again from `fetched_until + 1`
        (a hole: the records after it are not taken)."""
        if not records:
            return [], False
        first, last = records[0].offset, records[-1].offset
        # The common case in O(1): kafka-python returns a partition's records in increasing
        # offset order, so a run whose ends are len - 1 apart has no hole and no repeat.
        if first == self.fetched_until + 1 and last - first == len(records) - 1 and self.hole_at != first:
            self.fetched_until = last
            return list(records), False
        taken: list[Any] = []
        for record in records:
            anomaly = self.check(record.offset)
            if anomaly is not None:
                self._report(anomaly, record.offset)
                if anomaly is OffsetAnomaly.GAP_REFETCH:
                    return taken, True
                if anomaly is OffsetAnomaly.REPEAT:
                    continue
            taken.append(record)
        return taken, False

    def check(self, offset: int) -> OffsetAnomaly | None:
        """Take `offset` unless it was taken already (REPEAT) or a hole before it may still
        fill (GAP_REFETCH); say how it departs from the next offset expected, if it does."""
        if offset <= self.fetched_until:
            return OffsetAnomaly.REPEAT
        expected = self.fetched_until + 1
        anomaly = None
        if offset > expected:
            now = time.monotonic()
            if self.hole_at != expected:
                self.hole_at, self.hole_fetches, self._hole_since = expected, 0, now
            self.last_hole = expected
            self.hole_fetches += 1
            if self.hole_fetches < GAP_REFETCHES or now - self._hole_since < GAP_WAIT_S:
                return OffsetAnomaly.GAP_REFETCH
            anomaly, self.hole_at = OffsetAnomaly.GAP_ACCEPTED, -1
        elif self.hole_at == expected:
            anomaly, self.last_hole, self.hole_at = OffsetAnomaly.GAP_FILLED, expected, -1
        self.fetched_until = offset
        return anomaly

    def _report(self, anomaly: OffsetAnomaly, offset: int) -> None:
        """Count an anomaly; log each hole once when it opens and once when it closes."""
        self.count(anomaly)
        hole = self.last_hole
        if anomaly is OffsetAnomaly.GAP_REFETCH and self.hole_fetches == 1:
            log.warning(
                "%s: offset %d came after %d; fetching again from %d", self.label, offset, hole - 1, hole
            )
        elif anomaly is OffsetAnomaly.GAP_FILLED:
            log.warning("%s: the records from offset %d arrived on a later fetch", self.label, hole)
        elif anomaly is OffsetAnomaly.GAP_ACCEPTED:
            log.error(
                "%s: offsets %d..%d did not arrive in %d fetches over %.0f s; going on without them",
                self.label,
                hole,
                offset - 1,
                self.hole_fetches,
                GAP_WAIT_S,
            )


class _Seekable(Protocol):
    def seek(self, partition: TopicPartition, offset: int) -> None: ...


def screen_polled(
    consumer: _Seekable,
    polled: dict[TopicPartition, list[Any]],
    continuity: dict[TopicPartition, OffsetContinuity],
) -> dict[TopicPartition, list[Any]]:
    """The polled records that follow the ones taken, by partition; a partition with a hole is
    fetched again from it. Call it while no poll runs: a KafkaConsumer is not thread-safe."""
    taken: dict[TopicPartition, list[Any]] = {}
    for tp, records in polled.items():
        kept, refetch = continuity[tp].screen(records)
        if refetch:
            consumer.seek(tp, continuity[tp].fetched_until + 1)
        if kept:
            taken[tp] = kept
    return taken
