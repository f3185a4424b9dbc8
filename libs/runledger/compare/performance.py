"""Metrics side by side: one value per compared entity (a run, or a group's mean), deltas
against the baseline entity, and the best entity per metric marked.

A group's value is the mean of its runs' latest values (runs without the metric, or with a
non-finite value, are left out and counted in `missing`); its `std` is the sample standard
deviation (ddof=1, None below two values). The direction of a metric (`min`: lower is
better) comes from the request, else from its name (`runledger.analysis.detection.infer_direction`).
`delta` = value - baseline value; `relative_delta` = delta / |baseline value| (None when the
baseline value is 0); `improvement` is the delta signed so that positive is better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from runledger.analysis.detection import infer_direction
from runledger.compare.model import RunData, clean, finite

Direction = Literal["min", "max"]


@dataclass(frozen=True, slots=True)
class Entity:
    """What one column of a comparison stands for: one run, or a named group of runs."""

    name: str
    kind: Literal["run", "group"]
    run_ids: tuple[str, ...]


def direction_of(metric: str, directions: Mapping[str, str]) -> Direction:
    """The request's direction for `metric`, else the one its name suggests."""
    given = directions.get(metric)
    if given in ("min", "max"):
        return given  # type: ignore[return-value]
    return infer_direction(metric)


def default_metrics(runs: Sequence[RunData], limit: int = 200) -> list[str]:
    """Every metric key the runs logged, but system metrics and per-subgroup fairness keys."""
    keys = {
        k
        for r in runs
        for k in r.metrics
        if not k.startswith("system/") and "fairness/" not in k and not k.startswith("fairness")
    }
    return sorted(keys)[:limit]


def _entity_value(entity: Entity, runs: Mapping[str, RunData], metric: str) -> dict[str, Any]:
    values = [runs[r].metrics.get(metric) for r in entity.run_ids if r in runs]
    present = np.array([v for v in values if finite(v)], dtype=np.float64)
    row: dict[str, Any] = {
        "entity": entity.name,
        "kind": entity.kind,
        "n": int(present.size),
        "missing": len(entity.run_ids) - int(present.size),
        "value": float(present.mean()) if present.size else None,
        "std": float(present.std(ddof=1)) if present.size >= 2 else None,
    }
    if entity.kind == "run" and entity.run_ids and entity.run_ids[0] in runs:
        stat = runs[entity.run_ids[0]].series.get(metric)
        row["min"] = clean(stat.minimum) if stat else None
        row["max"] = clean(stat.maximum) if stat else None
    return row


def performance(
    entities: Sequence[Entity],
    runs: Mapping[str, RunData],
    metrics: Sequence[str],
    directions: Mapping[str, str] | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """The performance section: per metric, one row per entity with deltas and the best marked.

    `baseline` names an entity (default: the first one).
    """
    directions = directions or {}
    base_name = baseline if baseline is not None else (entities[0].name if entities else None)
    out: list[dict[str, Any]] = []
    for metric in metrics:
        direction = direction_of(metric, directions)
        rows = [_entity_value(e, runs, metric) for e in entities]
        known = [r["value"] for r in rows if r["value"] is not None]
        best = (min(known) if direction == "min" else max(known)) if known else None
        base = next((r["value"] for r in rows if r["entity"] == base_name), None)
        for row in rows:
            value = row["value"]
            row["is_best"] = value is not None and value == best
            row["is_baseline"] = row["entity"] == base_name
            if value is None or base is None:
                row["delta"] = row["relative_delta"] = row["improvement"] = None
                continue
            delta = value - base
            row["delta"] = delta
            row["relative_delta"] = delta / abs(base) if base != 0 else None
            row["improvement"] = -delta if direction == "min" else delta
        out.append(
            {
                "metric": metric,
                "direction": direction,
                "best": [r["entity"] for r in rows if r["is_best"]],
                "rows": rows,
            }
        )
    return {"baseline": base_name, "metrics": out}
