"""Regression metrics in one call: MAE, MSE, RMSE, R², explained variance (scikit-learn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from runledger_sdk.helpers._common import emit, same_length, sklearn_metrics, to_array

if TYPE_CHECKING:
    from runledger_sdk.run import Run


def _targets(values: Any, name: str) -> npt.NDArray[np.float64]:
    array = to_array(values, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D, or 2-D (n_samples, n_outputs); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    try:
        numbers = array.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers") from None
    if not np.isfinite(numbers).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return numbers


def log_regression_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    prefix: str = "val/",
    step: SupportsIndex | None = None,
    run: Run | None = None,
) -> dict[str, float]:
    """Compute regression metrics with scikit-learn and log them to the active run (or `run`).

    Logged (keys after `prefix`): `mae`, `mse`, `rmse`, `r2`, `explained_variance`. Targets
    of shape (n_samples, n_outputs) give each metric's mean over the outputs (sklearn's
    "uniform_average"; `rmse` is the mean of the per-output RMSEs). A constant `y_true`
    gives sklearn's r2/explained variance: 1.0 when predicted exactly, else 0.0. Inputs:
    numpy arrays, lists or pandas Series/DataFrames (taken by position). Needs the
    `metrics` extra (scikit-learn). Returns what was logged.
    """
    skm = sklearn_metrics("log_regression_metrics")
    truth = _targets(y_true, "y_true")
    pred = _targets(y_pred, "y_pred")
    same_length(y_true=truth, y_pred=pred)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape: {truth.shape} and {pred.shape}")
    mse = np.asarray(skm.mean_squared_error(truth, pred, multioutput="raw_values"), dtype=np.float64)
    metrics = {
        f"{prefix}mae": float(skm.mean_absolute_error(truth, pred)),
        f"{prefix}mse": float(mse.mean()),
        f"{prefix}rmse": float(np.sqrt(mse).mean()),
        f"{prefix}r2": float(skm.r2_score(truth, pred)),
        f"{prefix}explained_variance": float(skm.explained_variance_score(truth, pred)),
    }
    emit(metrics, step, run)
    return metrics
