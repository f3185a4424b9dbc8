"""Sharding the analysis service: experiments spread evenly and stably, and a shard resumes
from the right offsets after a restart or a change of the shard count."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from runledger.analysis.sharding import (
    StoredOffset,
    checkpoint_group,
    layout_of,
    resume_offsets,
    shard_of,
)
from runledger.config import Settings

GROUP = "runledger-analysis"
T0 = datetime(2026, 11, 27, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rows(group: str, offsets: dict[int, int], updated: datetime) -> list[StoredOffset]:
    return [StoredOffset(group, p, o, updated) for p, o in offsets.items()]


def test_experiments_spread_evenly_and_every_process_agrees() -> None:
    experiments = [("tenant-a" if i % 3 else "tenant-b", f"exp-{i}") for i in range(8000)]
    counts = Counter(shard_of(t, e, 4) for t, e in experiments)
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) / min(counts.values()) < 1.1
    # A fixed value: the hash must not depend on the process (PYTHONHASHSEED) or the version.
    assert [shard_of("tenant-a", f"exp-{i}", 7) for i in range(8)] == [4, 4, 1, 2, 1, 3, 1, 4]
    assert shard_of("tenant-a", "exp-1", 1) == 0
    # The tenant is part of the key: the same experiment id in two tenants may land apart.
    assert any(shard_of("t1", f"e{i}", 8) != shard_of("t2", f"e{i}", 8) for i in range(20))


def test_stored_group_names_tell_their_layout() -> None:
    assert checkpoint_group(GROUP, 0, 1) == GROUP
    assert checkpoint_group(GROUP, 2, 4) == f"{GROUP}#2/4"
    assert layout_of(GROUP, GROUP) == 1
    assert layout_of(f"{GROUP}#2/4", GROUP) == 4
    assert layout_of(f"{GROUP}-other#0/2", GROUP) is None
    assert layout_of(f"{GROUP}#x/2", GROUP) is None


def test_a_shard_resumes_from_its_own_offsets() -> None:
    stored = rows(checkpoint_group(GROUP, 1, 2), {0: 10, 1: 20}, at(5))
    # The other shard of the same layout is further on: it analyses other experiments.
    stored += rows(checkpoint_group(GROUP, 0, 2), {0: 90, 1: 95}, at(9))
    resume = resume_offsets(stored, GROUP, 1, 2)
    assert resume.offsets == {0: 10, 1: 20} and resume.adopted_from_layout is None


def test_a_new_shard_of_the_same_layout_starts_from_the_beginning() -> None:
    stored = rows(checkpoint_group(GROUP, 0, 2), {0: 90}, at(9))
    assert resume_offsets(stored, GROUP, 1, 2).offsets == {}
    assert resume_offsets([], GROUP, 0, 1).offsets == {}


def test_a_changed_layout_takes_over_the_newest_offsets_of_the_previous_one() -> None:
    # Two shards ran and stopped; their stored offsets differ per partition.
    stored = rows(checkpoint_group(GROUP, 0, 2), {0: 100, 1: 50}, at(10))
    stored += rows(checkpoint_group(GROUP, 1, 2), {0: 90, 1: 70, 2: 5}, at(11))
    # An old one-shard layout from long ago must not win over them.
    stored += rows(GROUP, {0: 3, 1: 3, 2: 3}, at(1))
    for shard in range(3):
        resume = resume_offsets(stored, GROUP, shard, 3)
        assert resume.offsets == {0: 100, 1: 70, 2: 5} and resume.adopted_from_layout == 2
    # Back to one shard: its own rows are older than the two-shard layout's, so stale.
    resume = resume_offsets(stored, GROUP, 0, 1)
    assert resume.offsets == {0: 100, 1: 70, 2: 5} and resume.adopted_from_layout == 2
    # Once the new layout has checkpointed, its own rows are the newest again.
    stored += rows(checkpoint_group(GROUP, 0, 3), {0: 120, 1: 80, 2: 9}, at(20))
    resume = resume_offsets(stored, GROUP, 0, 3)
    assert resume.offsets == {0: 120, 1: 80, 2: 9} and resume.adopted_from_layout is None


def test_settings_refuse_a_shard_beyond_the_count() -> None:
    assert Settings(analysis_shards=4, analysis_shard=3).analysis_shard == 3
    with pytest.raises(ValueError, match="RUNLEDGER_ANALYSIS_SHARD=4"):
        Settings(analysis_shards=4, analysis_shard=4)
