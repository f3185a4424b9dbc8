"""JSON conventions shared by the routes: non-finite floats travel as strings.

JSON has no NaN or Infinity; MLflow (and RunLedger's event codec) write them as
"NaN", "Infinity" and "-Infinity". orjson would write null, so values that may
be non-finite go through these helpers.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import PlainSerializer


def json_float(value: float) -> float | str:
    """A float as JSON can carry it: itself, or "NaN" / "Infinity" / "-Infinity"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


# A float field that serializes non-finite values as MLflow's strings.
MetricValue = Annotated[float, PlainSerializer(json_float, return_type=Any, when_used="json")]


def json_floats(values: npt.NDArray[np.float64]) -> Any:
    """A float array ready for orjson: the array itself when finite (one C-level dump),
    else a list with the non-finite entries replaced (only those are touched in Python)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    out: list[Any] = values.tolist()
    for i in np.flatnonzero(~finite).tolist():
        out[i] = json_float(out[i])
    return out
