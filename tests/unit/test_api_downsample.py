"""Downsampling plans: bucket arithmetic that bounds the size of a history answer."""

from __future__ import annotations

import random

import pytest

from runledger.stores.clickhouse.tables import ROLLUP_STEPS
from services.api.errors import InvalidParameter
from services.api.metrics.downsample import (
    INT64_MAX,
    INT64_MIN,
    EmptyPlan,
    LttbPlan,
    Method,
    MinMaxRawPlan,
    MinMaxRollupPlan,
    RawPlan,
    StepRange,
    clamp,
    minmax_buckets,
    plan_downsample,
    raw_width,
    requested_range,
    rollup_plan,
    use_rollup,
)
from services.api.metrics.service import HistoryQuery


def test_minmax_answers_at_most_max_points() -> None:
    assert minmax_buckets(1000) == 500
    assert minmax_buckets(3) == 1
    assert minmax_buckets(2) == 1


def test_raw_width_covers_the_range_in_at_most_n_buckets() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        lo = rng.randint(-(10**6), 10**6)
        rng_ = StepRange(lo, lo + rng.randint(0, 10**6))
        buckets = rng.randint(1, 5000)
        width = raw_width(rng_, buckets)
        groups = (rng_.hi - rng_.lo) // width + 1  # intDiv(step - lo, width) for step in range
        assert groups <= buckets
        assert width == 1 or (rng_.span + width - 2) // (width - 1) > buckets  # no smaller width would do


def test_rollup_plan_groups_fit_and_edges_are_exact() -> None:
    rng = random.Random(11)
    for _ in range(2000):
        lo = rng.randint(0, 10**7)
        buckets = rng.randint(1, 2000)
        span = rng.randint(4 * ROLLUP_STEPS * buckets, 4 * ROLLUP_STEPS * buckets * 50)
        r = StepRange(lo, lo + span - 1)
        assert use_rollup(r, buckets)
        plan = rollup_plan(r, buckets)
        first, last = r.lo // ROLLUP_STEPS, r.hi // ROLLUP_STEPS
        groups = (last - first) // plan.group + 1
        assert groups <= buckets
        # The whole buckets plus the raw edges cover the range exactly, without overlap.
        covered = (plan.full_hi - plan.full_lo + 1) * ROLLUP_STEPS
        for edge in (plan.lower_edge, plan.upper_edge):
            if edge is not None:
                assert edge.lo <= edge.hi and edge.span < ROLLUP_STEPS
                covered += edge.span
        assert covered == r.span
        assert plan.full_lo * ROLLUP_STEPS >= r.lo and (plan.full_hi + 1) * ROLLUP_STEPS - 1 <= r.hi
        if plan.lower_edge is not None:
            assert plan.lower_edge.lo == r.lo and plan.lower_edge.hi == plan.full_lo * ROLLUP_STEPS - 1
        if plan.upper_edge is not None:
            assert plan.upper_edge.hi == r.hi and plan.upper_edge.lo == (plan.full_hi + 1) * ROLLUP_STEPS


def test_aligned_range_has_no_edges() -> None:
    plan = rollup_plan(StepRange(0, 64 * 1000 - 1), 10)
    assert plan.lower_edge is None and plan.upper_edge is None
    assert (plan.full_lo, plan.full_hi, plan.group) == (0, 999, 100)


def test_rollup_needs_four_rollup_buckets_per_answer_bucket_and_no_negative_steps() -> None:
    assert use_rollup(StepRange(0, 4 * 64 * 500 - 1), 500)
    assert not use_rollup(StepRange(0, 4 * 64 * 500 - 2), 500)
    assert not use_rollup(StepRange(-1, 10**9), 500)


def test_plan_choice() -> None:
    long = StepRange(0, 999_999)
    assert isinstance(plan_downsample(Method.MINMAX, 1000, long, None), MinMaxRollupPlan)
    assert isinstance(plan_downsample(Method.MINMAX, 100_000, long, 1_000_000), MinMaxRawPlan)
    assert isinstance(plan_downsample(Method.LTTB, 1000, long, 1_000_000), LttbPlan)
    assert isinstance(plan_downsample(Method.LTTB, 1000, long, 1000), RawPlan)  # short enough: all points
    assert isinstance(plan_downsample(Method.MINMAX, 1000, StepRange(0, 99), 0), EmptyPlan)
    with pytest.raises(ValueError):
        plan_downsample(Method.LTTB, 1000, long, None)


def test_clamp_and_requested_range() -> None:
    assert requested_range(None, None) == StepRange(INT64_MIN, INT64_MAX)
    assert clamp(StepRange(10, 20), StepRange(0, 15)) == StepRange(10, 15)
    assert clamp(StepRange(10, 20), StepRange(30, 40)) is None
    assert clamp(StepRange(10, 20), None) is None


def test_history_query_resolution() -> None:
    assert HistoryQuery(None, None, None, None).resolved() == (Method.RAW, 1000)
    assert HistoryQuery(None, None, 500, None).resolved() == (Method.MINMAX, 500)
    assert HistoryQuery(None, None, None, Method.LTTB).resolved() == (Method.LTTB, 1000)
    with pytest.raises(InvalidParameter, match="max_points"):
        HistoryQuery(None, None, 500, Method.RAW).resolved()
    with pytest.raises(InvalidParameter, match="start_step"):
        HistoryQuery(10, 5, None, None).resolved()
