"""OData syntax trees -> parameterised SQL, for Postgres ($n) or ClickHouse ({pN:Type}).

Property names map to the fixed expressions of model.py; every literal becomes a bound
parameter of the property's type, so user text never reaches the SQL. Values travel in
each property's storage domain (milliseconds for `ms` and `ch_time`, an aware datetime for
`tstz`), which also serves the keyset positions of server-driven paging.
"""

from __future__ import annotations

import math
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.api.errors import InvalidParameter
from services.api.odata.model import EntitySet, Property
from services.api.odata.parser import BoolOp, Call, Compare, Literal, Node, Not, OrderItem, Prop

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_FLIP = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
_INT64 = (-(2**63), 2**63 - 1)


class Dialect(ABC):
    """Binds parameters and spells the few functions that differ between the stores."""

    @abstractmethod
    def bind(self, prop: Property, value: Any) -> str:
        """SQL of a bound parameter holding `value` (in the property's storage domain)."""

    @abstractmethod
    def contains(self, expr: str, prop: Property, text: str, how: str) -> str:
        """contains / startswith / endswith of a string property."""

    @abstractmethod
    def ne(self, expr: str, param: str, nullable: bool) -> str:
        """`expr ne param`: true when expr is null (OData: null ne 'x' is true)."""


class PostgresDialect(Dialect):
    """asyncpg's $n placeholders, each with an explicit cast."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def param(self, value: Any, cast: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{cast}"

    def bind(self, prop: Property, value: Any) -> str:
        if prop.storage == "tstz":
            return self.param(value, "timestamptz")
        if prop.storage == "ms" or prop.edm == "Edm.Int64":
            return self.param(value, "int8") if isinstance(value, int) else self.param(float(value), "float8")
        if prop.edm == "Edm.Double":
            return self.param(float(value), "float8")
        if prop.edm == "Edm.Guid":
            return self.param(str(value), "uuid")
        return self.param(str(value), "text")

    def contains(self, expr: str, prop: Property, text: str, how: str) -> str:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {"contains": f"%{escaped}%", "startswith": f"{escaped}%", "endswith": f"%{escaped}"}[how]
        return f"{expr} LIKE {self.param(pattern, 'text')}"

    def ne(self, expr: str, param: str, nullable: bool) -> str:
        return f"{expr} IS DISTINCT FROM {param}" if nullable else f"{expr} <> {param}"


class ClickHouseDialect(Dialect):
    """ClickHouse's typed {name:Type} placeholders."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def param(self, value: Any, type_: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = array_text(value) if isinstance(value, list | tuple) else value
        return f"{{{name}:{type_}}}"

    def bind(self, prop: Property, value: Any) -> str:
        if prop.storage == "ch_time":
            return f"fromUnixTimestamp64Milli({self.param(int(value), 'Int64')}, 'UTC')"
        if prop.edm == "Edm.Int64":
            return (
                self.param(value, "Int64") if isinstance(value, int) else self.param(float(value), "Float64")
            )
        if prop.edm == "Edm.Double":
            return self.param(float(value), "Float64")
        return self.param(str(value), "String")

    def contains(self, expr: str, prop: Property, text: str, how: str) -> str:
        p = self.param(text, "String")
        return {
            "contains": f"position({expr}, {p}) > 0",
            "startswith": f"startsWith({expr}, {p})",
            "endswith": f"endsWith({expr}, {p})",
        }[how]

    def ne(self, expr: str, param: str, nullable: bool) -> str:
        return f"{expr} != {param}"


def array_text(values: list[Any] | tuple[Any, ...]) -> str:
    """The text form of an Array(String) parameter (what both ClickHouse adapters pass through)."""
    return "[" + ",".join("'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values) + "]"


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch (floor)."""
    return (moment - _EPOCH) // _MS


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH


def _literal_value(prop: Property, lit: Literal) -> tuple[Any, bool]:
    """(value in the property's storage domain, whether it is exact) or InvalidParameter.

    A DateTimeOffset literal finer than a millisecond on a millisecond column is not exact:
    the comparison then rounds in the right direction (see _compare).
    """
    kind, value = lit.kind, lit.value
    edm = prop.edm
    if edm == "Edm.String":
        if kind != "string":
            raise InvalidParameter(f"{prop.name} is Edm.String: compare it with a quoted string, e.g. 'x'")
        return value, True
    if edm == "Edm.Guid":
        if kind not in ("guid", "string"):
            raise InvalidParameter(f"{prop.name} is Edm.Guid: compare it with a GUID literal")
        try:
            return str(uuid.UUID(str(value))), True
        except ValueError:
            raise InvalidParameter(f"{value!r} is not a GUID") from None
    if edm == "Edm.DateTimeOffset":
        if kind != "datetime":
            raise InvalidParameter(
                f"{prop.name} is Edm.DateTimeOffset: compare it with e.g. 2024-05-01T00:00:00Z"
            )
        assert isinstance(value, datetime)
        if prop.storage == "tstz":
            return value, True
        ms = to_ms(value)
        return ms, value == _EPOCH + ms * _MS
    if edm in ("Edm.Int64", "Edm.Double"):
        if kind not in ("int", "float"):
            raise InvalidParameter(f"{prop.name} is {edm}: compare it with a number")
        if edm == "Edm.Int64" and kind == "int":
            assert isinstance(value, int)
            if not _INT64[0] <= value <= _INT64[1]:
                raise InvalidParameter(f"{value} is out of the Edm.Int64 range")
        return value, True
    raise InvalidParameter(f"{prop.name} cannot be compared")  # pragma: no cover


@dataclass
class FilterCompiler:
    """Compiles one $filter tree for an entity set in a dialect."""

    entity_set: EntitySet
    dialect: Dialect

    def prop(self, name: str) -> Property:
        found = self.entity_set.property(name)
        if found is None:
            raise InvalidParameter(
                f"{self.entity_set.name} has no property {name!r}"
                f" (properties: {', '.join(p.name for p in self.entity_set.properties)})"
            )
        return found

    def predicate(self, node: Node) -> str:
        if isinstance(node, BoolOp):
            return f"({self.predicate(node.left)} {node.op.upper()} {self.predicate(node.right)})"
        if isinstance(node, Not):
            return f"(NOT {self.predicate(node.operand)})"
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, Call):
            return self._call(node)
        if isinstance(node, Literal) and node.kind == "bool":
            return "TRUE" if node.value else "FALSE"
        if isinstance(node, Prop):
            raise InvalidParameter(f"invalid $filter: {node.name} is not a boolean property")
        raise InvalidParameter("invalid $filter: expected a condition")

    def _call(self, node: Call) -> str:
        target, text = node.args
        if not isinstance(target, Prop) or not isinstance(text, Literal) or text.kind != "string":
            raise InvalidParameter(f"invalid $filter: {node.name}(Property, 'text') is the supported form")
        prop = self.prop(target.name)
        if prop.edm != "Edm.String":
            raise InvalidParameter(
                f"invalid $filter: {node.name} needs a string property, {prop.name} is {prop.edm}"
            )
        assert isinstance(text.value, str)
        return self.dialect.contains(prop.expr, prop, text.value, node.name)

    def _compare(self, node: Compare) -> str:
        left, right, op = node.left, node.right, node.op
        if isinstance(left, Call) or isinstance(right, Call):  # contains(...) eq true
            call, other = (left, right) if isinstance(left, Call) else (right, left)
            if not isinstance(call, Call) or not (isinstance(other, Literal) and other.kind == "bool"):
                raise InvalidParameter(f"invalid $filter: {op} of a function needs true or false")
            truth = bool(other.value) == (op == "eq")
            if op not in ("eq", "ne"):
                raise InvalidParameter(f"invalid $filter: {op} does not apply to booleans")
            sql = self._call(call)
            return sql if truth else f"(NOT {sql})"
        if isinstance(left, Prop) and isinstance(right, Prop):
            a, b = self.prop(left.name), self.prop(right.name)
            if a.edm != b.edm or a.storage != b.storage:
                raise InvalidParameter(
                    f"invalid $filter: {a.name} ({a.edm}) and {b.name} ({b.edm}) differ in type"
                )
            return f"({a.expr} {_SQL_OPS[op]} {b.expr})"
        if isinstance(right, Prop) and isinstance(left, Literal):
            left, right, op = right, left, _FLIP[op]
        if not isinstance(left, Prop) or not isinstance(right, Literal):
            raise InvalidParameter("invalid $filter: a comparison needs a property on at least one side")
        prop = self.prop(left.name)
        expr = prop.expr
        if right.kind == "null":
            if op == "eq":
                return f"({expr} IS NULL)"
            if op == "ne":
                return f"({expr} IS NOT NULL)"
            return "FALSE"  # null is neither greater nor smaller than anything
        value, exact = _literal_value(prop, right)
        if isinstance(value, float) and math.isnan(value):
            # NaN equals nothing, is ordered against nothing (as in OData / IEEE).
            if op == "ne":
                return "TRUE"
            return "FALSE"
        if not exact:  # a sub-millisecond literal on a millisecond column
            if op == "eq":
                return "FALSE"
            if op == "ne":
                return "TRUE" if not prop.nullable else f"({expr} IS NOT NULL)"
            # x > 1.5ms <=> x >= 2 <=> x > 1; x < 1.5ms <=> x <= 1 ...
            op = {"gt": "gt", "ge": "gt", "lt": "le", "le": "le"}[op]
        param = self.dialect.bind(prop, value)
        if op == "ne":
            return f"({self.dialect.ne(expr, param, prop.nullable)})"
        return f"({expr} {_SQL_OPS[op]} {param})"


@dataclass(frozen=True, slots=True)
class SortColumn:
    """One ORDER BY term of a page query (NULLs sort as the greatest value)."""

    prop: Property
    descending: bool

    def order_sql(self, store: str) -> str:
        if self.descending:
            return f"{self.prop.expr} DESC" + (" NULLS FIRST" if self.prop.nullable else "")
        return f"{self.prop.expr} ASC" + (" NULLS LAST" if self.prop.nullable else "")


def sort_columns(entity_set: EntitySet, order: list[OrderItem]) -> list[SortColumn]:
    """$orderby, then the key properties (ascending) not already in it: a total order."""
    columns: list[SortColumn] = []
    seen: set[str] = set()
    for item in order:
        prop = entity_set.property(item.name)
        if prop is None:
            raise InvalidParameter(f"invalid $orderby: {entity_set.name} has no property {item.name!r}")
        if prop.name in seen:
            continue
        if prop.name == "Body":
            raise InvalidParameter("invalid $orderby: Body cannot be sorted on")
        seen.add(prop.name)
        columns.append(SortColumn(prop, item.descending))
    for key in entity_set.keys:
        if key not in seen:
            prop = entity_set.property(key)
            assert prop is not None
            columns.append(SortColumn(prop, False))
    return columns


def after(columns: list[SortColumn], position: list[Any], dialect: Dialect, row_values: bool) -> str:
    """SQL: the row sorts strictly after `position` (the last row served) in `columns`' order.

    `row_values`: use a row comparison `(a, b) > ($1, $2)` when every column is ascending
    and not nullable (Postgres reads it as an index range).
    """
    if row_values and all(not c.descending and not c.prop.nullable for c in columns):
        exprs = ", ".join(c.prop.expr for c in columns)
        params = ", ".join(dialect.bind(c.prop, v) for c, v in zip(columns, position, strict=True))
        return f"(({exprs}) > ({params}))"
    terms: list[str] = []
    equal: list[str] = []
    for column, value in zip(columns, position, strict=True):
        e = column.prop.expr
        if value is None:
            later = None if not column.descending else f"{e} IS NOT NULL"
            same = f"{e} IS NULL"
        else:
            p = dialect.bind(column.prop, value)
            if column.descending:
                later = f"{e} < {p}"
            else:
                later = f"({e} > {p} OR {e} IS NULL)" if column.prop.nullable else f"{e} > {p}"
            same = f"{e} = {p}"
        if later is not None:
            terms.append("(" + " AND ".join([*equal, later]) + ")")
        equal.append(same)
    return "(" + " OR ".join(terms) + ")" if terms else "FALSE"
