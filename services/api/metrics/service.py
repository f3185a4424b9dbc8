"""Metric logic: which keys a run has, and one series' history at the size asked for."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from services.api.access import Access, readable_run
from services.api.errors import InvalidParameter
from services.api.metrics.downsample import (
    DEFAULT_MAX_POINTS,
    Method,
    Plan,
    RawPlan,
    StepRange,
    clamp,
    minmax_buckets,
    plan_downsample,
    requested_range,
    use_rollup,
)
from services.api.metrics.repository import MetricSeriesRepository
from services.api.metrics.schemas import MetricKeys, MetricSummary
from services.api.runs.repository import RunRepository


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What a history request asks for (validated ranges, method resolved)."""

    start_step: int | None
    end_step: int | None
    max_points: int | None
    method: Method | None

    def resolved(self) -> tuple[Method, int]:
        """The effective method and max_points: raw unless a reduction is asked for."""
        if self.start_step is not None and self.end_step is not None and self.start_step > self.end_step:
            raise InvalidParameter("start_step must not exceed end_step")
        method = self.method or (Method.MINMAX if self.max_points is not None else Method.RAW)
        if method is Method.RAW and self.max_points is not None:
            raise InvalidParameter(
                "max_points applies to minmax and lttb; page raw history with start_step/end_step"
            )
        return method, self.max_points or DEFAULT_MAX_POINTS


@dataclass(frozen=True, slots=True)
class SeriesAnswer:
    """How a history read will be served: the plan and the labels of the answer."""

    plan: Plan
    method: str
    downsampled: bool


class MetricService:
    """What the metric routes do, independent of HTTP."""

    def __init__(self, runs: RunRepository, series: MetricSeriesRepository, access: Access) -> None:
        """Read runs (existence, latest values) and series the caller may read."""
        self._runs = runs
        self._series = series
        self._access = access

    async def keys(self, run_id: str) -> MetricKeys:
        """Every metric key of a run with its latest point."""
        runs, _ = await self._require_run(run_id)
        latest = await runs.latest_metrics(run_id)
        return MetricKeys(
            run_id=run_id,
            metrics=[
                MetricSummary(key=k, value=m.value, step=m.step, timestamp=m.timestamp)
                for k, m in latest.items()
            ],
        )

    async def plan(self, run_id: str, key: str, query: HistoryQuery) -> SeriesAnswer:
        """Decide how to read a series: raw, minmax (rollup or raw) or lttb; binds this service to
        the tenant holding the run (the caller's, or the owner of a shared experiment)."""
        method, max_points = query.resolved()
        self._runs, self._series = await self._require_run(run_id)
        requested = requested_range(query.start_step, query.end_step)
        if method is Method.RAW:
            return SeriesAnswer(RawPlan(requested), Method.RAW.value, False)
        extent = await self._runs.step_extent(run_id, key)
        rng = clamp(requested, None if extent is None else StepRange(*extent))
        if rng is None:
            # The rollup knows no point here; raw still answers (it may hold non-finite points).
            return SeriesAnswer(RawPlan(requested), Method.RAW.value, False)
        count = None
        if not (method is Method.MINMAX and use_rollup(rng, minmax_buckets(max_points))):
            count = await self._series.count(run_id, key, rng)
        plan = plan_downsample(method, max_points, rng, count)
        if isinstance(plan, RawPlan):
            # Few enough points: all of them, over the whole requested range.
            return SeriesAnswer(RawPlan(requested), Method.RAW.value, False)
        return SeriesAnswer(plan, method.value, True)

    async def table(self, run_id: str, key: str, answer: SeriesAnswer) -> pa.Table:
        """The planned points as an Arrow table (step, timestamp, value)."""
        return await self._series.fetch(run_id, key, answer.plan)

    async def json_rows(self, run_id: str, key: str, answer: SeriesAnswer) -> bytes:
        """The planned points as the body of a JSON array of point objects."""
        return await self._series.fetch_json_rows(run_id, key, answer.plan)

    async def _require_run(self, run_id: str) -> tuple[RunRepository, MetricSeriesRepository]:
        """The repositories bound to the tenant holding the run; NotFound unless the caller may read it."""
        located, _ = await readable_run(self._access, self._runs, run_id)
        return self._runs.bound_to(located.tenant_id), self._series.bound_to(located.tenant_id)
