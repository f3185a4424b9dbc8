"""The columns of a `run.metrics_logged` event, as numpy arrays, and their two wire forms.

On the wire each numeric column is either a JSON array (readable, what curl users
send) or a base64 string of little-endian binary (what the SDK sends: ~4x cheaper
to decode than JSON numbers, exact, and NaN/Infinity need no special casing).
Both are validated here with numpy, never point by point in Python, because this
is the hottest path of the projector.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pybase64
from pydantic import TypeAdapter, ValidationError

from runledger.events.models import Key, NonFinite

MAX_POINTS_PER_EVENT = 1_000_000

_DTYPES: dict[str, np.dtype[Any]] = {
    "key_index": np.dtype("<i4"),
    "values": np.dtype("<f8"),
    "steps": np.dtype("<i8"),
    "timestamps": np.dtype("<i8"),
}
_KEYS = TypeAdapter(list[Key])
_VALUES_WITH_TEXT = TypeAdapter(list[float | NonFinite])


class InvalidColumns(ValueError):
    """A metric batch whose columns do not form valid points."""


@dataclass(frozen=True, slots=True, eq=False)
class MetricColumns:
    """Point i is (keys[key_index[i]], values[i], steps[i], timestamps[i] in ms)."""

    keys: list[str]
    key_index: npt.NDArray[np.int32]
    values: npt.NDArray[np.float64]
    steps: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.values)


def pack(array: npt.NDArray[Any], column: str) -> str:
    """A column as base64 of its little-endian binary."""
    return pybase64.b64encode(np.ascontiguousarray(array, dtype=_DTYPES[column]).tobytes()).decode("ascii")


def _unpack(raw: Any, column: str) -> npt.NDArray[Any]:
    dtype = _DTYPES[column]
    if isinstance(raw, str):
        try:
            # pybase64 (SIMD) validates and decodes ~15x faster than the standard library,
            # whose decoding was the largest cost of the projector after this change.
            data = pybase64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidColumns(f"{column}: not valid base64") from None
        if len(data) % dtype.itemsize:
            raise InvalidColumns(f"{column}: {len(data)} bytes is not a whole number of {dtype.name}")
        return np.frombuffer(data, dtype=dtype)
    if not isinstance(raw, list):
        raise InvalidColumns(f"{column}: expected a JSON array or a base64 string")
    try:
        array = np.asarray(raw)
    except (ValueError, TypeError):
        raise InvalidColumns(f"{column}: not a flat array of numbers") from None
    if array.ndim != 1 and len(raw) > 0:
        raise InvalidColumns(f"{column}: not a flat array of numbers")
    kind = array.dtype.kind
    if column == "values":
        if kind in "USO":  # "NaN"/"Infinity" among the numbers: the strict, slow path
            try:
                return np.asarray(_VALUES_WITH_TEXT.validate_python(raw), dtype=dtype)
            except ValidationError:
                raise InvalidColumns('values: numbers, "NaN", "Infinity" or "-Infinity" only') from None
        if kind not in "fiu" and len(raw) > 0:
            raise InvalidColumns("values: numbers only")
        return array.astype(dtype)
    if len(raw) == 0:
        return np.empty(0, dtype=dtype)
    if kind not in "iu":
        raise InvalidColumns(f"{column}: integers only")
    info = np.iinfo(dtype)
    if int(array.min()) < info.min or int(array.max()) > info.max:
        raise InvalidColumns(f"{column}: out of range for {dtype.name}")
    return array.astype(dtype)


def parse(payload: Any) -> MetricColumns:
    """Validate a metrics payload (either wire form) into numpy columns."""
    if not isinstance(payload, dict):
        raise InvalidColumns("payload is not an object")
    try:
        keys = _KEYS.validate_python(payload.get("keys"))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise InvalidColumns(f"keys: {err['msg']}") from None
    if not keys:
        raise InvalidColumns("keys: at least one key")
    columns = {name: _unpack(payload.get(name), name) for name in _DTYPES}
    n = len(columns["values"])
    if any(len(c) != n for c in columns.values()):
        raise InvalidColumns("key_index, values, steps and timestamps must have the same length")
    if n == 0:
        raise InvalidColumns("a metric batch holds at least one point")
    if n > MAX_POINTS_PER_EVENT:
        raise InvalidColumns(f"{n} points in one event; at most {MAX_POINTS_PER_EVENT}")
    key_index = columns["key_index"]
    if int(key_index.min()) < 0 or int(key_index.max()) >= len(keys):
        raise InvalidColumns("key_index points outside keys")
    return MetricColumns(
        keys=keys,
        key_index=key_index,
        values=columns["values"],
        steps=columns["steps"],
        timestamps=columns["timestamps"],
    )
