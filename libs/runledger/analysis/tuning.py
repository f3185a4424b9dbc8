"""Which detector overrides apply to one series: tenant-wide, per experiment, per metric.

A tenant's settings are rows (experiment_id, key pattern, overrides) where '' means
"any". For a series they merge from the least to the most specific, field by field:
tenant-wide, then metric patterns, then the experiment, then the experiment's metric
patterns; among patterns, an exact key beats a glob (`val/*`), a longer glob a shorter.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Tuning:
    """One settings row of a tenant."""

    experiment_id: str  # '' = every experiment
    key: str  # '' = every metric; may be a glob such as `val/*`
    overrides: dict[str, Any]


def _key_rank(pattern: str, key: str) -> int | None:
    """How specifically `pattern` names `key` (higher wins); None when it does not match."""
    if pattern == "":
        return 0
    if pattern == key:
        return 1_000_000
    if fnmatch.fnmatchcase(key, pattern):
        return 1 + len(pattern.replace("*", "").replace("?", ""))
    return None


def merged_overrides(rows: Iterable[Tuning], experiment_id: str, key: str) -> dict[str, Any]:
    """The overrides of every matching row merged, the most specific last (so it wins)."""
    matching: list[tuple[int, int, Tuning]] = []
    for row in rows:
        if row.experiment_id not in ("", experiment_id):
            continue
        rank = _key_rank(row.key, key)
        if rank is None:
            continue
        matching.append((1 if row.experiment_id else 0, rank, row))
    merged: dict[str, Any] = {}
    for _, _, row in sorted(matching, key=lambda m: (m[0], m[1])):
        merged.update(row.overrides)
    return merged
