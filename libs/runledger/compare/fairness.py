"""Group fairness from metrics logged per subgroup, as the SDK's `rl.log_fairness_metrics` names them.

Naming (any client may log it; the SDK's prefix defaults to `val/`, any prefix ending in
`/`, or none, is accepted):

    {prefix}fairness/{attribute}/{group}/{metric}            e.g. val/fairness/sex/female/tpr
    {prefix}fairness/{attribute}/demographic_parity_difference   (the logger's own gaps)
    {prefix}fairness/{attribute}/equalized_odds_difference

`attribute` and `group` are single key segments (no `/`). The SDK logs, per group,
`count`, `accuracy`, `selection_rate` (share predicted positive), `tpr` and `fpr`; any
other per-group metric is summarised the same way.

Per (prefix, attribute) of a run, over its groups (two at least), per metric (not `count`),
over the groups where the metric is logged:
- values per group; worst_group / best_group by the metric's direction (higher is better
  for accuracy, selection_rate, tpr, precision, recall, ...; lower for fpr, fnr, error,
  loss, ...; other names by `infer_direction`);
- max_difference = max - min; min_ratio = min / max (None unless max > 0 and min >= 0).
And, where the inputs exist (recomputed, fairlearn's definitions):
- demographic_parity_difference / _ratio: max - min and min / max of selection_rate;
- equalized_odds_difference: the larger of the tpr and fpr max - min; equalized_odds_ratio:
  the smaller of the tpr and fpr min / max ratios.
`logged` holds the gaps the client logged itself, for reference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from runledger.analysis.detection import infer_direction
from runledger.compare.model import RunData, finite

PER_GROUP = re.compile(
    r"^(?P<prefix>(?:[^/]+/)*?)fairness/(?P<attribute>[^/]+)/(?P<group>[^/]+)/(?P<metric>[^/]+)$"
)
GAPS = ("demographic_parity_difference", "equalized_odds_difference")
LOGGED_GAP = re.compile(
    r"^(?P<prefix>(?:[^/]+/)*?)fairness/(?P<attribute>[^/]+)/(?P<gap>" + "|".join(GAPS) + r")$"
)
HIGHER_IS_BETTER = frozenset(
    {"accuracy", "acc", "selection_rate", "tpr", "tnr", "recall", "precision", "f1", "auc",
     "specificity", "sensitivity", "balanced_accuracy", "ppv", "npv"}
)  # fmt: skip
LOWER_IS_BETTER = frozenset({"fpr", "fnr", "fdr", "for", "error", "error_rate", "loss", "log_loss"})
NOT_COMPARED = frozenset({"count", "support", "n"})


def metric_direction(metric: str) -> str:
    """'max' when a higher value of a per-group metric is better, else 'min'."""
    if metric in HIGHER_IS_BETTER:
        return "max"
    if metric in LOWER_IS_BETTER:
        return "min"
    return infer_direction(metric)


def parse(metrics: Mapping[str, float]) -> dict[tuple[str, str], dict[str, Any]]:
    """(prefix, attribute) -> {"groups": {group: {metric: value}}, "logged": {gap: value}}."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in metrics.items():
        if "fairness/" not in key or not finite(value):
            continue
        if m := LOGGED_GAP.match(key):
            entry = found.setdefault((m["prefix"], m["attribute"]), {"groups": {}, "logged": {}})
            entry["logged"][m["gap"]] = float(value)
        elif m := PER_GROUP.match(key):
            entry = found.setdefault((m["prefix"], m["attribute"]), {"groups": {}, "logged": {}})
            entry["groups"].setdefault(m["group"], {})[m["metric"]] = float(value)
    return found


def _gap(values: Mapping[str, float]) -> tuple[float, float | None]:
    low, high = min(values.values()), max(values.values())
    ratio = low / high if high > 0 and low >= 0 else None
    return high - low, ratio


def attribute_summary(groups: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Per-metric spread over the groups, and the parity / equalized-odds gaps."""
    names = sorted({m for g in groups.values() for m in g} - NOT_COMPARED)
    rows: list[dict[str, Any]] = []
    by_metric: dict[str, dict[str, float]] = {}
    for metric in names:
        values = {g: v[metric] for g, v in sorted(groups.items()) if metric in v}
        by_metric[metric] = values
        direction = metric_direction(metric)
        worst = (min if direction == "max" else max)(values, key=lambda g: values[g])
        best = (max if direction == "max" else min)(values, key=lambda g: values[g])
        difference, ratio = _gap(values)
        rows.append(
            {
                "metric": metric,
                "direction": direction,
                "values": values,
                "worst_group": worst,
                "best_group": best,
                "max_difference": difference,
                "min_ratio": ratio,
            }
        )
    out: dict[str, Any] = {"metrics": rows}
    if len(by_metric.get("selection_rate", {})) >= 2:
        out["demographic_parity_difference"], out["demographic_parity_ratio"] = _gap(
            by_metric["selection_rate"]
        )
    odds = [_gap(by_metric[m]) for m in ("tpr", "fpr") if len(by_metric.get(m, {})) >= 2]
    if odds:
        out["equalized_odds_difference"] = max(d for d, _ in odds)
        ratios = [r for _, r in odds if r is not None]
        out["equalized_odds_ratio"] = min(ratios) if len(ratios) == len(odds) else None
    return out


def run_fairness(run: RunData) -> list[dict[str, Any]]:
    """The fairness rows of one run: one per (prefix, attribute) with two groups or more."""
    rows = []
    for (prefix, attribute), entry in sorted(parse(run.metrics).items()):
        groups = entry["groups"]
        if len(groups) < 2:
            continue
        rows.append(
            {
                "prefix": prefix,
                "attribute": attribute,
                "groups": groups,
                **attribute_summary(groups),
                "logged": entry["logged"],
            }
        )
    return rows


def fairness(runs: Sequence[RunData]) -> dict[str, Any]:
    """The fairness section: per run, per sensitive attribute."""
    return {"runs": [{"run_id": r.run_id, "attributes": rows} for r in runs if (rows := run_fairness(r))]}
