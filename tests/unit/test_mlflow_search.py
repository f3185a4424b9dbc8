"""MLflow's runs/search filter and order_by grammar (services/api/mlflow/search.py), and the
pure parts of its SQL compilation (no database needed)."""

from __future__ import annotations

import math

import pytest

from services.api.errors import InvalidParameter
from services.api.mlflow.search import (
    Condition,
    Entity,
    OrderKey,
    parse_filter,
    parse_order_by,
    with_tiebreakers,
)
from services.api.mlflow.search_repository import _Query, integer_bound

M, P, T, A, D = Entity.METRIC, Entity.PARAM, Entity.TAG, Entity.ATTRIBUTE, Entity.DATASET


def one(filter_string: str) -> Condition:
    conditions = parse_filter(filter_string)
    assert len(conditions) == 1
    return conditions[0]


# Filters -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   "])
def test_an_empty_filter_has_no_conditions(text: str | None) -> None:
    assert parse_filter(text) == []


@pytest.mark.parametrize("op", [">", ">=", "=", "!=", "<", "<="])
@pytest.mark.parametrize("prefix", ["metrics", "metric", "`metrics`"])
def test_metric_comparisons(prefix: str, op: str) -> None:
    assert one(f"{prefix}.acc {op} 0.5") == Condition(M, "acc", op, 0.5)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("1", 1.0),
        ("-2", -2.0),
        ("0.25", 0.25),
        (".5", 0.5),
        ("3.", 3.0),
        ("1e-3", 0.001),
        ("-1.5E+2", -150.0),
    ],
)
def test_numbers_negative_and_scientific(literal: str, value: float) -> None:
    c = one(f"metrics.loss<={literal}")
    assert c.value == value and isinstance(c.value, float)


@pytest.mark.parametrize("op", ["=", "!=", "LIKE", "ILIKE", "like", "ilike"])
@pytest.mark.parametrize(("prefix", "entity"), [("params", P), ("param", P), ("tags", T), ("tag", T)])
def test_param_and_tag_string_comparisons(prefix: str, entity: Entity, op: str) -> None:
    assert one(f"{prefix}.model {op} 'res%_'") == Condition(entity, "model", op.upper(), "res%_")


@pytest.mark.parametrize("prefix", ["parameters", "parameter"])
def test_long_param_prefixes(prefix: str) -> None:
    assert one(f"{prefix}.lr = '0.1'") == Condition(P, "lr", "=", "0.1")


@pytest.mark.parametrize("op", ["IS NULL", "IS NOT NULL", "is null", "is  not  null"])
def test_is_null_on_params_and_tags(op: str) -> None:
    expected = "IS NOT NULL" if "not" in op.lower() else "IS NULL"
    assert one(f"params.seed {op}") == Condition(P, "seed", expected, None)
    assert one(f"tags.team {op}") == Condition(T, "team", expected, None)


def test_values_in_single_or_double_quotes_with_escaped_quotes() -> None:
    assert one('params.a = "x y"').value == "x y"
    assert one("params.a = 'it''s'").value == "it's"
    assert one('params.a = "say ""hi"""').value == 'say "hi"'
    assert one(r"params.a LIKE '10\%'").value == r"10\%"  # backslashes stay: LIKE's escape


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tags.`mlflow.runName` = 'a'", "mlflow.runName"),
        ("tags.\"mlflow.runName\" = 'a'", "mlflow.runName"),
        ("tags.mlflow.runName = 'a'", "mlflow.runName"),  # MLflow splits on the first dot only
        ("params.`learning rate` = 'a'", "learning rate"),
        ("params.\"learning rate\" = 'a'", "learning rate"),
        ("metrics.`val/loss-1` = 1", "val/loss-1"),
        ("tags.v1.0 = 'a'", "v1.0"),
    ],
)
def test_quoted_and_dotted_keys(text: str, key: str) -> None:
    assert one(text).key == key


@pytest.mark.parametrize("prefix", ["", "attributes.", "attribute.", "attr.", "run."])
def test_attribute_prefixes(prefix: str) -> None:
    assert one(f"{prefix}status = 'FINISHED'") == Condition(A, "status", "=", "FINISHED")


@pytest.mark.parametrize(
    "key", ["run_name", "status", "user_id", "artifact_uri", "lifecycle_stage", "run_id"]
)
@pytest.mark.parametrize("op", ["=", "!=", "LIKE", "ILIKE"])
def test_string_attributes(key: str, op: str) -> None:
    assert one(f"attributes.{key} {op} 'v%'") == Condition(A, key, op, "v%")


@pytest.mark.parametrize("key", ["start_time", "end_time", "created", "Created"])
@pytest.mark.parametrize("op", [">", ">=", "=", "!=", "<", "<="])
def test_numeric_attributes_and_created_alias(key: str, op: str) -> None:
    c = one(f"attributes.{key} {op} 1700000000000")
    canonical = "start_time" if key.lower() == "created" else key
    assert c == Condition(A, canonical, op, 1_700_000_000_000)
    assert isinstance(c.value, int)  # exact: a float would round large timestamps


@pytest.mark.parametrize("text", ["`Run name` = 'x'", "attributes.\"run name\" = 'x'", "`Run Name` = 'x'"])
def test_run_name_alias(text: str) -> None:
    assert one(text) == Condition(A, "run_name", "=", "x")


def test_run_id_in_and_not_in() -> None:
    assert one("attributes.run_id IN ('a', 'b')") == Condition(A, "run_id", "IN", ("a", "b"))
    assert one("run_id not in ('a')") == Condition(A, "run_id", "NOT IN", ("a",))
    assert one("run_id IN ('a','b',\t'c')").value == ("a", "b", "c")


@pytest.mark.parametrize("key", ["name", "digest", "context"])
@pytest.mark.parametrize("op", ["=", "!=", "LIKE", "ILIKE"])
def test_dataset_conditions(key: str, op: str) -> None:
    assert one(f"datasets.{key} {op} 'v'") == Condition(D, key, op, "v")
    assert one(f"dataset.{key} IN ('a', 'b')") == Condition(D, key, "IN", ("a", "b"))


def test_and_of_many_clauses_case_insensitive_keyword() -> None:
    conditions = parse_filter(
        "metrics.acc > 0.9 AND params.lr = '0.01' and tags.team ILIKE 'ML%'"
        "  AND status != 'FAILED' AND start_time >= 5 AND run_id IN ('x') AND datasets.name = 'd'"
    )
    assert [c.entity for c in conditions] == [M, P, T, A, A, A, D]


def test_no_spaces_needed() -> None:
    assert parse_filter("metrics.a>=1 AND params.b='x'") == [
        Condition(M, "a", ">=", 1.0),
        Condition(P, "b", "=", "x"),
    ]


# Filter errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics.a > 1 OR metrics.b > 1", "Only AND is supported"),
        ("metrics.a > 1 or metrics.b > 1", "Only AND is supported"),
        ("OR metrics.a > 1", "Only AND is supported"),
        ("(metrics.a > 1)", "Expected 'Identifier'"),
        ("metrics.a > 1 metrics.b > 1", "Expected 'AND'"),
        ("metrics.a > 1 AND", "filter ended"),
        ("metrics.a >", "filter ended"),
        ("metrics.a", "filter ended"),
        ("foo.a = 'x'", "Invalid entity type 'foo'"),
        ("nope = 'x'", "Invalid attribute key 'nope'"),
        ("attributes.experiment_id = '1'", "Invalid attribute key 'experiment_id'"),
        ("datasets.size = 'x'", "Invalid dataset key 'size'"),
        ("metrics.a > 'x'", "Expected numeric value type for metric"),
        ("metrics.a > x", "Expected numeric value type for metric"),
        ("metrics.a LIKE 1", "Invalid comparator 'LIKE'"),
        ("metrics.a IS NULL", "Invalid comparator 'IS NULL'"),
        ("metrics.a <> 1", "Invalid comparator '<>'"),
        ("metrics.a == 1", "Invalid comparator '=='"),
        ("params.a = 1", "Expected a quoted string value for parameter"),
        ("tags.a = abc", "Expected a quoted string value for tag"),
        ("params.a > 'x'", "Invalid comparator '>'"),
        ("params.a IN ('x')", "Invalid comparator 'IN'"),
        ("params.a IS 'x'", "Expected comparison found 'IS'"),
        ("params.a NOT LIKE 'x'", "Expected comparison found 'NOT'"),
        ("start_time > '1'", "Expected numeric value type for numeric attribute: start_time"),
        ("start_time LIKE 1", "Invalid comparator 'LIKE'"),
        ("status > 'a'", "Invalid comparator '>'"),
        ("status = 1", "Expected a quoted string value for attributes"),
        ("status IN ('a')", "Only the 'run_id' attribute supports"),
        ("run_id = ('a')", "Only the 'run_id' attribute supports"),
        ("run_id IN ()", "but got empty list"),
        ("run_id IN ('a' 'b')", "ill-formed list"),
        ("run_id IN ('a', 1)", "different type in list"),
        ("run_id IN 'a'", "expected a non-empty list"),
        ("run_id IN ('a'", "filter ended"),
        ("datasets.name = 1", "Expected a quoted string value for dataset"),
        ("params.a = 'unterminated", "Unterminated quote"),
        ("params.`a = 'x'", "Unterminated quote"),
        ("params.a = 'x'; DROP TABLE runs", "Unexpected character ';'"),
        ("metrics. > 1", "Unexpected character '.'"),
        ("params.a = 'x' AND ()", "Expected 'Identifier'"),
    ],
)
def test_malformed_filters_are_invalid_parameters(text: str, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message) as raised:
        parse_filter(text)
    assert raised.value.status_code == 400 and raised.value.error_code == "INVALID_PARAMETER_VALUE"


# order_by ------------------------------------------------------------------------------


def test_order_by_keys() -> None:
    assert parse_order_by(
        [
            "metrics.acc DESC",
            "params.lr asc",
            "tags.`mlflow.runName`",
            "start_time DESC",
            "attributes.run_name",
            "created ASC",
            "attr.end_time desc",
            "run.status",
            "experiment_id",
            'metrics."val loss" DESC',
        ]
    ) == [
        OrderKey(M, "acc", False),
        OrderKey(P, "lr", True),
        OrderKey(T, "mlflow.runName", True),
        OrderKey(A, "start_time", False),
        OrderKey(A, "run_name", True),
        OrderKey(A, "start_time", True),
        OrderKey(A, "end_time", False),
        OrderKey(A, "status", True),
        OrderKey(A, "experiment_id", True),
        OrderKey(M, "val loss", False),
    ]


def test_no_order_by() -> None:
    assert parse_order_by(None) == [] and parse_order_by([]) == [] and parse_order_by([" "]) == []


@pytest.mark.parametrize(
    ("clause", "message"),
    [
        ("metrics.acc DOWN", "Invalid ordering key"),
        ("metrics.acc DESC NULLS", "Could not be parsed"),
        ("metrics.acc, params.lr", "Could not be parsed"),
        ("'acc' DESC", "Could not be parsed"),
        ("foo.acc", "Invalid entity type 'foo'"),
        ("nope DESC", "Invalid attribute key 'nope'"),
        ("datasets.name", "Invalid order_by entity type 'dataset'"),
        ("metrics.`acc", "Unterminated quote"),
    ],
)
def test_malformed_order_by(clause: str, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        parse_order_by([clause])


def test_tiebreakers_follow_mlflow() -> None:
    start_desc, run_id = OrderKey(A, "start_time", False), OrderKey(A, "run_id", True)
    assert with_tiebreakers([]) == [start_desc, run_id]
    acc = OrderKey(M, "acc", False)
    assert with_tiebreakers([acc]) == [acc, start_desc, run_id]
    start_asc = OrderKey(A, "start_time", True)
    assert with_tiebreakers([start_asc]) == [start_asc, run_id]
    run_desc = OrderKey(A, "run_id", False)
    assert with_tiebreakers([run_desc]) == [run_desc, start_desc]


# SQL compilation (pure parts) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("comparator", "value", "expected"),
    [
        (">", 5, (">", 5)),
        (">", 1.5, (">", 1)),
        (">=", 1.5, (">=", 2)),
        ("<", 1.5, ("<", 2)),
        ("<=", 1.5, ("<=", 1)),
        (">", -1.5, (">", -2)),
        ("=", 1.5, False),
        ("!=", 1.5, True),
        ("=", 2.0, ("=", 2)),
        (">", 1e30, (">", 2**63 - 1)),
        ("<", -1e30, ("<", -(2**63))),
        (">", math.inf, False),
        ("<", math.inf, True),
        (">=", -math.inf, True),
        ("<=", -math.inf, False),
    ],
)
def test_integer_bounds_of_numeric_attribute_comparisons(
    comparator: str, value: float, expected: tuple[str, int] | bool
) -> None:
    assert integer_bound(comparator, value) == expected


def test_values_are_bound_never_spliced() -> None:
    conditions = parse_filter(
        "params.`x'; DROP TABLE runs; --` = 'y''; DROP TABLE runs; --' AND metrics.m > 1"
        " AND run_id IN ('a') AND datasets.context = 'c' AND start_time > 3"
    )
    query = _Query("tenant-zq")
    for c in conditions:
        query.condition(c)
    for key in with_tiebreakers(parse_order_by(["tags.`t'x` DESC"])):
        query.order(key)
    sql = query.sql(10)
    assert "DROP" not in sql and "t'x" not in sql and "tenant-zq" not in sql
    assert "x'; DROP TABLE runs; --" in query.where.args
    assert "y'; DROP TABLE runs; --" in query.where.args


def test_keyset_after_the_default_order_is_index_friendly() -> None:
    query = _Query("t")
    for key in with_tiebreakers([]):
        query.order(key)
    query.after([100, "r1"])
    assert (
        query.where.sql == "((r.start_time < $2::int8) OR (r.start_time = $2::int8 AND r.run_id > $3::text))"
    )
