"""Seed stability: runs whose params are equal but for the seed, grouped, and each metric's
spread across them.

A configuration is the run's params without the seed params (`seed`, what
`rl.seed_everything` logs, by default) and without any param named in `ignore_params`
(run-specific noise such as output directories). Runs with equal configurations form one
group; a group of fewer than `min_runs` runs is not summarised.

Per group and metric, over the runs' latest finite values x_1..x_n:
- mean; std: the sample standard deviation (ddof=1);
- cv (coefficient of variation) = std / |mean| (None when mean = 0);
- a two-sided t confidence interval for the mean: mean -/+ t_{(1+c)/2, n-1} * std / sqrt(n),
  c = `confidence` (default 0.95);
- unstable when cv > `cv_threshold` (default 0.1). A configuration is unstable when any of
  its metrics is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

from runledger.compare.model import RunData, finite

DEFAULT_SEED_PARAMS = ("seed",)


@dataclass(frozen=True, slots=True)
class Summary:
    """Spread of one metric over n runs."""

    n: int
    mean: float
    std: float | None
    cv: float | None
    ci_low: float | None
    ci_high: float | None


def summarise(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std, CV and the t-interval of the mean of `values` (finite, n >= 1)."""
    x = np.asarray(list(values), dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, None, None, None, None)
    std = float(x.std(ddof=1))
    cv = std / abs(mean) if mean != 0 else None
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, cv, mean - half, mean + half)


def configuration(params: Mapping[str, str], ignored: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """The run's configuration: its params but the ignored ones, in key order."""
    return tuple(sorted((k, v) for k, v in params.items() if k not in ignored))


def stability(
    runs: Sequence[RunData],
    metrics: Sequence[str],
    *,
    seed_params: Sequence[str] = DEFAULT_SEED_PARAMS,
    ignore_params: Sequence[str] = (),
    confidence: float = 0.95,
    cv_threshold: float = 0.1,
    min_runs: int = 2,
) -> dict[str, Any]:
    """The stability section: a row per configuration run with several seeds."""
    ignored = frozenset(seed_params) | frozenset(ignore_params)
    groups: dict[tuple[tuple[str, str], ...], list[RunData]] = {}
    for run in runs:
        groups.setdefault(configuration(run.params, ignored), []).append(run)
    out: list[dict[str, Any]] = []
    singles = 0
    for config, members in groups.items():
        if len(members) < min_runs:
            singles += 1
            continue
        rows: list[dict[str, Any]] = []
        for metric in metrics:
            values = [r.metrics[metric] for r in members if finite(r.metrics.get(metric))]
            if len(values) < min_runs:
                continue
            s = summarise(values, confidence)
            unstable = s.cv is not None and s.cv > cv_threshold
            rows.append(
                {
                    "metric": metric,
                    "n": s.n,
                    "mean": s.mean,
                    "std": s.std,
                    "cv": s.cv,
                    "ci_low": s.ci_low,
                    "ci_high": s.ci_high,
                    "unstable": unstable,
                }
            )
        seeds = sorted({r.params[k] for r in members for k in seed_params if k in r.params})
        out.append(
            {
                "configuration": dict(config),
                "run_ids": [r.run_id for r in members],
                "seeds": seeds,
                "n": len(members),
                "metrics": rows,
                "unstable": any(r["unstable"] for r in rows),
                "unstable_metrics": [r["metric"] for r in rows if r["unstable"]],
            }
        )
    out.sort(key=lambda g: (-g["n"], sorted(g["configuration"].items())))
    return {
        "seed_params": list(seed_params),
        "ignored_params": sorted(ignored - frozenset(seed_params)),
        "confidence": confidence,
        "cv_threshold": cv_threshold,
        "configurations": out,
        "single_run_configurations": singles,
    }
