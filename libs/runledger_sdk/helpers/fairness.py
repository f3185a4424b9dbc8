"""Group fairness of a binary classifier in one call: per-group rates and the gaps between groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from runledger_sdk.helpers._common import concat, emit, factorize, same_length, segment, segments, vector

if TYPE_CHECKING:
    from runledger_sdk.run import Run


def log_fairness_metrics(
    y_true: Any,
    y_pred: Any,
    sensitive: Any,
    *,
    attribute: str | None = None,
    pos_label: Any = 1,
    prefix: str = "val/",
    step: SupportsIndex | None = None,
    run: Run | None = None,
) -> dict[str, float]:
    """Per-group metrics of a binary classifier and the gaps between the groups, logged to the
    active run (or `run`).

    `sensitive` holds each sample's value of the sensitive attribute (its groups); `attribute`
    names it (default: the name of a pandas Series). For each group, logged as
    `{prefix}fairness/{attribute}/{group}/{metric}`: `count`, `accuracy`, `selection_rate`
    (share predicted `pos_label`), `tpr` (true-positive rate; left out for a group without
    positives) and `fpr` (false-positive rate; left out for a group without negatives). And
    `{prefix}fairness/{attribute}/demographic_parity_difference` (max - min selection rate)
    and `.../equalized_odds_difference` (the larger of the TPR gap and the FPR gap, over the
    groups where each is defined; as fairlearn defines them). Outcomes must be binary, one
    of them `pos_label`. Plain numpy, no extra needed. Returns what was logged.
    """
    truth = vector(y_true, "y_true")
    pred = vector(y_pred, "y_pred")
    groups = vector(sensitive, "sensitive")
    n = same_length(y_true=truth, y_pred=pred, sensitive=groups)
    if attribute is None:
        attribute = getattr(sensitive, "name", None)
        if not isinstance(attribute, str) or not attribute:
            raise ValueError("name the sensitive attribute: attribute='sex' (or pass a named pandas Series)")
    outcomes, codes = factorize(concat(truth, pred))
    if len(outcomes) > 2:
        raise ValueError(
            f"fairness metrics need binary outcomes; y_true and y_pred hold {len(outcomes)} values"
        )
    matches = [i for i, value in enumerate(outcomes.tolist()) if value == pos_label]
    if not matches:
        raise ValueError(
            f"pos_label {pos_label!r} occurs in neither y_true nor y_pred (values: {outcomes.tolist()}):"
            " pass pos_label="
        )
    actual, predicted = codes[:n] == matches[0], codes[n:] == matches[0]

    names, group_codes = factorize(groups)
    labels = segments(names.tolist(), "groups")

    def per_group(weights: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        return np.bincount(group_codes, weights=weights, minlength=len(names)).astype(np.float64)

    count = np.bincount(group_codes, minlength=len(names)).astype(np.float64)
    positives = per_group(actual)
    negatives = count - positives
    with np.errstate(divide="ignore", invalid="ignore"):  # a group without positives: tpr is NaN
        rates = {
            "accuracy": per_group(actual == predicted) / count,
            "selection_rate": per_group(predicted) / count,
            "tpr": per_group(actual & predicted) / positives,
            "fpr": per_group(~actual & predicted) / negatives,
        }
    base = f"{prefix}fairness/{segment(attribute)}"
    metrics: dict[str, float] = {}
    for g, label in enumerate(labels):
        metrics[f"{base}/{label}/count"] = float(count[g])
        for metric, values in rates.items():
            if not np.isnan(values[g]):
                metrics[f"{base}/{label}/{metric}"] = float(values[g])
    metrics[f"{base}/demographic_parity_difference"] = _gap(rates["selection_rate"])
    gaps = [_gap(rates[r]) for r in ("tpr", "fpr") if not np.isnan(rates[r]).all()]
    if gaps:
        metrics[f"{base}/equalized_odds_difference"] = max(gaps)
    emit(metrics, step, run)
    return metrics


def _gap(values: npt.NDArray[np.float64]) -> float:
    """max - min over the groups where the rate is defined."""
    return float(np.nanmax(values) - np.nanmin(values))
