"""Postgres reads of MLflow 3 logged models (the logged_models projection and its params,
tags and linked metrics), and logged-models/search compiled to one parameterized query.

Every statement is scoped by bound tenant ids; the only text spliced into SQL comes from
model_search's closed sets of attribute names and operators, never from the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from services.api.mlflow.model_search import Comparison, ModelOrder
from services.api.sql import Conditions

_COLUMNS = (
    "tenant_id, model_id, experiment_id, name, artifact_location, creation_timestamp_ms,"
    " last_updated_timestamp_ms, status, lifecycle_stage, model_type, source_run_id, creator_id"
)
# Attribute -> SQL over logged_models m (source_run_id is NULL for a model without a run).
_ATTRIBUTES = {
    "model_id": "m.model_id",
    "experiment_id": "m.experiment_id",
    "name": "m.name",
    "artifact_location": "m.artifact_location",
    "status": "m.status",
    "lifecycle_stage": "m.lifecycle_stage",
    "model_type": "m.model_type",
    "source_run_id": "COALESCE(m.source_run_id, '')",
    "creation_timestamp_ms": "m.creation_timestamp_ms",
    "last_updated_timestamp_ms": "m.last_updated_timestamp_ms",
}
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "LIKE": "LIKE", "ILIKE": "ILIKE"}

Scope = Sequence[tuple[str, Sequence[str]]]  # (tenant id, experiment ids of that tenant)


async def find(
    pool: asyncpg.Pool[Any], tenant_id: str, model_id: str, shared: dict[str, str]
) -> asyncpg.Record | None:
    """The model's row: the caller's tenant's, else one in an experiment shared with it
    (experiment id -> owner tenant); None when neither holds it."""
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM logged_models WHERE tenant_id = $1 AND model_id = $2", tenant_id, model_id
    )
    if row is None and shared:
        row = await pool.fetchrow(
            f"SELECT {_COLUMNS} FROM logged_models WHERE model_id = $1 AND (tenant_id, experiment_id) IN"
            " (SELECT * FROM unnest($2::text[], $3::text[]))",
            model_id,
            list(shared.values()),
            list(shared),
        )
    return row


async def load(pool: asyncpg.Pool[Any], rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """The models of `rows` with their params, tags and metrics, in order (three queries per
    tenant, not per model)."""
    by_tenant: dict[str, list[str]] = {}
    for row in rows:
        by_tenant.setdefault(row["tenant_id"], []).append(row["model_id"])
    extra: dict[tuple[str, str], dict[str, Any]] = {}
    async with pool.acquire() as conn:
        for tenant_id, ids in by_tenant.items():
            for table, field in (("logged_model_params", "params"), ("logged_model_tags", "tags")):
                for r in await conn.fetch(
                    f"SELECT model_id, key, value FROM {table} WHERE tenant_id = $1 AND model_id = ANY($2::text[])"
                    " ORDER BY key",
                    tenant_id,
                    ids,
                ):
                    entry = extra.setdefault((tenant_id, r["model_id"]), {})
                    entry.setdefault(field, {})[r["key"]] = r["value"]
            for r in await conn.fetch(
                "SELECT model_id, key, value, timestamp, step, run_id, dataset_name, dataset_digest"
                " FROM logged_model_metrics WHERE tenant_id = $1 AND model_id = ANY($2::text[])"
                " ORDER BY key, timestamp, step",
                tenant_id,
                ids,
            ):
                entry = extra.setdefault((tenant_id, r["model_id"]), {})
                entry.setdefault("metrics", []).append(dict(r))
    records = []
    for row in rows:
        record = dict(row)
        record.update({"params": {}, "tags": {}, "metrics": []})
        record.update(extra.get((row["tenant_id"], row["model_id"]), {}))
        records.append(record)
    return records


def _scope_sql(where: Conditions, scope: Scope) -> str:
    terms = [
        f"(m.tenant_id = {where.param(tenant)}::text AND m.experiment_id = ANY({where.param(list(ids))}::text[]))"
        for tenant, ids in scope
    ]
    return "(" + " OR ".join(terms) + ")"


def _condition(where: Conditions, c: Comparison, datasets: list[dict[str, Any]]) -> None:
    if c.kind == "attribute":
        expr = _ATTRIBUTES[c.key]
        if c.numeric:
            where.add(f"{expr} {_OPS[c.op]} {where.param(c.value)}::float8")
        elif isinstance(c.value, tuple):
            test = f"{expr} = ANY({where.param(list(c.value))}::text[])"
            where.add(test if c.op == "IN" else f"NOT ({test})")
        else:
            where.add(f"{expr} {_OPS[c.op]} {where.param(c.value)}::text")
        return
    if c.kind == "metric":
        test = f"x.value {_OPS[c.op]} {where.param(c.value)}::float8"
        if c.op in (">", ">="):
            test += " AND x.value < 'NaN'::float8"  # Postgres ranks NaN above every number
        where.add(
            "EXISTS (SELECT 1 FROM logged_model_metrics x WHERE x.tenant_id = m.tenant_id AND x.model_id = m.model_id"
            f" AND x.key = {where.param(c.key)}::text AND {test}{_datasets_sql(where, datasets)})"
        )
        return
    table = "logged_model_params" if c.kind == "param" else "logged_model_tags"
    if isinstance(c.value, tuple):
        test = f"x.value = ANY({where.param(list(c.value))}::text[])"
        test = test if c.op == "IN" else f"NOT ({test})"
    else:
        test = f"x.value {_OPS[c.op]} {where.param(c.value)}::text"
    where.add(
        f"EXISTS (SELECT 1 FROM {table} x WHERE x.tenant_id = m.tenant_id AND x.model_id = m.model_id"
        f" AND x.key = {where.param(c.key)}::text AND {test})"
    )


def _datasets_sql(where: Conditions, datasets: list[dict[str, Any]]) -> str:
    """' AND (the point is on one of these datasets)', or '' when the search names none."""
    if not datasets:
        return ""
    terms = []
    for d in datasets:
        term = f"x.dataset_name = {where.param(str(d['dataset_name']))}::text"
        if d.get("dataset_digest"):
            term += f" AND x.dataset_digest = {where.param(str(d['dataset_digest']))}::text"
        terms.append(f"({term})")
    return " AND (" + " OR ".join(terms) + ")"


async def search(
    pool: asyncpg.Pool[Any],
    scope: Scope,
    comparisons: Sequence[Comparison],
    datasets: list[dict[str, Any]],
    orders: Sequence[ModelOrder],
    offset: int,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of the active models in `scope` matching every comparison, in `orders` then
    creation time (newest first) and model id, as MLflow orders them."""
    if not scope:
        return []
    where = Conditions()
    where.add(_scope_sql(where, scope))
    where.add("m.lifecycle_stage <> 'deleted'")
    for c in comparisons:
        _condition(where, c, datasets)
    if datasets and not any(c.kind == "metric" for c in comparisons):
        # Datasets alone: models with any metric on one of them (MLflow's rule).
        where.add(
            "EXISTS (SELECT 1 FROM logged_model_metrics x WHERE x.tenant_id = m.tenant_id"
            f" AND x.model_id = m.model_id{_datasets_sql(where, datasets)})"
        )
    joins: list[str] = []
    order: list[str] = []
    for o in orders:
        direction = "ASC" if o.ascending else "DESC"
        if o.kind == "attribute":
            order.append(f"{_ATTRIBUTES[o.key]} {direction} NULLS LAST")
            continue
        alias = f"o{len(joins)}"
        on_dataset = ""
        if o.dataset_name:
            on_dataset += f" AND x.dataset_name = {where.param(o.dataset_name)}::text"
        if o.dataset_digest:
            on_dataset += f" AND x.dataset_digest = {where.param(o.dataset_digest)}::text"
        joins.append(
            f"LEFT JOIN LATERAL (SELECT x.value FROM logged_model_metrics x WHERE x.tenant_id = m.tenant_id"
            f" AND x.model_id = m.model_id AND x.key = {where.param(o.key)}::text{on_dataset}"
            f" ORDER BY x.timestamp DESC, x.step DESC, x.run_id ASC LIMIT 1) {alias} ON TRUE"
        )
        order.append(f"{alias}.value {direction} NULLS LAST")
    if not any(o.kind == "attribute" and o.key == "creation_timestamp_ms" for o in orders):
        order.append("m.creation_timestamp_ms DESC")
    if not any(o.kind == "attribute" and o.key == "model_id" for o in orders):
        order.append("m.model_id ASC")
    order.append("m.tenant_id ASC")  # a model id is unique per tenant: this makes the order total
    sql = (
        f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))} FROM logged_models m {' '.join(joins)}"
        f" WHERE {where.sql} ORDER BY {', '.join(order)}"
        f" OFFSET {where.param(offset)} LIMIT {where.param(limit)}"
    )
    return list(await pool.fetch(sql, *where.args))


async def model_outputs(
    pool: asyncpg.Pool[Any], tenant_id: str, run_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Run id -> its model outputs [{model_id, step}] (runs/outputs)."""
    if not run_ids:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in await pool.fetch(
        "SELECT run_id, model_id, step FROM run_model_outputs WHERE tenant_id = $1 AND run_id = ANY($2::text[])"
        " ORDER BY step, model_id",
        tenant_id,
        list(run_ids),
    ):
        out.setdefault(r["run_id"], []).append({"model_id": r["model_id"], "step": r["step"]})
    return out
