"""Hyperparameter importance: which params explain a metric across an experiment's runs.

Method (scikit-learn; fANOVA's maintained implementations need pyrfr, which no longer
builds on current Pythons): a RandomForestRegressor (or GradientBoostingRegressor) is fit on
params -> metric in K-fold cross-validation (K = min(5, n // 2), shuffled, seeded), and on
each held-out fold `sklearn.inspection.permutation_importance` measures how much R^2 drops
when one param's column is shuffled (`n_repeats` times). A param's importance is the mean
drop over folds and repeats; its uncertainty the std of those drops and a t-interval over
the fold means. Params are ranked by the mean. `cv_r2` is the held-out R^2 of the fit: when
it is not above 0 the params do not predict the metric and the ranking means little
(`reliable` is False).

Encoding: a param whose values all parse as numbers is numeric (missing: the median);
any other is categorical, ordinal-coded in sorted order (missing: its own code); one column
per param, so its importance is the whole param's. Params with a single value, and
categorical ones with a distinct value per run (identifiers, paths), are left out and
listed in `excluded` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]

MIN_RUNS = 8
Model = Literal["random_forest", "gradient_boosting"]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def encode(
    params: Sequence[Mapping[str, str]], exclude: Sequence[str] = ()
) -> tuple[npt.NDArray[np.float64], list[str], dict[str, str], dict[str, str]]:
    """(X, column names, kind per column, excluded param -> reason) for the runs' params."""
    keys = sorted({k for p in params for k in p} - set(exclude))
    n = len(params)
    columns: list[npt.NDArray[np.float64]] = []
    names: list[str] = []
    kinds: dict[str, str] = {}
    excluded: dict[str, str] = {k: "excluded by the request" for k in exclude if any(k in p for p in params)}
    for key in keys:
        raw = [p.get(key) for p in params]
        present = [v for v in raw if v is not None]
        if len(set(present)) + (len(present) < n) <= 1:
            excluded[key] = "constant"
            continue
        numbers = [_number(v) for v in present]
        if all(x is not None for x in numbers):
            filled = [_number(v) if v is not None else None for v in raw]
            median = float(np.median([x for x in filled if x is not None]))
            columns.append(np.array([median if x is None else x for x in filled], dtype=np.float64))
            kinds[key] = "numeric"
        else:
            levels = sorted(set(present))
            if len(levels) == n:
                excluded[key] = "a distinct value per run (an identifier)"
                continue
            code = {v: float(i) for i, v in enumerate(levels)}
            columns.append(np.array([code[v] if v is not None else -1.0 for v in raw], dtype=np.float64))
            kinds[key] = "categorical"
        names.append(key)
    x = np.column_stack(columns) if columns else np.empty((n, 0), dtype=np.float64)
    return x, names, kinds, excluded


def _regressor(model: Model, seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    if model == "gradient_boosting":
        return GradientBoostingRegressor(random_state=seed)
    return RandomForestRegressor(n_estimators=200, min_samples_leaf=1, random_state=seed, n_jobs=1)


def hyperparameter_importance(
    params: Sequence[Mapping[str, str]],
    y: Sequence[float],
    *,
    exclude: Sequence[str] = ("seed",),
    model: Model = "random_forest",
    n_repeats: int = 10,
    confidence: float = 0.95,
    seed: int = 0,
    min_runs: int = MIN_RUNS,
) -> dict[str, Any]:
    """The ranked importances of the params for the metric values `y` (one per run)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    target = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(target)
    rows = [p for p, k in zip(params, keep, strict=True) if k]
    target = target[keep]
    n = len(rows)
    result: dict[str, Any] = {
        "method": f"permutation importance (R^2 drop) of a {model.replace('_', ' ')} regressor, K-fold CV",
        "model": model,
        "n_runs": n,
        "importances": [],
        "excluded": {},
        "cv_r2": None,
        "reliable": False,
    }
    if n < min_runs:
        result["note"] = f"needs at least {min_runs} runs with a finite value of the metric; found {n}"
        return result
    x, names, kinds, excluded = encode(rows, exclude)
    result["excluded"] = excluded
    if not names:
        result["note"] = "no param varies across these runs"
        return result
    if float(np.ptp(target)) == 0.0:
        result["note"] = "the metric has the same value in every run"
        return result
    folds = KFold(n_splits=min(5, n // 2), shuffle=True, random_state=seed)
    fold_means: list[npt.NDArray[np.float64]] = []
    drops: list[npt.NDArray[np.float64]] = []
    predicted = np.empty(n, dtype=np.float64)
    for train, test in folds.split(x):
        fitted = _regressor(model, seed).fit(x[train], target[train])
        predicted[test] = fitted.predict(x[test])
        if float(np.ptp(target[test])) == 0.0:
            continue  # R^2 is undefined on a constant fold
        pi = permutation_importance(
            fitted, x[test], target[test], scoring="r2", n_repeats=n_repeats, random_state=seed, n_jobs=1
        )
        fold_means.append(pi.importances_mean)
        drops.append(pi.importances)
    cv_r2 = float(r2_score(target, predicted))
    result["cv_r2"] = cv_r2
    result["reliable"] = cv_r2 > 0
    if not fold_means:
        result["note"] = "every held-out fold had a constant metric"
        return result
    means = np.vstack(fold_means)  # folds x params
    every = np.hstack(drops)  # params x (folds * repeats)
    k = means.shape[0]
    t = float(stats.t.ppf((1 + confidence) / 2, k - 1)) if k >= 2 else math.nan
    importances: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        mean = float(every[j].mean())
        half = t * float(means[:, j].std(ddof=1)) / math.sqrt(k) if k >= 2 else math.nan
        importances.append(
            {
                "param": name,
                "kind": kinds[name],
                "importance": mean,
                "std": float(every[j].std(ddof=1)) if every.shape[1] >= 2 else None,
                "ci_low": mean - half if math.isfinite(half) else None,
                "ci_high": mean + half if math.isfinite(half) else None,
            }
        )
    importances.sort(key=lambda r: (-r["importance"], r["param"]))
    total = sum(max(r["importance"], 0.0) for r in importances)
    for rank, row in enumerate(importances, 1):
        row["rank"] = rank
        row["share"] = max(row["importance"], 0.0) / total if total > 0 else None
    result["importances"] = importances
    result["folds"] = k
    result["n_repeats"] = n_repeats
    result["confidence"] = confidence
    return result
