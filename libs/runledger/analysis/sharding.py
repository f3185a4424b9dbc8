"""Sharding the analysis service: which instance analyses which experiment, and where it resumes.

Every analysis instance reads every partition of the events topic (an experiment's runs
are spread over all of them, keyed by run id), and keeps the events of the experiments
that hash to its shard. An experiment is the unit because everything stateful in
detection lives inside one: a run's series, the experiment's cohorts, and attribution
requests across its runs. So N shards do N times the detection work of one, each on its
own core, and never judge the same series twice.

Offsets are stored per consumer group, and each shard of a layout (a shard count) has
its own group name. When the layout changes, a shard that finds the checkpoints of
another layout newer than its own resumes from that layout's newest offset of each
partition: no point is analysed twice (the detector states carried over from the old
layout already hold what came before), and what an old shard had not yet checkpointed
when it stopped is skipped (stop the old layout cleanly to make that nothing).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

# "<group>#<shard>/<shards>"; a bare group name is the one-shard layout.
_SHARD_SUFFIX = re.compile(r"#(\d+)/(\d+)$")


def shard_of(tenant_id: str, experiment_id: str, shards: int) -> int:
    """The shard (0 .. shards - 1) that analyses an experiment; stable across processes and versions."""
    if shards == 1:
        return 0
    digest = hashlib.blake2b(f"{tenant_id}\x00{experiment_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def checkpoint_group(group: str, shard: int, shards: int) -> str:
    """The consumer-group name a shard stores its offsets under."""
    return group if shards == 1 else f"{group}#{shard}/{shards}"


def layout_of(stored_group: str, group: str) -> int | None:
    """The shard count of a stored group name, None if it is not one of `group`'s shards."""
    if stored_group == group:
        return 1
    if not stored_group.startswith(group + "#"):
        return None
    match = _SHARD_SUFFIX.fullmatch(stored_group[len(group) :])
    return int(match.group(2)) if match else None


@dataclass(frozen=True, slots=True)
class StoredOffset:
    """One row of stored analysis offsets."""

    group: str
    partition: int
    offset: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a shard starts: partition -> last offset already analysed, and why."""

    offsets: dict[int, int]
    adopted_from_layout: int | None  # the shard count whose offsets were taken over, if any


def resume_offsets(rows: Iterable[StoredOffset], group: str, shard: int, shards: int) -> Resume:
    """The offsets a shard resumes from, given every stored row of `group`'s layouts."""
    own_group = checkpoint_group(group, shard, shards)
    own: dict[int, int] = {}
    own_newest: datetime | None = None
    others: dict[int, list[StoredOffset]] = {}
    for row in rows:
        if row.group == own_group:
            own[row.partition] = row.offset
            own_newest = row.updated_at if own_newest is None else max(own_newest, row.updated_at)
            continue
        layout = layout_of(row.group, group)
        # Other shards of the same layout analyse other experiments: their offsets say
        # nothing about this shard's.
        if layout is not None and layout != shards:
            others.setdefault(layout, []).append(row)
    if not others:
        return Resume(own, None)
    # The layout that checkpointed last is the one that ran last.
    layout, newest_rows = max(others.items(), key=lambda item: max(r.updated_at for r in item[1]))
    if own_newest is not None and own_newest >= max(r.updated_at for r in newest_rows):
        return Resume(own, None)
    adopted: dict[int, int] = {}
    for r in newest_rows:
        adopted[r.partition] = max(adopted.get(r.partition, -1), r.offset)
    return Resume(adopted, layout)
