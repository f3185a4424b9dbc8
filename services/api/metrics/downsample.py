"""How a history read is answered: the plan, chosen from the range and max_points.

Pure arithmetic (no I/O), so the bucket widths that bound the answer's size are
unit-tested. The repository turns a plan into SQL.

minmax: the step range is cut into B = max_points // 2 buckets and each bucket
answers its min and max point, so a spike always survives and the answer holds at
most max_points points. Over long ranges (>= 4 rollup buckets per answer bucket)
it reads `metric_rollup` (one row per 64 steps) instead of the raw points; the
partial 64-step buckets at the range's edges are read raw so the answer stays
exact for the requested range.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runledger.stores.clickhouse.tables import ROLLUP_STEPS

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DEFAULT_MAX_POINTS = 1000
MAX_MAX_POINTS = 100_000
# The rollup pays off once each answer bucket covers at least this many rollup buckets.
FAST_PATH_ROLLUP_BUCKETS = 4


class Method(StrEnum):
    """How a series is reduced."""

    RAW = "raw"
    MINMAX = "minmax"
    LTTB = "lttb"


@dataclass(frozen=True, slots=True)
class StepRange:
    """Inclusive step range."""

    lo: int
    hi: int

    @property
    def span(self) -> int:
        """How many steps the range covers."""
        return self.hi - self.lo + 1


@dataclass(frozen=True, slots=True)
class RawPlan:
    """Every point of the range."""

    range: StepRange


@dataclass(frozen=True, slots=True)
class MinMaxRawPlan:
    """Min and max point per `width`-step bucket, from raw points."""

    range: StepRange
    width: int


@dataclass(frozen=True, slots=True)
class MinMaxRollupPlan:
    """Min and max point per group of `group` rollup buckets, plus raw edge steps."""

    range: StepRange
    first_bucket: int  # rollup bucket of range.lo: groups are counted from it
    group: int  # rollup buckets per answer bucket
    full_lo: int  # first rollup bucket wholly inside the range
    full_hi: int  # last rollup bucket wholly inside the range
    lower_edge: StepRange | None  # raw steps before full_lo
    upper_edge: StepRange | None  # raw steps after full_hi


@dataclass(frozen=True, slots=True)
class LttbPlan:
    """Largest-triangle-three-buckets over the raw points of the range."""

    range: StepRange
    points: int


@dataclass(frozen=True, slots=True)
class EmptyPlan:
    """Nothing to read: the series has no points in the range."""


Plan = RawPlan | MinMaxRawPlan | MinMaxRollupPlan | LttbPlan | EmptyPlan


def minmax_buckets(max_points: int) -> int:
    """Answer buckets for minmax: each gives up to two points."""
    return max(1, max_points // 2)


def requested_range(start_step: int | None, end_step: int | None) -> StepRange:
    """The range a request names (open ends are the whole Int64 line)."""
    return StepRange(
        INT64_MIN if start_step is None else start_step, INT64_MAX if end_step is None else end_step
    )


def clamp(requested: StepRange, extent: StepRange | None) -> StepRange | None:
    """The part of the series' extent inside the requested range; None when they do not meet."""
    if extent is None:
        return None
    lo, hi = max(requested.lo, extent.lo), min(requested.hi, extent.hi)
    return StepRange(lo, hi) if lo <= hi else None


def use_rollup(rng: StepRange, buckets: int) -> bool:
    """Whether minmax over `rng` in `buckets` buckets should read the rollup."""
    # Rollup buckets are intDiv(step, 64), which truncates toward zero: negative steps
    # share bucket 0 with positive ones, so only non-negative ranges may use it.
    return rng.lo >= 0 and rng.span >= FAST_PATH_ROLLUP_BUCKETS * ROLLUP_STEPS * buckets


def raw_width(rng: StepRange, buckets: int) -> int:
    """Steps per answer bucket so that at most `buckets` buckets cover the range."""
    return max(1, -(-rng.span // buckets))


def rollup_plan(rng: StepRange, buckets: int) -> MinMaxRollupPlan:
    """The rollup plan for a non-negative range (see use_rollup)."""
    first, last = rng.lo // ROLLUP_STEPS, rng.hi // ROLLUP_STEPS
    # Groups are intDiv(bucket - first, group): ceil((last - first + 1) / group) <= buckets.
    group = max(1, -(-(last - first + 1) // buckets))
    full_lo = first if rng.lo % ROLLUP_STEPS == 0 else first + 1
    full_hi = last if rng.hi % ROLLUP_STEPS == ROLLUP_STEPS - 1 else last - 1
    lower = StepRange(rng.lo, full_lo * ROLLUP_STEPS - 1) if rng.lo < full_lo * ROLLUP_STEPS else None
    upper = (
        StepRange((full_hi + 1) * ROLLUP_STEPS, rng.hi) if (full_hi + 1) * ROLLUP_STEPS <= rng.hi else None
    )
    return MinMaxRollupPlan(rng, first, group, full_lo, full_hi, lower, upper)


def plan_downsample(method: Method, max_points: int, rng: StepRange, count: int | None) -> Plan:
    """The plan for a reducing method over `rng`, once the point count is known if needed.

    `count` may be None only when the rollup path applies (it never needs the count).
    """
    if method is Method.MINMAX and use_rollup(rng, minmax_buckets(max_points)):
        return rollup_plan(rng, minmax_buckets(max_points))
    if count is None:
        raise ValueError("the point count is needed for this plan")
    if count == 0:
        return EmptyPlan()
    if count <= max_points or method is Method.RAW:
        return RawPlan(rng)
    if method is Method.MINMAX:
        return MinMaxRawPlan(rng, raw_width(rng, minmax_buckets(max_points)))
    return LttbPlan(rng, max_points)
