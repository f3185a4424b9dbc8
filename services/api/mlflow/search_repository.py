"""MLflow runs/search as one parameterised Postgres query over the projections.

Every value is a bound parameter; the only text spliced into the SQL is chosen from the
closed sets below by the parser's canonical keys (never user text). Conditions on
metrics, params, tags and datasets are EXISTS subqueries on their key, which Postgres
turns into semi-joins driven by the (tenant_id, key, value) indexes; each order_by on a
metric, param or tag is a LEFT JOIN on its key, so runs without it come back (last).

Paging is keyset, not offset: the opaque token carries the last row's sort values and
run_id (the order is total: run_id always ends it), so page n costs what page 1 costs and
runs logged between two pages neither shift nor repeat rows. The order's mixed
directions and nulls-last rule make the "after" predicate an OR-chain instead of a row
comparison, built below from the position in the token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from runledger.stores.postgres import PgConnection
from services.api.errors import InvalidParameter
from services.api.mlflow.search import Condition, Entity, OrderKey, with_tiebreakers
from services.api.pagination import decode_page_token, encode_page_token, fingerprint
from services.api.sql import Conditions

RunViewType = Literal["ACTIVE_ONLY", "DELETED_ONLY", "ALL"]
MAX_RESULTS = 50_000
# Params and tags are indexed on this prefix of their value (long values exceed a btree entry).
VALUE_PREFIX = 256

_LIFECYCLE = {"ACTIVE_ONLY": "active", "DELETED_ONLY": "deleted", "ALL": None}
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1

# Attribute key -> (SQL expression over runs r, kind, nullable).
_ARTIFACT_URI = "('mlflow-artifacts:/' || r.experiment_id || '/' || r.run_id || '/artifacts')"
_ATTRIBUTES: dict[str, tuple[str, Literal["int", "text"], bool]] = {
    "run_id": ("r.run_id", "text", False),
    "run_name": ("r.name", "text", False),
    "user_id": ("r.user_id", "text", False),
    "status": ("r.status", "text", False),
    "lifecycle_stage": ("r.lifecycle_stage", "text", False),
    "experiment_id": ("r.experiment_id", "text", False),
    "artifact_uri": (_ARTIFACT_URI, "text", False),
    "start_time": ("r.start_time", "int", False),
    "end_time": ("r.end_time", "int", True),
}
_KEY_VALUE_TABLES = {Entity.METRIC: "latest_metrics", Entity.PARAM: "params", Entity.TAG: "tags"}
# Dataset keys -> column of dataset_inputs d; the context is the input tag MLflow sets.
_DATASET_COLUMNS = {
    "name": "d.name",
    "digest": "d.digest",
    "context": "(d.body -> 'tags' ->> 'mlflow.data.context')",
}
_SQL_COMPARATORS = {
    "=": "=",
    "!=": "<>",
    ">": ">",
    ">=": ">=",
    "<": "<",
    "<=": "<=",
    "LIKE": "LIKE",
    "ILIKE": "ILIKE",
}
_CASTS = {"float": "float8", "int": "int8", "text": "text"}


@dataclass(frozen=True, slots=True)
class _SortColumn:
    """One ORDER BY term: its SQL, how its values travel in a page token, and its nulls."""

    expr: str
    kind: Literal["float", "int", "text"]
    ascending: bool
    nullable: bool

    @property
    def is_metric(self) -> bool:
        return self.kind == "float"

    def order_sql(self) -> str:
        # Metrics are always ascending (DESC sorts the negated value): Postgres ranks NaN
        # above every number, so NaN then NULL come last, as in MLflow, with a plain sort key.
        direction = "ASC" if self.ascending else "DESC"
        return f"{self.expr} {direction}" + (" NULLS LAST" if self.nullable else "")


def _metric_column(value: str, ascending: bool) -> _SortColumn:
    return _SortColumn(value if ascending else f"(-{value})", "float", True, True)


def integer_bound(comparator: str, value: float | int) -> tuple[str, int] | bool:
    """`column <comparator> value` for an integer column as an integer comparison (so the
    parameter is a bigint and the index applies), or a constant when none is needed."""
    if isinstance(value, int):
        exact: int | None = value
    elif math.isfinite(value) and value == math.floor(value):
        exact = int(value)
    else:
        exact = None
    if exact is None:
        if math.isnan(value):
            return comparator == "!="
        if comparator == "=":
            return False
        if comparator == "!=":
            return True
        # x > 1.5 <=> x > 1; x >= 1.5 <=> x >= 2; x < 1.5 <=> x < 2; x <= 1.5 <=> x <= 1.
        if math.isinf(value):
            return (value > 0) == (comparator in ("<", "<="))
        exact = math.floor(value) if comparator in (">", "<=") else math.ceil(value)
    # Clamped to bigint (the parameter's type): only runs timed at its very ends could differ.
    return comparator, max(_BIGINT_MIN, min(_BIGINT_MAX, exact))


class _Query:
    """Builds the SQL of one search: bound parameters in `where`, joins for order keys."""

    def __init__(self, tenant_id: str, multi_tenant: bool = False) -> None:
        self.where = Conditions()
        self.tenant_param = self.where.param(tenant_id)
        # Subqueries match the row's own tenant: a bound parameter (the planner's best case)
        # unless the search also covers experiments shared by other tenants.
        self.tenant = "r.tenant_id" if multi_tenant else self.tenant_param
        self.joins: list[str] = []
        self.joined: dict[tuple[Entity, str], str] = {}  # (metric|param|tag, key) -> inner join alias
        self.columns: list[_SortColumn] = []

    def condition(self, c: Condition) -> None:
        w = self.where
        if c.entity is Entity.ATTRIBUTE:
            self._attribute(c)
        elif c.entity is Entity.DATASET:
            column = _DATASET_COLUMNS[c.key]
            if c.comparator in ("IN", "NOT IN"):
                test = f"{column} = ANY({w.param(list(_strings(c.value)))}::text[])"
                test = test if c.comparator == "IN" else f"NOT ({test})"
            else:
                test = f"{column} {_SQL_COMPARATORS[c.comparator]} {w.param(_string(c.value))}::text"
            w.add(
                "EXISTS (SELECT 1 FROM dataset_inputs d WHERE d.tenant_id = "
                f"{self.tenant} AND d.run_id = r.run_id AND {test})"
            )
        elif c.comparator == "IS NULL":
            w.add(
                f"NOT EXISTS (SELECT 1 FROM {_KEY_VALUE_TABLES[c.entity]} x WHERE x.tenant_id = {self.tenant}"
                f" AND x.run_id = r.run_id AND x.key = {w.param(c.key)}::text)"
            )
        else:
            # An inner join, not EXISTS: (tenant_id, run_id, key) is unique, so no row repeats,
            # and an order_by on the same key reuses it instead of joining again.
            alias = f"j{len(self.joins)}"
            on = f"{alias}.tenant_id = r.tenant_id AND {alias}.run_id = r.run_id AND {alias}.key = {w.param(c.key)}::text"
            if c.entity is Entity.METRIC:
                on += (
                    f" AND {alias}.value {_SQL_COMPARATORS[c.comparator]} {w.param(_float(c.value))}::float8"
                )
                if c.comparator in (">", ">="):
                    # Postgres ranks NaN above every number; MLflow's NaN satisfies no comparison.
                    on += f" AND {alias}.value < 'NaN'::float8"
            elif c.comparator != "IS NOT NULL":
                literal = _string(c.value)
                value = w.param(literal)
                if c.comparator == "=":
                    # Matches the (tenant_id, key, left(value, 256)) index. For a literal shorter
                    # than the prefix, equal prefixes mean equal values: one predicate, so the
                    # planner's estimate (from the prefix statistics) stays right.
                    on += f" AND left({alias}.value, {VALUE_PREFIX}) = left({value}::text, {VALUE_PREFIX})"
                    if len(literal) >= VALUE_PREFIX:
                        on += f" AND {alias}.value = {value}::text"
                else:
                    on += f" AND {alias}.value {_SQL_COMPARATORS[c.comparator]} {value}::text"
            self.joins.append(f"JOIN {_KEY_VALUE_TABLES[c.entity]} {alias} ON {on}")
            self.joined.setdefault((c.entity, c.key), alias)

    def _attribute(self, c: Condition) -> None:
        w = self.where
        expr, kind, _ = _ATTRIBUTES[c.key]
        if kind == "int":
            value = c.value
            if not isinstance(value, int | float):
                raise InvalidParameter(f"Expected numeric value type for numeric attribute: {c.key}.")
            bound = integer_bound(c.comparator, value)
            if bound is True:
                w.add(f"{expr} IS NOT NULL")
            elif bound is False:
                w.add("FALSE")
            else:
                op, number = bound
                w.add(f"{expr} {_SQL_COMPARATORS[op]} {w.param(number)}::int8")
        elif c.comparator in ("IN", "NOT IN"):
            test = f"{expr} = ANY({w.param(list(_strings(c.value)))}::text[])"
            w.add(test if c.comparator == "IN" else f"NOT ({test})")
        else:
            w.add(f"{expr} {_SQL_COMPARATORS[c.comparator]} {w.param(_string(c.value))}::text")

    def order(self, key: OrderKey) -> None:
        if key.entity is Entity.ATTRIBUTE:
            expr, kind, nullable = _ATTRIBUTES[key.key]
            self.columns.append(_SortColumn(expr, kind, key.ascending, nullable))
            return
        if key.entity not in _KEY_VALUE_TABLES:
            raise InvalidParameter(f"Invalid order_by entity type '{key.entity.value}'")
        alias = self.joined.get((key.entity, key.key), "")
        if not alias:  # a LEFT JOIN: runs without the key are kept (and sort last)
            alias = f"o{len(self.joins)}"
            self.joins.append(
                f"LEFT JOIN {_KEY_VALUE_TABLES[key.entity]} {alias} ON {alias}.tenant_id = r.tenant_id"
                f" AND {alias}.run_id = r.run_id AND {alias}.key = {self.where.param(key.key)}::text"
            )
        if key.entity is Entity.METRIC:
            self.columns.append(_metric_column(f"{alias}.value", key.ascending))
        else:
            self.columns.append(_SortColumn(f"{alias}.value", "text", key.ascending, True))

    def after(self, position: list[Any]) -> None:
        """Only rows strictly after `position` (the last row of the previous page)."""
        terms: list[str] = []
        equal: list[str] = []
        for column, value in zip(self.columns, position, strict=True):
            later, same = self._compare(column, value)
            if later is not None:
                terms.append("(" + " AND ".join([*equal, later]) + ")")
            equal.append(same)
        self.where.add("(" + " OR ".join(terms) + ")" if terms else "FALSE")

    def _compare(self, column: _SortColumn, value: Any) -> tuple[str | None, str]:
        """(SQL: sorts strictly after `value` or None when nothing does, SQL: sorts level with it)."""
        e = column.expr
        if value is None:  # NULLs come last
            return None, f"{e} IS NULL"
        if column.is_metric and math.isnan(value):  # then only NULLs follow NaN
            return f"{e} IS NULL", f"{e} = 'NaN'::float8"
        p = f"{self.where.param(value)}::{_CASTS[column.kind]}"
        later = f"{e} {'>' if column.ascending else '<'} {p}"  # for metrics, NaN > any number
        if column.nullable:
            later = f"({later} OR {e} IS NULL)"
        return later, f"{e} = {p}"

    def sql(self, limit: int) -> str:
        values = ", ".join(f"{c.expr} AS s{i}" for i, c in enumerate(self.columns))
        order = ", ".join(c.order_sql() for c in self.columns)
        joins = " ".join(self.joins)
        return (
            f"SELECT r.tenant_id, r.run_id, {values} FROM runs r {joins} WHERE {self.where.sql}"
            f" ORDER BY {order} LIMIT {self.where.param(limit)}"
        )


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(f"Expected a quoted string value. Got value {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"Expected a list of quoted string values. Got value {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(f"Expected numeric value type for metric. Found {value!r}")
    return float(value)


def _encode_position(columns: list[_SortColumn], row: Any) -> list[Any]:
    # Floats travel as text: JSON has no NaN or Infinity.
    return [
        repr(row[f"s{i}"]) if c.is_metric and row[f"s{i}"] is not None else row[f"s{i}"]
        for i, c in enumerate(columns)
    ]


def _decode_position(columns: list[_SortColumn], position: list[Any]) -> list[Any]:
    if len(position) != len(columns):
        raise InvalidParameter("invalid page_token")
    decoded: list[Any] = []
    for column, value in zip(columns, position, strict=True):
        if value is None and column.nullable:
            decoded.append(None)
        elif column.kind == "float" and isinstance(value, str):
            try:
                decoded.append(float(value))
            except ValueError:
                raise InvalidParameter("invalid page_token") from None
        elif (column.kind == "int" and type(value) is int) or (
            column.kind == "text" and isinstance(value, str)
        ):
            decoded.append(value)
        else:
            raise InvalidParameter("invalid page_token")
    return decoded


def search_fingerprint(
    experiment_ids: list[str], conditions: list[Condition], order: list[OrderKey], run_view_type: str
) -> str:
    """What a page token is bound to: the same search, whatever max_results."""
    return fingerprint(
        "mlflow-runs-search",
        sorted(set(experiment_ids)),
        [repr(c) for c in conditions],
        [repr(k) for k in order],
        run_view_type,
    )


async def search_run_ids(
    conn: PgConnection | asyncpg.Pool[Any],
    tenant_id: str,
    experiment_ids: list[str],
    conditions: list[Condition],
    order: list[OrderKey],
    run_view_type: RunViewType | str,
    max_results: int,
    page_token: str | None,
) -> tuple[list[str], str | None]:
    """One page of the ids of the tenant's runs in `experiment_ids` matching every condition,
    in `order` (then start_time DESC, run_id), and the next page's token (None at the end)."""
    found, token = await search_runs(
        conn, tenant_id, experiment_ids, conditions, order, run_view_type, max_results, page_token
    )
    return [run_id for _, run_id in found], token


async def search_runs(
    conn: PgConnection | asyncpg.Pool[Any],
    tenant_id: str,
    experiment_ids: list[str],
    conditions: list[Condition],
    order: list[OrderKey],
    run_view_type: RunViewType | str,
    max_results: int,
    page_token: str | None,
    *,
    shared: dict[str, str] | None = None,
) -> tuple[list[tuple[str, str]], str | None]:
    """search_run_ids over the tenant's `experiment_ids` and the `shared` experiments (id ->
    owner tenant, searched in the owner's rows): a page of (tenant id, run id) and the next
    page's token."""
    if run_view_type not in _LIFECYCLE:
        raise InvalidParameter(
            f"Invalid run_view_type '{run_view_type}'. Valid values are ACTIVE_ONLY, DELETED_ONLY, ALL"
        )
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise InvalidParameter(
            f"Invalid value for request parameter max_results. It must be a positive integer, but got value {max_results}"
        )
    if max_results > MAX_RESULTS:
        raise InvalidParameter(
            f"Invalid value for request parameter max_results. It must be at most {MAX_RESULTS}, but got value {max_results}"
        )
    shared = {e: t for e, t in (shared or {}).items() if e not in experiment_ids}
    scope = search_fingerprint([*experiment_ids, *shared], conditions, order, run_view_type)
    query = _Query(tenant_id, multi_tenant=bool(shared))
    for condition in conditions:  # first: order keys reuse their joins
        query.condition(condition)
    for key in with_tiebreakers(order):
        query.order(key)
    position = None
    if page_token:
        position = _decode_position(query.columns, decode_page_token(page_token, scope))
    if not experiment_ids and not shared:
        return [], None
    w = query.where
    ids = sorted(set(experiment_ids))
    if not shared:
        w.add(f"r.tenant_id = {query.tenant_param}")
        # A plain equality for one experiment lets the index return rows already in start_time order.
        if len(ids) == 1:
            w.add(f"r.experiment_id = {w.param(ids[0])}::text")
        else:
            w.add(f"r.experiment_id = ANY({w.param(ids)}::text[])")
    else:
        groups: dict[str, list[str]] = {}
        for experiment_id, owner in sorted(shared.items()):
            groups.setdefault(owner, []).append(experiment_id)
        # The caller's own tenant is the query's first parameter ($1), bound in _Query.
        terms = [
            f"(r.tenant_id = {query.tenant_param}::text AND r.experiment_id = ANY({w.param(ids)}::text[]))"
        ]
        terms += [
            f"(r.tenant_id = {w.param(t)}::text AND r.experiment_id = ANY({w.param(e)}::text[]))"
            for t, e in groups.items()
        ]
        w.add("(" + " OR ".join(terms) + ")")
    lifecycle = _LIFECYCLE[run_view_type]
    if lifecycle is not None:
        w.add(f"r.lifecycle_stage = {w.param(lifecycle)}::text")
    if position is not None:
        query.after(position)
    rows = await conn.fetch(query.sql(max_results + 1), *w.args)
    if len(rows) <= max_results:
        return [(row["tenant_id"], row["run_id"]) for row in rows], None
    page = rows[:max_results]
    token = encode_page_token(_encode_position(query.columns, page[-1]), scope)
    return [(row["tenant_id"], row["run_id"]) for row in page], token
