"""Offset continuity of polled records: repeats dropped, holes fetched again until they fill."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from services.ingest import offset_continuity
from services.ingest.offset_continuity import GAP_REFETCHES, GAP_WAIT_S, OffsetAnomaly, OffsetContinuity


def _records(*offsets: int) -> list[Any]:
    return [SimpleNamespace(offset=o, value=b"x") for o in offsets]


def _offsets(records: list[Any]) -> list[int]:
    return [r.offset for r in records]


def _tracker(fetched_until: int) -> tuple[OffsetContinuity, list[OffsetAnomaly]]:
    seen: list[OffsetAnomaly] = []
    return OffsetContinuity(fetched_until, "test partition", seen.append), seen


def test_contiguous_records_are_taken_whole_and_nothing_is_counted() -> None:
    tracker, seen = _tracker(-1)
    taken, refetch = tracker.screen(_records(0, 1, 2))
    assert _offsets(taken) == [0, 1, 2] and not refetch
    taken, refetch = tracker.screen(_records(3, 4))
    assert _offsets(taken) == [3, 4] and not refetch and tracker.fetched_until == 4
    assert tracker.screen([]) == ([], False)
    assert seen == []


def test_a_repeat_is_dropped_and_a_hole_is_fetched_again_until_it_fills(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker, seen = _tracker(2)
    caplog.set_level(logging.WARNING, offset_continuity.__name__)
    # 1 and 2 again (a re-fetch after a seek), then 3, then 7: 4..6 did not come.
    taken, refetch = tracker.screen(_records(1, 2, 3, 7, 8))
    assert _offsets(taken) == [3] and refetch
    assert tracker.fetched_until == 3 and tracker.hole_at == 4
    assert seen == [OffsetAnomaly.REPEAT, OffsetAnomaly.REPEAT, OffsetAnomaly.GAP_REFETCH]
    assert "offset 7 came after 3; fetching again from 4" in caplog.text
    # A second fetch still without them, then one with them.
    assert tracker.screen(_records(7)) == ([], True)
    taken, refetch = tracker.screen(_records(4, 5, 6, 7, 8))
    assert _offsets(taken) == [4, 5, 6, 7, 8] and not refetch and tracker.hole_at == -1
    assert seen[3:] == [OffsetAnomaly.GAP_REFETCH, OffsetAnomaly.GAP_FILLED]
    assert "the records from offset 4 arrived on a later fetch" in caplog.text
    assert caplog.text.count("fetching again") == 1  # logged when the hole opens, not per fetch


def test_a_hole_that_never_fills_is_accepted_after_enough_fetches_and_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(offset_continuity, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tracker, seen = _tracker(2)
    for _ in range(GAP_REFETCHES + 3):  # many fetches, but too soon
        assert tracker.screen(_records(7, 8)) == ([], True)
    clock[0] += GAP_WAIT_S
    taken, refetch = tracker.screen(_records(7, 8))
    assert _offsets(taken) == [7, 8] and not refetch and tracker.hole_at == -1
    assert seen[-1] is OffsetAnomaly.GAP_ACCEPTED
    assert f"offsets 3..6 did not arrive in {GAP_REFETCHES + 4} fetches" in caplog.text


def test_enough_time_alone_does_not_accept_a_hole(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(offset_continuity, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tracker, _ = _tracker(2)
    assert tracker.screen(_records(7)) == ([], True)
    clock[0] += 10 * GAP_WAIT_S  # a slow consumer: one fetch, long ago
    for _ in range(GAP_REFETCHES - 2):
        assert tracker.screen(_records(7)) == ([], True)
    assert _offsets(tracker.screen(_records(7))[0]) == [7]


def test_a_new_hole_starts_its_own_count() -> None:
    tracker, seen = _tracker(-1)
    taken, refetch = tracker.screen(_records(0, 2))
    assert _offsets(taken) == [0] and refetch
    assert tracker.fetched_until == 0 and tracker.hole_at == 1 and tracker.hole_fetches == 1
    taken, _ = tracker.screen(_records(1, 2, 5))
    assert _offsets(taken) == [1, 2] and tracker.hole_at == 3 and tracker.hole_fetches == 1
    assert seen == [OffsetAnomaly.GAP_REFETCH, OffsetAnomaly.GAP_FILLED, OffsetAnomaly.GAP_REFETCH]
