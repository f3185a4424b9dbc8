"""MLflow's logged-models/search grammar: `filter` and `order_by` parsed into typed terms.

Pure (no database): models_repository.py compiles the result to SQL. Mirrors
mlflow.utils.search_logged_model_utils and SqlAlchemyStore.search_logged_models: AND-ed
comparisons on attributes (unprefixed or `attributes.`), `metrics.`, `params.` and `tags.`;
numeric attributes and metrics take < <= > >= = !=, the rest = != LIKE ILIKE IN NOT IN.
A metric condition holds when any point linked to the model satisfies it (MLflow's rule);
ordering by a metric uses the model's latest point (by timestamp, then step).

Deliberate differences: `status` compares with the status name ('READY' or
'LOGGED_MODEL_READY'; MLflow's SQL store compares its integer column), and every malformed
filter is an InvalidParameter (MLflow can fail with an internal error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from services.api.errors import InvalidParameter
from services.api.mlflow.search import _number, _string_literal, _tokenize

Kind = Literal["attribute", "metric", "param", "tag"]
_PREFIXES: dict[str, Kind] = {
    "attributes": "attribute",
    "metrics": "metric",
    "params": "param",
    "tags": "tag",
}
ALIASES = {
    "creation_time": "creation_timestamp_ms",
    "creation_timestamp": "creation_timestamp_ms",
    "last_updated_timestamp": "last_updated_timestamp_ms",
}
NUMERIC_ATTRIBUTES = frozenset({"creation_timestamp_ms", "last_updated_timestamp_ms"})
STRING_ATTRIBUTES = frozenset(
    {
        "model_id",
        "experiment_id",
        "name",
        "artifact_location",
        "status",
        "lifecycle_stage",
        "model_type",
        "source_run_id",
    }
)
_NUMERIC_OPS = frozenset({"<", "<=", ">", ">=", "=", "!="})
_STRING_OPS = frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"})
STATUSES = (
    "LOGGED_MODEL_STATUS_UNSPECIFIED",
    "LOGGED_MODEL_PENDING",
    "LOGGED_MODEL_READY",
    "LOGGED_MODEL_UPLOAD_FAILED",
)

Value = float | str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    """One AND-ed comparison: `value` is a float for numeric terms, a tuple for IN / NOT IN."""

    kind: Kind
    key: str
    op: str
    value: Value

    @property
    def numeric(self) -> bool:
        return self.kind == "metric" or (self.kind == "attribute" and self.key in NUMERIC_ATTRIBUTES)


@dataclass(frozen=True, slots=True)
class ModelOrder:
    """One order_by entry: an attribute column, or a metric (its latest point, on a dataset)."""

    kind: Literal["attribute", "metric"]
    key: str
    ascending: bool
    dataset_name: str | None = None
    dataset_digest: str | None = None


def status_name(value: str) -> str:
    """'READY' or 'LOGGED_MODEL_READY' (any case) -> 'LOGGED_MODEL_READY'; others unchanged."""
    upper = value.upper()
    if upper in STATUSES:
        return upper
    if f"LOGGED_MODEL_{upper}" in STATUSES:
        return f"LOGGED_MODEL_{upper}"
    return value


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '`"':
        return text[1:-1]
    return text


def _entity(identifier: str) -> tuple[Kind, str]:
    prefix, dot, rest = identifier.partition(".")
    if dot and not (prefix.startswith(("`", '"'))):
        kind = _PREFIXES.get(prefix)
        if kind is None:
            raise InvalidParameter(f"Invalid entity type: {prefix!r}. Expected one of {list(_PREFIXES)}.")
        key = _unquote(rest)
    else:
        kind, key = "attribute", _unquote(identifier)
    if not key:
        raise InvalidParameter(f"Invalid identifier {identifier!r}: the key is empty.")
    if kind == "attribute":
        key = ALIASES.get(key, key)
        if key not in NUMERIC_ATTRIBUTES | STRING_ATTRIBUTES:
            raise InvalidParameter(
                f"Invalid attribute key {key!r}. Expected one of {sorted(NUMERIC_ATTRIBUTES | STRING_ATTRIBUTES)}."
            )
    return kind, key


def parse_filter(text: str | None) -> list[Comparison]:
    """The AND-ed comparisons of a logged-models/search filter (empty: none)."""
    if text is None or not text.strip():
        return []
    tokens = _tokenize(text, "filter")
    comparisons: list[Comparison] = []
    i = 0

    def take(what: str) -> Any:
        nonlocal i
        if i >= len(tokens):
            raise InvalidParameter(f"Invalid filter string: {text!r}. Expected {what} but the filter ended.")
        i += 1
        return tokens[i - 1]

    while True:
        token = take("a comparison")
        if token.kind != "ident":
            raise InvalidParameter(
                f"Invalid filter string: {text!r}. Expected a list of comparisons separated by 'AND'"
                " (e.g. 'metrics.loss > 0.1 AND params.lr = 0.01')."
            )
        kind, key = _entity(token.text)
        op_token = take("a comparison operator")
        op = op_token.text.upper() if op_token.kind in ("op", "keyword") else ""
        if op == "NOT":
            if take("IN").text.upper() != "IN":
                raise InvalidParameter(f"Invalid comparison operator in {text!r}: expected NOT IN.")
            op = "NOT IN"
        op = {"==": "=", "<>": "!="}.get(op, op)
        comparison = Comparison(kind, key, op, "")
        allowed = _NUMERIC_OPS if comparison.numeric else _STRING_OPS
        if op not in allowed:
            raise InvalidParameter(
                f"Invalid comparison operator for {kind}s.{key}: {op_token.text!r}. Expected one of {sorted(allowed)}."
            )
        value: Value
        if op in ("IN", "NOT IN"):
            if take("a list").kind != "lparen":
                raise InvalidParameter(
                    f"Invalid filter string: {text!r}. Expected a parenthesized list after {op}."
                )
            items: list[str] = []
            while True:
                item = take("a quoted string")
                if item.kind != "string":
                    raise InvalidParameter(
                        f"Invalid filter string: {text!r}. Expected quoted strings in the list."
                    )
                items.append(_string_literal(item.text))
                sep = take("',' or ')'")
                if sep.kind == "rparen":
                    break
                if sep.kind != "comma":
                    raise InvalidParameter(f"Invalid filter string: {text!r}. Ill-formed list.")
            value = tuple(items)
        else:
            raw = take("a value")
            if comparison.numeric:
                if raw.kind != "number":
                    raise InvalidParameter(f"Expected a numeric value for {kind}s.{key}. Found {raw.text!r}.")
                value = float(_number(raw.text))
            elif raw.kind == "string" or (raw.kind == "ident" and raw.text[:1] == raw.text[-1:] == '"'):
                value = _string_literal(raw.text)
            else:
                raise InvalidParameter(
                    f"Expected a quoted string value for {kind}s.{key}. Found {raw.text!r}."
                )
        if kind == "attribute" and key == "status" and op in ("=", "!="):
            assert isinstance(value, str)
            value = status_name(value)
        elif kind == "attribute" and key == "status" and isinstance(value, tuple):
            value = tuple(status_name(v) for v in value)
        comparisons.append(Comparison(kind, key, op, value))
        if i >= len(tokens):
            return comparisons
        separator = take("AND")
        if not (separator.kind == "keyword" and separator.text.upper() == "AND"):
            raise InvalidParameter(
                f"Invalid filter string: {text!r}. Expected a list of comparisons separated by 'AND'"
                " (e.g. 'metrics.loss > 0.1 AND params.lr = 0.01')."
            )


def parse_order_by(entries: list[dict[str, Any]]) -> list[ModelOrder]:
    """MLflow's SearchLoggedModels.OrderBy entries: attributes (with aliases) or `metrics.<key>`."""
    orders: list[ModelOrder] = []
    for entry in entries:
        field = str(entry.get("field_name") or "")
        ascending = entry.get("ascending", True) is not False
        if "." not in field:
            key = ALIASES.get(field, field)
            if key not in NUMERIC_ATTRIBUTES | STRING_ATTRIBUTES:
                raise InvalidParameter(f"Invalid order by field name: {field}")
            orders.append(ModelOrder("attribute", key, ascending))
            continue
        entity, _, key = field.partition(".")
        if entity != "metrics" or not key:
            raise InvalidParameter(f"Invalid order by field name: {field}. Only metrics are supported.")
        orders.append(
            ModelOrder(
                "metric",
                _unquote(key),
                ascending,
                entry.get("dataset_name") or None,
                entry.get("dataset_digest") or None,
            )
        )
    return orders
