"""Metric helpers: compute a family of evaluation metrics and log them in one call.

    rl.log_classification_metrics(y_true, y_pred, y_score)      # accuracy, P/R/F1, ROC-AUC, confusion
    rl.log_regression_metrics(y_true, y_pred)                   # MAE, MSE, RMSE, R², explained variance
    rl.log_ranking_metrics(ranked, relevant, k=(1, 5, 10))      # hit rate, NDCG, MAP, P, R at K
    rl.log_fairness_metrics(y_true, y_pred, df["sex"])          # per-group rates, parity gaps

Each logs to the active run (or `run=`), under `prefix` (default "val/") at `step`, and
returns the dict it logged. Inputs: numpy arrays, lists, or pandas Series (pandas is not
required). Classification, regression and ranking from a score matrix use scikit-learn,
the `metrics` extra (`pip install 'runledger[metrics]'`), imported on first use; ranking
from lists and fairness are plain numpy.
"""

from runledger_sdk.helpers.classification import ClassificationMetrics, log_classification_metrics
from runledger_sdk.helpers.fairness import log_fairness_metrics
from runledger_sdk.helpers.ranking import log_ranking_metrics
from runledger_sdk.helpers.regression import log_regression_metrics

__all__ = [
    "ClassificationMetrics",
    "log_classification_metrics",
    "log_fairness_metrics",
    "log_ranking_metrics",
    "log_regression_metrics",
]
