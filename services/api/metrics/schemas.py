"""Response shapes of the metric routes (the history ones are documented, not validated:
they are rendered straight from Arrow for speed)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from services.api.serialization import MetricValue


class HistoryFormat(StrEnum):
    """Wire format of a history answer."""

    JSON = "json"
    ARROW = "arrow"


class HistoryShape(StrEnum):
    """Layout of a JSON history answer."""

    COLUMNAR = "columnar"
    POINTS = "points"


class MetricSummary(BaseModel):
    """A metric key of a run with its latest point (max by step, timestamp, value)."""

    key: str
    value: MetricValue = Field(description='A number, or "NaN" / "Infinity" / "-Infinity".')
    step: int
    timestamp: int = Field(description="Milliseconds since the epoch.")


class MetricKeys(BaseModel):
    """Every metric of a run."""

    run_id: str
    metrics: list[MetricSummary]


class _HistoryBase(BaseModel):
    key: str
    method: str = Field(description="The method that produced the points: raw, minmax or lttb.")
    downsampled: bool = Field(
        description="False guarantees every point of the range is present; true means a reduction."
    )


class ColumnarHistory(_HistoryBase):
    """shape=columnar (default): one array per column, point i = (steps[i], timestamps[i], values[i])."""

    steps: list[int]
    timestamps: list[int | None] | None = Field(
        description="Milliseconds since the epoch; null (the whole field) for minmax answers served from "
        "the step rollup, which keeps steps and values but not timestamps."
    )
    values: list[float | str] = Field(description='Numbers, or "NaN" / "Infinity" / "-Infinity".')


class HistoryPoint(BaseModel):
    """One point of shape=points."""

    step: int
    timestamp: int | None = Field(description="Milliseconds since the epoch; null in rollup minmax answers.")
    value: float | str


class PointsHistory(_HistoryBase):
    """shape=points: one object per point (about twice the bytes of columnar)."""

    points: list[HistoryPoint]
