"""MLflow's runs/search grammar: `filter` and `order_by` parsed into typed conditions and keys.

Pure (no database, no web framework): search_repository.py compiles the result to SQL.
Mirrors mlflow.utils.search_utils.SearchUtils (what entities, keys, comparators and value
types each prefix allows, and its error messages), with a hand-written lexer instead of
sqlparse, so every malformed filter is an InvalidParameter, never a crash.

Deliberate differences: `''` inside a single-quoted string is an escaped quote (MLflow
keeps both characters), and `IS NULL` / `IS NOT NULL` are accepted on params and tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from services.api.errors import InvalidParameter


class Entity(StrEnum):
    """What a filter or order key is about (MLflow's canonical identifier names)."""

    METRIC = "metric"
    PARAM = "parameter"
    TAG = "tag"
    ATTRIBUTE = "attribute"
    DATASET = "dataset"


_ENTITY_ALIASES: dict[str, Entity] = {
    "metric": Entity.METRIC,
    "metrics": Entity.METRIC,
    "parameter": Entity.PARAM,
    "parameters": Entity.PARAM,
    "param": Entity.PARAM,
    "params": Entity.PARAM,
    "tag": Entity.TAG,
    "tags": Entity.TAG,
    "attribute": Entity.ATTRIBUTE,
    "attributes": Entity.ATTRIBUTE,
    "attr": Entity.ATTRIBUTE,
    "run": Entity.ATTRIBUTE,
    "dataset": Entity.DATASET,
    "datasets": Entity.DATASET,
}
_ENTITY_NAMES = [e.value for e in Entity]

NUMERIC_ATTRIBUTES = frozenset({"start_time", "end_time"})
STRING_ATTRIBUTES = frozenset({"run_id", "run_name", "user_id", "status", "artifact_uri", "lifecycle_stage"})
# experiment_id can be ordered by, not filtered on (experiment_ids is its own request field).
ORDERABLE_ATTRIBUTES = NUMERIC_ATTRIBUTES | STRING_ATTRIBUTES | {"experiment_id"}
_ATTRIBUTE_ALIASES = {
    "created": "start_time",
    "Created": "start_time",
    "run name": "run_name",
    "Run name": "run_name",
    "Run Name": "run_name",
}
DATASET_KEYS = frozenset({"name", "digest", "context"})

NUMERIC_COMPARATORS = frozenset({">", ">=", "=", "!=", "<", "<="})
_STRING_COMPARATORS = frozenset({"=", "!=", "LIKE", "ILIKE"})
_KEY_VALUE_COMPARATORS = _STRING_COMPARATORS | {"IS NULL", "IS NOT NULL"}
_LIST_COMPARATORS = frozenset({"IN", "NOT IN"})
_DATASET_COMPARATORS = _STRING_COMPARATORS | _LIST_COMPARATORS

Value = float | int | str | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Condition:
    """One AND-ed comparison. `key` is canonical (aliases resolved); `value` is a float for
    metrics, an int or float for start_time/end_time, a tuple for IN / NOT IN, None for
    IS [NOT] NULL, else a string."""

    entity: Entity
    key: str
    comparator: str
    value: Value


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One `order_by` entry (entity is never DATASET)."""

    entity: Entity
    key: str
    ascending: bool


DEFAULT_ORDER = (
    OrderKey(Entity.ATTRIBUTE, "start_time", ascending=False),
    OrderKey(Entity.ATTRIBUTE, "run_id", ascending=True),
)


def with_tiebreakers(order: list[OrderKey]) -> list[OrderKey]:
    """`order` then start_time DESC and run_id ASC unless already ordered by (MLflow's rule):
    run_id last makes the order total, which keyset paging needs."""
    keys = list(order)
    for default in DEFAULT_ORDER:
        if not any(k.entity is Entity.ATTRIBUTE and k.key == default.key for k in keys):
            keys.append(default)
    return keys


# Lexer ---------------------------------------------------------------------------------

_QUOTED_PART = r'"(?:[^"]|"")*"|`[^`]*`'
_IDENT = rf"(?:[A-Za-z_]\w*|{_QUOTED_PART})(?:\.(?:\w+|{_QUOTED_PART}))*"
_TOKEN = re.compile(
    rf"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
  | (?P<ident>{_IDENT})
  | (?P<op>>=|<=|!=|<>|==|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
    """,
    re.VERBOSE,
)
_PART = re.compile(rf"[A-Za-z_]\w*|\w+|{_QUOTED_PART}")
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS", "NULL"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # string | number | ident | keyword | op | lparen | rparen | comma
    text: str
    pos: int


def _tokenize(text: str, what: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            quote_at = pos + 1 if text[pos] == "." else pos
            if text[quote_at : quote_at + 1] in ("'", '"', "`"):
                raise InvalidParameter(f"Invalid {what} '{text}'. Unterminated quote at position {quote_at}.")
            raise InvalidParameter(
                f"Invalid {what} '{text}'. Unexpected character {text[pos]!r} at position {pos}."
            )
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            word = m.group()
            if kind == "ident" and word.upper() in _KEYWORDS:
                kind = "keyword"
            tokens.append(_Token(kind, word, pos))
        pos = m.end()
    return tokens


def _unquote(part: str) -> str:
    if len(part) >= 2 and part[0] == part[-1] == '"':
        return part[1:-1].replace('""', '"')
    if len(part) >= 2 and part[0] == part[-1] == "`":
        return part[1:-1]
    return part


def _identifier(text: str, valid_attributes: frozenset[str]) -> tuple[Entity, str]:
    """(entity, canonical key) of `metrics.acc`, ``params.`a b` ``, `tags.mlflow.runName`,
    `status`, `"run name"`... (no prefix: an attribute; the key is all after the first dot)."""
    parts = [m.group() for m in _PART.finditer(text)]
    if len(parts) == 1:
        entity, key = Entity.ATTRIBUTE, _unquote(parts[0])
    else:
        prefix = _unquote(parts[0])
        found = _ENTITY_ALIASES.get(prefix)
        if found is None:
            raise InvalidParameter(f"Invalid entity type '{prefix}'. Valid values are {_ENTITY_NAMES}")
        entity = found
        rest = parts[1:]
        key = _unquote(rest[0]) if len(rest) == 1 else ".".join(_unquote(p) for p in rest)
    if entity is Entity.ATTRIBUTE:
        key = _ATTRIBUTE_ALIASES.get(key, key)
        if key not in valid_attributes:
            raise InvalidParameter(
                f"Invalid attribute key '{key}' specified. Valid keys are '{sorted(valid_attributes)}'"
            )
    elif entity is Entity.DATASET and key not in DATASET_KEYS:
        raise InvalidParameter(
            f"Invalid dataset key '{key}' specified. Valid keys are '{sorted(DATASET_KEYS)}'"
        )
    elif not key:
        raise InvalidParameter(f"Invalid identifier '{text}': the {entity.value} key is empty.")
    return entity, key


def _string_literal(token: str) -> str:
    """Content of 'x' or "x" ('' and "" are escaped quotes; backslashes stay for LIKE)."""
    quote = token[0]
    return token[1:-1].replace(quote * 2, quote)


def _number(text: str) -> float | int:
    """An integer literal stays exact (timestamps); anything else is a float."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text)


# Filter parser ---------------------------------------------------------------------------


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text, "filter")
        self.i = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self, expected: str) -> _Token:
        token = self._peek()
        if token is None:
            raise InvalidParameter(f"Invalid filter '{self.text}'. Expected {expected} but the filter ended.")
        self.i += 1
        return token

    def _is_keyword(self, token: _Token | None, *words: str) -> bool:
        return token is not None and token.kind == "keyword" and token.text.upper() in words

    def _rest(self, token: _Token) -> str:
        return self.text[token.pos :].strip()

    def parse(self) -> list[Condition]:
        conditions = [self._clause()]
        while (token := self._peek()) is not None:
            if self._is_keyword(token, "AND"):
                self.i += 1
                conditions.append(self._clause())
            elif self._is_keyword(token, "OR"):
                raise InvalidParameter(
                    f"Invalid clause(s) in filter string: 'OR'. Only AND is supported: "
                    f"'{self.text}' (run one search per alternative instead)."
                )
            else:
                raise InvalidParameter(
                    f"Invalid clause(s) in filter string: '{self._rest(token)}'. "
                    "Expected 'AND' between comparisons."
                )
        return conditions

    def _clause(self) -> Condition:
        token = self._next("a comparison")
        if token.kind != "ident":
            if self._is_keyword(token, "OR"):
                raise InvalidParameter(
                    f"Invalid clause(s) in filter string: 'OR'. Only AND is supported: '{self.text}'."
                )
            raise InvalidParameter(
                f"Invalid comparison clause. Expected 'Identifier' found '{token.text}' in '{self.text}'"
            )
        entity, key = _identifier(token.text, STRING_ATTRIBUTES | NUMERIC_ATTRIBUTES)
        comparator = self._comparator()
        _check_comparator(entity, key, comparator)
        if comparator in ("IS NULL", "IS NOT NULL"):
            return Condition(entity, key, comparator, None)
        if comparator in _LIST_COMPARATORS:
            return Condition(entity, key, comparator, self._string_list())
        return Condition(entity, key, comparator, self._value(entity, key))

    def _comparator(self) -> str:
        token = self._next("a comparator")
        if token.kind == "op":
            return token.text
        word = token.text.upper() if token.kind == "keyword" else ""
        if word in ("LIKE", "ILIKE", "IN"):
            return word
        if word == "NOT" and self._is_keyword(self._peek(), "IN"):
            self.i += 1
            return "NOT IN"
        if word == "IS":
            negated = self._is_keyword(self._peek(), "NOT")
            if negated:
                self.i += 1
            if self._is_keyword(self._peek(), "NULL"):
                self.i += 1
                return "IS NOT NULL" if negated else "IS NULL"
        raise InvalidParameter(
            f"Invalid comparison clause. Expected comparison found '{token.text}' in '{self.text}'"
        )

    def _value(self, entity: Entity, key: str) -> Value:
        token = self._next("a value")
        # A double-quoted word is an identifier to the lexer but a string value here (as in MLflow).
        is_string = token.kind == "string" or (
            token.kind == "ident" and len(token.text) >= 2 and token.text[0] == token.text[-1] == '"'
        )
        if entity is Entity.METRIC or (entity is Entity.ATTRIBUTE and key in NUMERIC_ATTRIBUTES):
            if token.kind != "number":
                if entity is Entity.METRIC:
                    raise InvalidParameter(f"Expected numeric value type for metric. Found {token.text}")
                raise InvalidParameter(
                    f"Expected numeric value type for numeric attribute: {key}. Found {token.text}"
                )
            number = _number(token.text)
            return float(number) if entity is Entity.METRIC else number
        if not is_string:
            if token.kind == "lparen":
                raise InvalidParameter(
                    "Only the 'run_id' attribute supports comparison with a list of quoted string values."
                )
            if entity is Entity.ATTRIBUTE:
                raise InvalidParameter(
                    f"Expected a quoted string value for attributes. Got value {token.text}"
                )
            if entity is Entity.DATASET:
                raise InvalidParameter(
                    f"Expected a quoted string value for dataset attributes. Got value {token.text}"
                )
            raise InvalidParameter(
                f"Expected a quoted string value for {entity.value} (e.g. 'my-value'). Got value {token.text}"
            )
        return _string_literal(token.text)

    def _string_list(self) -> tuple[str, ...]:
        token = self._next("a list of quoted strings")
        if token.kind != "lparen":
            raise InvalidParameter(
                "While parsing a list in the query, expected a non-empty list of string values, "
                f"but got '{token.text}'."
            )
        values: list[str] = []
        while True:
            token = self._next("a quoted string or ')'")
            if token.kind == "rparen" and not values:
                raise InvalidParameter(
                    "While parsing a list in the query, expected a non-empty list of string values, "
                    "but got empty list"
                )
            if token.kind != "string":
                raise InvalidParameter(
                    "While parsing a list in the query, expected string value, punctuation, or "
                    f"whitespace, but got different type in list: '{token.text}'"
                )
            values.append(_string_literal(token.text))
            token = self._next("',' or ')'")
            if token.kind == "rparen":
                return tuple(values)
            if token.kind != "comma":
                raise InvalidParameter(
                    "While parsing a list in the query, expected a non-empty list of string values, "
                    "but got ill-formed list."
                )


def _check_comparator(entity: Entity, key: str, comparator: str) -> None:
    if entity is Entity.METRIC or (entity is Entity.ATTRIBUTE and key in NUMERIC_ATTRIBUTES):
        allowed = NUMERIC_COMPARATORS
    elif entity in (Entity.PARAM, Entity.TAG):
        allowed = _KEY_VALUE_COMPARATORS
    elif entity is Entity.DATASET:
        allowed = _DATASET_COMPARATORS
    else:
        if comparator in _LIST_COMPARATORS and key != "run_id":
            raise InvalidParameter(
                "Only the 'run_id' attribute supports comparison with a list of quoted string values."
            )
        allowed = _STRING_COMPARATORS | (_LIST_COMPARATORS if key == "run_id" else frozenset())
    if comparator not in allowed:
        raise InvalidParameter(
            f"Invalid comparator '{comparator}' not one of '{sorted(allowed)}' for {entity.value} '{key}'"
        )


def parse_filter(filter_string: str | None) -> list[Condition]:
    """The AND-ed conditions of an MLflow runs/search `filter` (empty: no condition)."""
    if filter_string is None or not filter_string.strip():
        return []
    return _FilterParser(filter_string).parse()


# order_by ----------------------------------------------------------------------------------


def _parse_order_key(clause: str) -> OrderKey:
    tokens = _tokenize(clause, "order_by clause")
    ascending = True
    if len(tokens) == 2:
        direction = tokens[1].text.upper()
        if tokens[1].kind != "ident" or direction not in ("ASC", "DESC"):
            raise InvalidParameter(f"Invalid ordering key in order_by clause '{clause}'.")
        ascending = direction == "ASC"
    elif len(tokens) != 1:
        raise InvalidParameter(f"Invalid order_by clause '{clause}'. Could not be parsed.")
    if tokens[0].kind not in ("ident", "keyword"):
        raise InvalidParameter(f"Invalid order_by clause '{clause}'. Could not be parsed.")
    entity, key = _identifier(tokens[0].text, ORDERABLE_ATTRIBUTES)
    if entity is Entity.DATASET:
        raise InvalidParameter(
            f"Invalid order_by entity type '{entity.value}' in '{clause}'. "
            "Order by a metric, parameter, tag or attribute."
        )
    return OrderKey(entity, key, ascending)


def parse_order_by(order_by: list[str] | None) -> list[OrderKey]:
    """The keys of an MLflow runs/search `order_by` ("<identifier> [ASC|DESC]" each), without
    the tie-breakers (see `with_tiebreakers`)."""
    return [_parse_order_key(clause) for clause in order_by or [] if clause.strip()]
