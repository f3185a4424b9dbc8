"""The filter and order_by of experiments/search: MLflow's grammar for experiments.

`name` and `tags.<key>` compare strings (=, !=, LIKE, ILIKE); creation_time and
last_update_time compare numbers. Clauses are AND-ed. Everything becomes bound
SQL parameters; identifiers map to fixed SQL, never to user text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.api.errors import InvalidParameter

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<tick>`[^`]*`)"
    r"|(?P<op>!=|<>|>=|<=|=|<|>)|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][\w.]*))"
)
_STRING_OPS = {"=", "!=", "LIKE", "ILIKE"}
_NUMBER_OPS = {"=", "!=", "<", ">", "<=", ">="}
_ATTRIBUTES = {"name": "name", "creation_time": "creation_time", "last_update_time": "last_update_time"}
_ORDERABLE = {"name", "creation_time", "last_update_time", "experiment_id"}


@dataclass(frozen=True, slots=True)
class Clause:
    """One comparison: an attribute column, or a tag (tag set) with op and value."""

    column: str | None  # a column of experiments, or None for a tag
    tag: str | None
    op: str
    value: str | float


@dataclass(frozen=True, slots=True)
class Order:
    """One order_by term."""

    column: str
    descending: bool


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise InvalidParameter(f"invalid filter {text!r}: unexpected text at {text[pos:]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def parse_filter(text: str | None) -> list[Clause]:
    """The AND-ed clauses of an experiments filter; InvalidParameter when malformed."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    clauses: list[Clause] = []
    i = 0
    while i < len(tokens):
        if clauses:
            kind, word = tokens[i]
            if kind != "word" or word.upper() != "AND":
                raise InvalidParameter(f"invalid filter {text!r}: only AND joins clauses")
            i += 1
        if i >= len(tokens) or tokens[i][0] != "word":
            raise InvalidParameter(f"invalid filter {text!r}: expected an identifier")
        ident = tokens[i][1]
        i += 1
        if ident.endswith(".") and i < len(tokens) and tokens[i][0] in ("tick", "str"):
            ident += _unquote(tokens[i][1])  # tags.`dotted key` / tags."key"
            i += 1
        if i + 1 >= len(tokens):
            raise InvalidParameter(f"invalid filter {text!r}: incomplete clause")
        clauses.append(_clause(text, ident, tokens[i], tokens[i + 1]))
        i += 2
    return clauses


def _clause(text: str, ident: str, comparator: tuple[str, str], operand: tuple[str, str]) -> Clause:
    (okind, op), (vkind, value) = comparator, operand
    op = "!=" if op == "<>" else op.upper()
    if okind not in ("op", "word") or op not in _STRING_OPS | _NUMBER_OPS:
        raise InvalidParameter(f"invalid filter {text!r}: unknown comparator {op!r}")
    prefix, _, rest = ident.partition(".")
    column: str | None
    tag: str | None = None
    if prefix in ("tags", "tag") and rest:
        column = None
        tag = rest
    elif prefix in ("attributes", "attribute", "attr") or not rest:
        column = _ATTRIBUTES.get(rest or prefix)
        if column is None:
            raise InvalidParameter(f"invalid filter {text!r}: unknown attribute {ident!r}")
    else:
        raise InvalidParameter(f"invalid filter {text!r}: unknown identifier {ident!r}")
    if column in ("creation_time", "last_update_time"):
        if vkind != "num" or op not in _NUMBER_OPS:
            raise InvalidParameter(f"invalid filter {text!r}: {ident} compares numbers")
        return Clause(column, None, op, float(value))
    if vkind != "str" or op not in _STRING_OPS:
        raise InvalidParameter(
            f"invalid filter {text!r}: {ident} compares quoted strings with =, !=, LIKE, ILIKE"
        )
    return Clause(column, tag, op, _unquote(value))


def parse_order_by(terms: list[str]) -> list[Order]:
    """order_by terms (`name`, `creation_time DESC`, ...); InvalidParameter when unknown."""
    orders: list[Order] = []
    for term in terms:
        words = term.split()
        if not words or len(words) > 2:
            raise InvalidParameter(f"invalid order_by {term!r}")
        ident = words[0].removeprefix("attributes.").removeprefix("attribute.")
        direction = words[1].upper() if len(words) == 2 else "ASC"
        if ident not in _ORDERABLE or direction not in ("ASC", "DESC"):
            raise InvalidParameter(f"invalid order_by {term!r}: one of {sorted(_ORDERABLE)} [ASC|DESC]")
        orders.append(Order(ident, direction == "DESC"))
    return orders
