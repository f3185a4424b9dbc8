"""Postgres reads the MLflow routes need beyond the native repositories: experiments by
MLflow's filter grammar, runs in batches with their dataset inputs, logged-model records.

Every statement is scoped to one tenant by a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from services.api.experiments.schemas import Experiment
from services.api.mlflow.experiment_filter import Clause, Order
from services.api.mlflow.shapes import MODEL_TAG_PREFIX, RunRecord
from services.api.runs.schemas import LatestMetric, RunInfo
from services.api.sql import Conditions

_RUN_COLUMNS = (
    "run_id, experiment_id, parent_run_id, name, user_id, status, start_time, end_time, lifecycle_stage"
)
_EXPERIMENT_COLUMNS = (
    "experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time"
)
_SQL_OPS = {
    "=": "=",
    "!=": "<>",
    "<": "<",
    ">": ">",
    "<=": "<=",
    ">=": ">=",
    "LIKE": "LIKE",
    "ILIKE": "ILIKE",
}


async def search_experiments(
    pool: asyncpg.Pool[Any],
    tenant_id: str,
    readable: frozenset[str] | None,
    shared: dict[str, str],
    clauses: Sequence[Clause],
    orders: Sequence[Order],
    stages: Sequence[str],
    offset: int,
    limit: int,
) -> list[Experiment]:
    """A page of the tenant's experiments (only `readable` ones unless None) and of those
    `shared` with it (experiment id -> owner tenant; the tenant's own id wins) matching `clauses`."""
    where = Conditions()
    tenant = where.param(tenant_id)
    own = f"e.tenant_id = {tenant}"
    if readable is not None:
        own += f" AND e.experiment_id = ANY({where.param(sorted(readable))}::text[])"
    if shared:
        where.add(
            f"(({own}) OR ((e.tenant_id, e.experiment_id) IN (SELECT * FROM unnest({where.param(list(shared.values()))}"
            f"::text[], {where.param(list(shared))}::text[])) AND NOT EXISTS (SELECT 1 FROM experiments o"
            f" WHERE o.tenant_id = {tenant} AND o.experiment_id = e.experiment_id)))"
        )
    else:
        where.add(own)
    where.add(f"e.lifecycle_stage = ANY({where.param(list(stages))}::text[])")
    for clause in clauses:
        op = _SQL_OPS[clause.op]
        value = where.param(clause.value)
        if clause.column is not None:  # a fixed column name from the grammar, never user text
            where.add(f"e.{clause.column} {op} {value}")
        else:
            where.add(
                f"EXISTS (SELECT 1 FROM experiment_tags t WHERE t.tenant_id = e.tenant_id"
                f" AND t.experiment_id = e.experiment_id AND t.key = {where.param(clause.tag)}"
                f" AND t.value {op} {value})"
            )
    order = [f"e.{o.column} {'DESC' if o.descending else 'ASC'}" for o in orders]
    order += ["e.creation_time DESC", "e.experiment_id ASC", "e.tenant_id ASC"]
    rows = await pool.fetch(
        f"SELECT {_EXPERIMENT_COLUMNS}, COALESCE((SELECT json_object_agg(t.key, t.value) FROM experiment_tags t"
        " WHERE t.tenant_id = e.tenant_id AND t.experiment_id = e.experiment_id), '{}') AS tags"
        f" FROM experiments e WHERE {where.sql} ORDER BY {', '.join(order)}"
        f" OFFSET {where.param(offset)} LIMIT {where.param(limit)}",
        *where.args,
    )
    experiments = []
    for row in rows:
        fields = dict(row)
        fields["tags"] = orjson.loads(fields["tags"]) if isinstance(fields["tags"], str) else {}
        experiments.append(Experiment(**fields))
    return experiments


async def load_runs(pool: asyncpg.Pool[Any], tenant_id: str, run_ids: Sequence[str]) -> list[RunRecord]:
    """The runs with params, tags, latest metrics, dataset inputs and model outputs, in the
    order of `run_ids` (six queries per batch, not per run)."""
    if not run_ids:
        return []
    ids = list(run_ids)
    async with pool.acquire() as conn:
        infos = {
            r["run_id"]: RunInfo(**dict(r))
            for r in await conn.fetch(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
                tenant_id,
                ids,
            )
        }
        kv: dict[str, dict[str, dict[str, str]]] = {"params": {}, "tags": {}}
        for table, target in kv.items():
            for r in await conn.fetch(
                f"SELECT run_id, key, value FROM {table} WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
                tenant_id,
                ids,
            ):
                target.setdefault(r["run_id"], {})[r["key"]] = r["value"]
        metrics: dict[str, dict[str, LatestMetric]] = {}
        for r in await conn.fetch(
            "SELECT run_id, key, value, step, timestamp FROM latest_metrics"
            " WHERE tenant_id = $1 AND run_id = ANY($2::text[]) ORDER BY key",
            tenant_id,
            ids,
        ):
            metrics.setdefault(r["run_id"], {})[r["key"]] = LatestMetric(
                value=r["value"], step=r["step"], timestamp=r["timestamp"]
            )
        outputs: dict[str, list[dict[str, Any]]] = {}
        for r in await conn.fetch(
            "SELECT run_id, model_id, step FROM run_model_outputs WHERE tenant_id = $1 AND run_id = ANY($2::text[])"
            " ORDER BY step, model_id",
            tenant_id,
            ids,
        ):
            outputs.setdefault(r["run_id"], []).append({"model_id": r["model_id"], "step": r["step"]})
        datasets: dict[str, list[dict[str, Any]]] = {}
        for r in await conn.fetch(
            "SELECT run_id, body FROM dataset_inputs WHERE tenant_id = $1 AND run_id = ANY($2::text[])"
            " ORDER BY name, digest",
            tenant_id,
            ids,
        ):
            datasets.setdefault(r["run_id"], []).append(orjson.loads(r["body"]))
    return [
        RunRecord(
            info=infos[i],
            params=kv["params"].get(i, {}),
            tags=kv["tags"].get(i, {}),
            metrics=metrics.get(i, {}),
            datasets=datasets.get(i, []),
            outputs=outputs.get(i, []),
        )
        for i in ids
        if i in infos
    ]


async def param_values(
    pool: asyncpg.Pool[Any], tenant_id: str, run_id: str, keys: list[str]
) -> dict[str, str]:
    """The values already logged for these param keys of a run."""
    rows = await pool.fetch(
        "SELECT key, value FROM params WHERE tenant_id = $1 AND run_id = $2 AND key = ANY($3::text[])",
        tenant_id,
        run_id,
        keys,
    )
    return {r["key"]: r["value"] for r in rows}


async def find_logged_model(
    pool: asyncpg.Pool[Any], tenant_id: str, model_id: str
) -> tuple[str, dict[str, Any]] | None:
    """(experiment id, record) of a logged model: on its source run's tags, else on its
    experiment's tags; None when the tenant has none with that id."""
    key = MODEL_TAG_PREFIX + model_id
    row = await pool.fetchrow(
        "SELECT r.experiment_id, t.value FROM tags t JOIN runs r"
        " ON r.tenant_id = t.tenant_id AND r.run_id = t.run_id WHERE t.tenant_id = $1 AND t.key = $2",
        tenant_id,
        key,
    )
    if row is None:
        row = await pool.fetchrow(
            "SELECT experiment_id, value FROM experiment_tags WHERE tenant_id = $1 AND key = $2",
            tenant_id,
            key,
        )
    if row is None:
        return None
    record: dict[str, Any] = orjson.loads(row["value"])
    return row["experiment_id"], record
