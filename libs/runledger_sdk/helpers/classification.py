"""Classification metrics in one call: accuracy, P/R/F1, ROC-AUC, confusion matrix (scikit-learn)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from runledger_sdk.helpers._common import emit, same_length, segments, sklearn_metrics, to_array, vector

if TYPE_CHECKING:
    from runledger_sdk.run import Run

# Up to this many classes, each confusion-matrix cell is logged as a metric.
MAX_CONFUSION_LABELS = 20
AVERAGES = ("macro", "micro", "weighted")


class ClassificationMetrics(dict[str, float]):
    """The metrics that were logged (key -> value), plus `confusion_matrix` and its `labels`.

    `confusion_matrix[i, j]` counts samples of class `labels[i]` predicted as `labels[j]`.
    """

    def __init__(
        self, metrics: dict[str, float], confusion_matrix: npt.NDArray[Any], labels: list[Any]
    ) -> None:
        super().__init__(metrics)
        self.confusion_matrix = confusion_matrix
        self.labels = labels


def log_classification_metrics(
    y_true: Any,
    y_pred: Any,
    y_score: Any = None,
    *,
    prefix: str = "val/",
    step: SupportsIndex | None = None,
    labels: Any = None,
    run: Run | None = None,
) -> ClassificationMetrics:
    """Compute classification metrics with scikit-learn and log them to the active run (or `run`).

    Logged (keys after `prefix`): `accuracy`; `precision_{avg}`, `recall_{avg}`, `f1_{avg}` for
    avg in macro, micro and weighted (a class never predicted scores 0, without a warning);
    `roc_auc` when `y_score` is given; and with at most 20 classes, each confusion-matrix cell
    as `confusion/{true}/{pred}` (a count). The matrix is also returned, as `.confusion_matrix`
    of the result: it becomes a table artifact once the artifact store lands.

    `labels`: the classes to report on, in this order (default: the sorted classes found in
    `y_true` and `y_pred`). `y_score`: for two classes, the score of the positive class
    `labels[1]` (1-D, or 2-D with one column per class as `predict_proba` gives); for more,
    shape (n_samples, n_classes) with columns in `labels` order, giving the one-vs-rest
    macro ROC-AUC. ROC-AUC is left out, with a warning, when a class has no sample in
    `y_true` (or every sample is of it). Inputs: numpy arrays, lists or pandas Series (taken
    by position). Needs the `metrics` extra (scikit-learn). Returns what was logged.
    """
    skm = sklearn_metrics("log_classification_metrics")
    truth = vector(y_true, "y_true")
    pred = vector(y_pred, "y_pred")
    same_length(y_true=truth, y_pred=pred)
    if labels is None:
        from sklearn.utils.multiclass import unique_labels

        classes = np.asarray(unique_labels(truth, pred))
    else:
        classes = vector(labels, "labels")
        if len(np.unique(classes)) != len(classes):
            raise ValueError("labels must not repeat a class")
        if not np.isin(truth, classes).any():
            raise ValueError("none of the labels occurs in y_true")
    label_list = classes.tolist()

    metrics: dict[str, float] = {f"{prefix}accuracy": float(skm.accuracy_score(truth, pred))}
    for average in AVERAGES:
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            truth, pred, labels=label_list, average=average, zero_division=0
        )
        metrics[f"{prefix}precision_{average}"] = float(precision)
        metrics[f"{prefix}recall_{average}"] = float(recall)
        metrics[f"{prefix}f1_{average}"] = float(f1)
    if y_score is not None:
        auc = _roc_auc(skm, truth, to_array(y_score, "y_score"), classes)
        if auc is not None:
            metrics[f"{prefix}roc_auc"] = auc

    matrix = np.asarray(skm.confusion_matrix(truth, pred, labels=label_list))
    if len(label_list) <= MAX_CONFUSION_LABELS:
        names = segments(label_list, "labels")
        for i, true_name in enumerate(names):
            for j, pred_name in enumerate(names):
                metrics[f"{prefix}confusion/{true_name}/{pred_name}"] = float(matrix[i, j])
    emit(metrics, step, run)
    return ClassificationMetrics(metrics, matrix, label_list)


def _roc_auc(
    skm: Any, truth: npt.NDArray[Any], score: npt.NDArray[Any], classes: npt.NDArray[Any]
) -> float | None:
    """Binary or one-vs-rest macro ROC-AUC; None (with a warning) where it is undefined."""
    if len(score) != len(truth):
        raise ValueError(f"y_score has {len(score)} rows but y_true has {len(truth)} samples")
    n_classes = len(classes)
    if n_classes == 2:
        if score.ndim == 2 and score.shape[1] in (1, 2):
            score = score[:, -1]  # predict_proba: the column of the positive class, labels[1]
        if score.ndim != 1:
            raise ValueError(
                "y_score for two classes must be the positive class's score (1-D) or have shape"
                f" (n_samples, 2); got {score.shape}"
            )
    elif n_classes > 2 and (score.ndim != 2 or score.shape[1] != n_classes):
        raise ValueError(
            f"y_score for {n_classes} classes must have shape (n_samples, {n_classes}), one column per"
            f" class in labels order; got {score.shape}"
        )
    # One indicator column per class scored: binary its positive class, multiclass one-vs-rest.
    scored = classes[1:] if n_classes == 2 else classes
    onehot = truth[:, None] == scored[None, :]
    positives = onehot.sum(axis=0).tolist()
    undefined = [c for c, n in zip(scored.tolist(), positives, strict=True) if n in (0, len(truth))]
    if n_classes < 2 or undefined:
        warnings.warn(
            "ROC-AUC is not defined for a class with no sample in y_true, or with every sample"
            f" ({undefined or classes.tolist()}): roc_auc is not logged",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if n_classes == 2:
        return float(skm.roc_auc_score(onehot[:, 0], score))
    return float(skm.roc_auc_score(onehot.astype(np.int8), score, average="macro"))
