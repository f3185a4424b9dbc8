"""The table an attribution works on, read from the projections: one row per run.

Factors are namespaced by what they record: `params.<key>`, `tags.<key>`,
`code.commit|branch|dirty` (code state, or the git.* / mlflow.source.git.commit tags),
`env.python`, `env.<package>` (installed versions that differ between the runs),
`hardware.cuda|driver` (and `hardware.*` tags), `data.<dataset>` (digest of each logged
dataset input, and `data.*` tags). The metric of a run is its latest value. Factors that
cannot explain anything are left out: MLflow's bookkeeping tags, and text that differs on
every run (names, paths, ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from runledger.stores.postgres import PgConnection

_DROPPED_TAG_PREFIXES = ("mlflow.", "runledger.")
_CODE_TAGS = {
    "git.commit": "code.commit",
    "git.branch": "code.branch",
    "git.dirty": "code.dirty",
    "mlflow.source.git.commit": "code.commit",
    "mlflow.source.git.branch": "code.branch",
}
_MAX_PACKAGES = 200  # differing package versions kept (most runs have a few hundred installed)


class AttributionInputError(ValueError):
    """The request names runs that cannot be used (unknown, other experiment, no metric)."""


@dataclass(frozen=True, slots=True)
class RunTable:
    """Runs (candidates first), their metric values, and factor values per run."""

    run_ids: list[str]
    metric: np.ndarray
    candidate: np.ndarray
    baseline: np.ndarray
    factors: dict[str, list[str | float | None]]


def _value(raw: str) -> str | float:
    """A recorded value as a number when it is one (params are text on the wire)."""
    try:
        number = float(raw)
    except ValueError:
        return raw
    return number if np.isfinite(number) else raw


async def _metric_values(
    conn: PgConnection, tenant_id: str, experiment_id: str, metric: str, run_ids: list[str]
) -> dict[str, float]:
    rows = await conn.fetch(
        "SELECT r.run_id, m.value FROM runs r JOIN latest_metrics m"
        " ON m.tenant_id = r.tenant_id AND m.run_id = r.run_id AND m.key = $3"
        " WHERE r.tenant_id = $1 AND r.experiment_id = $2 AND r.run_id = ANY($4::text[])"
        " AND r.lifecycle_stage = 'active'",
        tenant_id,
        experiment_id,
        metric,
        run_ids,
    )
    return {r["run_id"]: float(r["value"]) for r in rows}


async def _recent_runs(
    conn: PgConnection, tenant_id: str, experiment_id: str, metric: str, exclude: list[str], limit: int
) -> list[str]:
    rows = await conn.fetch(
        "SELECT r.run_id FROM runs r JOIN latest_metrics m"
        " ON m.tenant_id = r.tenant_id AND m.run_id = r.run_id AND m.key = $3"
        " WHERE r.tenant_id = $1 AND r.experiment_id = $2 AND r.lifecycle_stage = 'active'"
        " AND NOT (r.run_id = ANY($4::text[])) ORDER BY r.start_time DESC LIMIT $5",
        tenant_id,
        experiment_id,
        metric,
        exclude,
        limit,
    )
    return [r["run_id"] for r in rows]


async def load_run_table(
    conn: PgConnection, tenant_id: str, experiment_id: str, request: dict[str, Any]
) -> RunTable:
    """The runs of an attribution request and everything recorded about them."""
    metric = str(request["metric"])
    candidates = list(dict.fromkeys(request["candidate_run_ids"]))
    baseline = list(dict.fromkeys(r for r in request.get("baseline_run_ids") or [] if r not in candidates))
    if not baseline:
        baseline = await _recent_runs(
            conn, tenant_id, experiment_id, metric, candidates, int(request.get("baseline_recent") or 200)
        )
    values = await _metric_values(conn, tenant_id, experiment_id, metric, candidates + baseline)
    candidates = [r for r in candidates if r in values]
    baseline = [r for r in baseline if r in values]
    if not candidates:
        raise AttributionInputError(
            f"no candidate run of experiment {experiment_id} has the metric {metric!r}"
        )
    if not baseline:
        raise AttributionInputError(
            f"no baseline run of experiment {experiment_id} has the metric {metric!r}"
        )
    run_ids = candidates + baseline
    columns: dict[str, dict[str, str | float]] = {}

    def put(factor: str, run_id: str, value: str | float) -> None:
        columns.setdefault(factor, {})[run_id] = value

    for r in await conn.fetch(
        "SELECT run_id, key, value FROM params WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
        tenant_id,
        run_ids,
    ):
        put(f"params.{r['key']}", r["run_id"], _value(r["value"]))
    for r in await conn.fetch(
        "SELECT run_id, key, value FROM tags WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
        tenant_id,
        run_ids,
    ):
        key: str = r["key"]
        if key in _CODE_TAGS:
            put(_CODE_TAGS[key], r["run_id"], r["value"])
        elif key == "env.hash" or key.startswith(("hardware.", "data.")):
            put(key, r["run_id"], r["value"])  # already a factor namespace (kind by prefix)
        elif not key.startswith(_DROPPED_TAG_PREFIXES):
            put(f"tags.{key}", r["run_id"], _value(r["value"]))
    for r in await conn.fetch(
        "SELECT run_id, kind, body::text AS body FROM run_documents"
        " WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
        tenant_id,
        run_ids,
    ):
        _document(put, r["run_id"], r["kind"], orjson.loads(r["body"]))
    for r in await conn.fetch(
        "SELECT run_id, name, digest FROM dataset_inputs WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
        tenant_id,
        run_ids,
    ):
        put(f"data.{r['name']}", r["run_id"], r["digest"])
    factors = _useful(columns, run_ids)
    return RunTable(
        run_ids=run_ids,
        metric=np.array([values[r] for r in run_ids], dtype=np.float64),
        candidate=np.array([i < len(candidates) for i in range(len(run_ids))]),
        baseline=np.array([i >= len(candidates) for i in range(len(run_ids))]),
        factors=factors,
    )


def _document(put: Any, run_id: str, kind: str, body: dict[str, Any]) -> None:
    """Factors of a run's code state or environment document."""
    if kind == "code_state":
        if body.get("commit"):
            put("code.commit", run_id, str(body["commit"]))
            put("code.dirty", run_id, "true" if body.get("dirty") else "false")
        if body.get("branch"):
            put("code.branch", run_id, str(body["branch"]))
    elif kind == "environment":
        if body.get("python_version"):
            put("env.python", run_id, str(body["python_version"]))
        for name, version in (body.get("packages") or {}).items():
            put(f"env.{name}", run_id, str(version))
        for field in ("cuda_version", "driver_version"):
            if body.get(field):
                put(f"hardware.{field.removesuffix('_version')}", run_id, str(body[field]))


def _useful(
    columns: dict[str, dict[str, str | float]], run_ids: list[str]
) -> dict[str, list[str | float | None]]:
    """Columns that vary and could explain something, as lists aligned with `run_ids`."""
    n = len(run_ids)
    packages = 0
    out: dict[str, list[str | float | None]] = {}
    has_packages = any(
        f.startswith("env.") and f not in ("env.python", "env.hash") and len(set(v.values())) > 1
        for f, v in columns.items()
    )
    for factor, by_run in sorted(columns.items()):
        distinct = set(by_run.values())
        if len(distinct) <= 1 and len(by_run) == n and not factor.startswith(("params.", "tags.")):
            continue  # an unchanged package or document field: hundreds of them, none explains anything
        text = [v for v in distinct if isinstance(v, str)]
        if n > 3 and len(text) == len(by_run) and len(distinct) == n:
            continue  # free text unique to each run (a name, a path): no level is shared
        if factor == "env.hash" and has_packages:
            continue  # the package versions say the same, factor by factor
        if factor.startswith("env.") and factor not in ("env.python", "env.hash"):
            packages += 1
            if packages > _MAX_PACKAGES:
                continue
        out[factor] = [by_run.get(r) for r in run_ids]
    return out
