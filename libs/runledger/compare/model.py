"""The inputs of the comparison computations: what the API reads for each run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SeriesStat:
    """A metric series of a run summarised over all its finite points."""

    minimum: float
    maximum: float
    mean: float
    count: int


@dataclass(frozen=True, slots=True)
class RunData:
    """One run: its fields, params, latest metric values and (optionally) series summaries."""

    run_id: str
    experiment_id: str = ""
    name: str = ""
    status: str = ""
    start_time: int | None = None  # ms since the epoch
    end_time: int | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)  # latest value per key
    series: Mapping[str, SeriesStat] = field(default_factory=dict)  # min/max/mean over the run
    model_size_bytes: int | None = None


def finite(value: float | None) -> bool:
    """Whether `value` is a real, finite number."""
    return value is not None and math.isfinite(value)


def clean(value: float | None) -> float | None:
    """`value` when finite, else None (JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None
