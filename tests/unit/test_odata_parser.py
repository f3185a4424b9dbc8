"""The OData $filter/$orderby/$select parser and its SQL compilation (no database)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.api.errors import InvalidParameter
from services.api.odata.compile import ClickHouseDialect, FilterCompiler, PostgresDialect, after, sort_columns
from services.api.odata.model import FINDINGS, METRIC_POINTS_SET, RUNS
from services.api.odata.parser import (
    BoolOp,
    Call,
    Compare,
    Literal,
    Not,
    OrderItem,
    Prop,
    parse_filter,
    parse_orderby,
    parse_select,
)


def test_precedence_and_literals() -> None:
    tree = parse_filter("not Name eq 'it''s' or Step gt 5 and Value le -1.5e3")
    assert tree == BoolOp(
        "or",
        Not(Compare("eq", Prop("Name"), Literal("string", "it's"))),
        BoolOp(
            "and",
            Compare("gt", Prop("Step"), Literal("int", 5)),
            Compare("le", Prop("Value"), Literal("float", -1500.0)),
        ),
    )
    assert parse_filter("(contains(Name, 'x'))") == Call("contains", (Prop("Name"), Literal("string", "x")))
    moment = parse_filter("StartTime ge 2024-05-01T02:00:00.123456789+02:00")
    assert isinstance(moment, Compare) and moment.right == Literal(
        "datetime", datetime(2024, 5, 1, 0, 0, 0, 123456, tzinfo=UTC)
    )
    date = parse_filter("StartTime lt 2024-05-01")
    assert isinstance(date, Compare) and date.right == Literal("datetime", datetime(2024, 5, 1, tzinfo=UTC))
    guid = parse_filter("EventId eq ABCDEF01-2345-6789-abcd-ef0123456789")
    assert isinstance(guid, Compare) and guid.right == Literal("guid", "abcdef01-2345-6789-abcd-ef0123456789")
    inf = parse_filter("Value eq -INF")
    assert isinstance(inf, Compare) and inf.right == Literal("float", -math.inf)
    assert parse_filter("Step eq 5L") == Compare("eq", Prop("Step"), Literal("int", 5))
    assert parse_filter("  ") is None


@pytest.mark.parametrize(
    "text",
    [
        "Name eq",
        "Name eq 'x",
        "Name eq 'x' Name",
        "Step add 1 eq 2",
        "tolower(Name) eq 'x'",
        "Tags/any(t: t eq 'x')",
        "Name eq @alias",
        "((((Name eq 'x')",
        "contains(Name)",
        "StartTime gt 2024-13-45T00:00:00Z",
        "eq eq eq",
    ],
)
def test_malformed_filters_are_invalid_parameters(text: str) -> None:
    with pytest.raises(InvalidParameter):
        FilterCompiler(RUNS, PostgresDialect()).predicate(parse_filter(text))  # type: ignore[arg-type]


def test_postgres_compilation_binds_every_literal() -> None:
    pg = PostgresDialect()
    sql = FilterCompiler(RUNS, pg).predicate(
        parse_filter("Name eq 'x''; DROP' and EndTime eq null and startswith(Name, '50%_')")  # type: ignore[arg-type]
    )
    assert "DROP" not in sql and "50%" not in sql
    assert pg.args == ["x'; DROP", "50\\%\\_%"]
    assert "r.end_time IS NULL" in sql
    # DateTimeOffset over a millisecond column: compared in milliseconds, sub-ms rounds correctly
    pg = PostgresDialect()
    sql = FilterCompiler(RUNS, pg).predicate(parse_filter("StartTime gt 1970-01-01T00:00:01.0005Z"))  # type: ignore[arg-type]
    assert sql == "(r.start_time > $1::int8)" and pg.args == [1000]
    pg = PostgresDialect()
    sql = FilterCompiler(RUNS, pg).predicate(parse_filter("EndTime ne 1970-01-01T00:00:01Z"))  # type: ignore[arg-type]
    assert sql == "(r.end_time IS DISTINCT FROM $1::int8)"
    pg = PostgresDialect()
    sql = FilterCompiler(FINDINGS, pg).predicate(parse_filter("2024-01-01T00:00:00Z le OccurredAt"))  # type: ignore[arg-type]
    assert sql == "(f.occurred_at >= $1::timestamptz)"


def test_type_errors() -> None:
    for text, message in [
        ("Name eq 1", "Edm.String"),
        ("Step eq 'x'", "number"),
        ("StartTime eq 5", "DateTimeOffset"),
        ("contains(Step, '1')", "string property"),
        ("Missing eq 1", "no property"),
        ("Name", "not a boolean"),
        ("1 eq 1", "property"),
    ]:
        with pytest.raises(InvalidParameter, match=message):
            FilterCompiler(METRIC_POINTS_SET if "Step" in text else RUNS, PostgresDialect()).predicate(
                parse_filter(text)  # type: ignore[arg-type]
            )


def test_clickhouse_compilation() -> None:
    ch = ClickHouseDialect()
    sql = FilterCompiler(METRIC_POINTS_SET, ch).predicate(
        parse_filter("Timestamp ge 2024-01-01T00:00:00Z and contains(Key, 'loss') and Value ne 1")  # type: ignore[arg-type]
    )
    assert sql == (
        "(((timestamp >= fromUnixTimestamp64Milli({p0:Int64}, 'UTC')) AND position(key, {p1:String}) > 0)"
        " AND (value != {p2:Float64}))"
    )
    assert ch.params == {"p0": 1_704_067_200_000, "p1": "loss", "p2": 1.0}


def test_orderby_select_and_keyset() -> None:
    assert parse_orderby("Name desc, StartTime") == [OrderItem("Name", True), OrderItem("StartTime", False)]
    assert parse_select("RunId, Name,RunId") == ["RunId", "Name"]
    assert parse_select("*") is None
    with pytest.raises(InvalidParameter):
        parse_orderby("Name up")
    columns = sort_columns(RUNS, parse_orderby("EndTime desc"))
    assert [c.prop.name for c in columns] == ["EndTime", "RunId"]
    pg = PostgresDialect()
    assert after(columns, [None, "r1"], pg, row_values=True) == (
        "((r.end_time IS NOT NULL) OR (r.end_time IS NULL AND r.run_id > $1::text))"
    )
    pg = PostgresDialect()
    assert after(sort_columns(RUNS, []), ["r1"], pg, row_values=True) == "((r.run_id) > ($1::text))"
