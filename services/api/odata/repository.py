"""Runs the compiled OData queries: Postgres (asyncpg) or ClickHouse (in a worker thread).

Every statement is scoped to the caller's tenant and, for a grant narrowed to some
experiments, to those experiments; the filter, order, offset and limit are all in SQL.
A derived entity set (`EntitySet.cte`) is scoped inside its WITH clause instead, and the
compiled options apply to the CTE in the same statement.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg

from runledger.stores.clickhouse import ClickHouse
from services.api.odata.compile import (
    ClickHouseDialect,
    Dialect,
    FilterCompiler,
    PostgresDialect,
    SortColumn,
    after,
)
from services.api.odata.model import EntitySet, Property
from services.api.odata.parser import Node

_TENANT = Property("TenantId", "Edm.String", "tenant_id")


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose rows: the tenant, and the readable experiments (None = all of the tenant's)."""

    tenant_id: str
    experiments: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page: filter, order (with tiebreakers), position or offset, limit, columns."""

    entity_set: EntitySet
    filter: Node | None
    columns: list[SortColumn]
    position: list[Any] | None
    skip: int
    limit: int
    select: list[Property]


class ODataRepository:
    """Reads entity sets for one scope."""

    def __init__(self, pool: asyncpg.Pool[Any], clickhouse: ClickHouse, scope: Scope) -> None:
        self._pool = pool
        self._ch = clickhouse
        self._scope = scope

    def _with(self, entity_set: EntitySet, pg: PostgresDialect) -> str:
        """The WITH clause of a derived entity set ('' for a table), binding the scope first."""
        if entity_set.cte is None:
            return ""
        return entity_set.cte(pg.param, self._scope.tenant_id, self._scope.experiments) + " "

    def _where(self, entity_set: EntitySet, dialect: Dialect, node: Node | None) -> list[str]:
        clauses = [] if entity_set.cte is not None else self._scope_clauses(entity_set, dialect)
        if node is not None:
            clauses.append(FilterCompiler(entity_set, dialect).predicate(node))
        return clauses

    def _scope_clauses(self, entity_set: EntitySet, dialect: Dialect) -> list[str]:
        # Not for a derived set: its CTE (see _with) already holds only the readable rows.
        scope = self._scope
        clauses = [f"{entity_set.tenant_expr} = {dialect.bind(_TENANT, scope.tenant_id)}"]
        if scope.experiments is not None:
            if isinstance(dialect, PostgresDialect):
                ids = dialect.param(sorted(scope.experiments), "text[]")
                clauses.append(f"{entity_set.experiment_expr} = ANY({ids})")
            else:
                assert isinstance(dialect, ClickHouseDialect)
                ids = dialect.param(sorted(scope.experiments), "Array(String)")
                clauses.append(f"has({ids}, {entity_set.experiment_expr})")
        return clauses

    async def count(self, entity_set: EntitySet, node: Node | None) -> int:
        """How many rows match the filter (ignoring $top/$skip)."""
        if entity_set.store == "postgres":
            pg = PostgresDialect()
            with_ = self._with(entity_set, pg)
            where = " AND ".join(self._where(entity_set, pg, node)) or "TRUE"
            value = await self._pool.fetchval(
                f"{with_}SELECT count(*) FROM {entity_set.source} WHERE {where}", *pg.args
            )
            return int(value)
        ch = ClickHouseDialect()
        where = " AND ".join(self._where(entity_set, ch, node))
        sql = f"SELECT count() AS n FROM {self._ch.table(entity_set.source)} WHERE {where}"
        table = await asyncio.to_thread(self._ch.query_arrow, sql, ch.params)
        return int(table.column("n")[0].as_py())

    async def page(self, query: PageQuery) -> list[dict[str, Any]]:
        """The rows of one page: selected properties by name, and sort values as `_s<i>`."""
        es = query.entity_set
        values = [f"{p.expr} AS c{i}" for i, p in enumerate(query.select)]
        values += [f"{c.prop.expr} AS s{i}" for i, c in enumerate(query.columns)]
        if es.store == "postgres":
            pg = PostgresDialect()
            with_ = self._with(es, pg)
            clauses = self._where(es, pg, query.filter)
            if query.position is not None:
                clauses.append(after(query.columns, query.position, pg, row_values=True))
            order = ", ".join(c.order_sql("postgres") for c in query.columns)
            where = " AND ".join(clauses) or "TRUE"
            sql = (
                f"{with_}SELECT {', '.join(values)} FROM {es.source} WHERE {where}"
                f" ORDER BY {order} LIMIT {pg.param(query.limit, 'int8')}"
            )
            if query.skip:
                sql += f" OFFSET {pg.param(query.skip, 'int8')}"
            rows = await self._pool.fetch(sql, *pg.args)
            return [dict(r) for r in rows]
        ch = ClickHouseDialect()
        clauses = self._where(es, ch, query.filter)
        if query.position is not None:
            clauses.append(after(query.columns, query.position, ch, row_values=False))
        order = ", ".join(c.order_sql("clickhouse") for c in query.columns)
        sql = (
            f"SELECT {', '.join(values)} FROM {self._ch.table(es.source)} WHERE {' AND '.join(clauses)}"
            f" ORDER BY {order} LIMIT {ch.param(query.limit, 'UInt64')}"
        )
        if query.skip:
            sql += f" OFFSET {ch.param(query.skip, 'UInt64')}"
        table = await asyncio.to_thread(self._ch.query_arrow, sql, ch.params)
        points: list[dict[str, Any]] = table.to_pylist()
        return points
