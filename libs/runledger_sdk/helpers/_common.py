"""What the metric helpers share: input conversion, key segments, sklearn, logging."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from runledger_sdk.fluent import log_metrics

if TYPE_CHECKING:
    from runledger_sdk.run import Run

METRICS_EXTRA_HINT = "pip install 'runledger[metrics]' (or pip install scikit-learn)"

# A key may hold letters, digits, '_', '-', '.', ' ', ':' and '/' (runledger.events.models);
# a segment made of a label or a group value must not hold '/' either.
_NOT_SEGMENT = re.compile(r"[^\w.\- :]")


def sklearn_metrics(what: str) -> ModuleType:
    """`sklearn.metrics`, imported on first use; ImportError naming the extra without it."""
    try:
        return importlib.import_module("sklearn.metrics")
    except ImportError as exc:
        raise ImportError(
            f"{what} needs scikit-learn, the SDK's `metrics` extra: {METRICS_EXTRA_HINT}"
        ) from exc


def to_array(values: Any, name: str) -> npt.NDArray[Any]:
    """`values` (numpy array, list, pandas Series/DataFrame, ...) as a numpy array.

    pandas objects are taken by position: their index is not used for alignment.
    """
    if values is None:
        raise ValueError(f"{name} is required")
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} cannot be read as an array: {exc}") from None


def vector(values: Any, name: str) -> npt.NDArray[Any]:
    """A non-empty 1-D array (a single column, shape (n, 1), is flattened)."""
    array = to_array(values, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def same_length(**arrays: npt.NDArray[Any]) -> int:
    """The common number of rows; ValueError naming each length when they differ."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have one row per sample: {listed}")
    return next(iter(lengths.values()))


def factorize(values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[np.intp]]:
    """(sorted distinct values, code of each value); mixed, unorderable values keep first-seen order."""
    flat = values.reshape(-1)
    try:
        uniques, codes = np.unique(flat, return_inverse=True)
    except TypeError:  # e.g. strings mixed with None or NaN in an object array
        seen: dict[Any, int] = {}
        codes = np.fromiter(
            (seen.setdefault(v, len(seen)) for v in flat.tolist()), dtype=np.intp, count=flat.size
        )
        uniques = np.empty(len(seen), dtype=object)
        uniques[:] = list(seen)
    return uniques, codes.reshape(-1).astype(np.intp, copy=False)


def _kind(array: npt.NDArray[Any]) -> str:
    return "number" if array.dtype.kind in "biuf" else "text" if array.dtype.kind in "US" else "object"


def concat(first: npt.NDArray[Any], second: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """`first` then `second`, as objects when their kinds differ (numpy would turn 1 into '1')
    or when numpy would turn their integers into floats (int64 with uint64)."""
    if not len(second):  # an empty side takes the other's dtype
        second = second.astype(first.dtype)
    elif not len(first):
        first = first.astype(second.dtype)
    integers = first.dtype.kind in "biu" and second.dtype.kind in "biu"
    if (
        _kind(first) != _kind(second)
        or _kind(first) == "object"
        or (integers and np.result_type(first, second).kind == "f")
    ):
        first, second = first.astype(object), second.astype(object)
    return np.concatenate([first, second])


def segment(value: Any) -> str:
    """`value` as one segment of a metric key: characters a key cannot hold become '_'."""
    text = _NOT_SEGMENT.sub("_", str(value))
    return "_" if text in ("", ".", "..") else text


def segments(values: npt.NDArray[Any] | list[Any], what: str) -> list[str]:
    """The key segment of each value; ValueError when two values would share one."""
    out = [segment(v) for v in values]
    if len(set(out)) != len(out):
        seen: dict[str, Any] = {}
        for value, text in zip(values, out, strict=True):
            if text in seen:
                raise ValueError(
                    f"{what} {seen[text]!r} and {value!r} give the same metric key segment {text!r}:"
                    " rename one (keys hold letters, digits, '_', '-', '.', ' ' and ':')"
                )
            seen[text] = value
    return out


def emit(metrics: Mapping[str, float], step: SupportsIndex | None, run: Run | None) -> None:
    """Log `metrics` to `run`, else to the active run (started when there is none)."""
    if run is not None:
        run.log_metrics(metrics, step)
    else:
        log_metrics(metrics, step)
