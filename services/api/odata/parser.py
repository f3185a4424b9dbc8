"""OData v4 `$filter` and `$orderby` parsed into a small syntax tree (pure: no SQL, no HTTP).

Supported: comparisons `eq ne gt ge lt le`, `and`, `or`, `not`, parentheses, the functions
`contains`, `startswith` and `endswith`, and literals: strings ('it''s'), integers, decimals
(with exponent, INF, -INF, NaN), true/false/null, DateTimeOffset (2024-05-01T12:00:00Z,
fractional seconds, +02:00 offsets), dates (2024-05-01, midnight UTC) and GUIDs.
Everything else (arithmetic, lambda operators, other functions, paths) is an
InvalidParameter with a message naming what is unsupported, never a crash.
compile.py turns the tree into parameterised SQL.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from services.api.errors import InvalidParameter

COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
FUNCTIONS = frozenset({"contains", "startswith", "endswith"})
MAX_FILTER_LENGTH = 8000
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Prop:
    """A property of the entity (by name; compile.py checks it exists)."""

    name: str


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal; kind is string | int | float | bool | null | datetime | guid."""

    kind: str
    value: object


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # eq ne gt ge lt le
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # contains | startswith | endswith
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and | or
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


Node = Prop | Literal | Compare | Call | BoolOp | Not


@dataclass(frozen=True, slots=True)
class OrderItem:
    name: str
    descending: bool


# Lexer ---------------------------------------------------------------------------------------

_DATETIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,12})?)?(?:Z|[+-]\d{2}:\d{2})"
_TOKEN = re.compile(
    rf"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<datetime>{_DATETIME})(?![\w.:])
  | (?P<date>\d{{4}}-\d{{2}}-\d{{2}})(?![\w.:-])
  | (?P<guid>[0-9A-Fa-f]{{8}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{4}}-[0-9A-Fa-f]{{12}})(?![\w-])
  | (?P<number>-?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|INF)[mMdDfFlL]?)(?![\w.])
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<other>[/*+\-$@:.=<>!])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokenize(text: str, what: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] == "'":
                raise InvalidParameter(f"invalid {what}: unterminated string at position {pos}")
            raise InvalidParameter(f"invalid {what}: unexpected character {text[pos]!r} at position {pos}")
        kind = m.lastgroup
        assert kind is not None
        if kind == "other":
            raise InvalidParameter(
                f"invalid {what}: {m.group()!r} at position {pos} is not supported"
                " (no arithmetic, paths, parameter aliases or lambda operators)"
            )
        if kind != "ws":
            tokens.append(_Token(kind, m.group(), pos))
        pos = m.end()
    return tokens


def parse_datetime(text: str) -> datetime:
    """An OData DateTimeOffset or Date literal as an aware datetime (InvalidParameter if impossible)."""
    value = text
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        value += "T00:00:00Z"
    # fromisoformat takes at most 6 fractional digits.
    value = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidParameter(f"invalid date/time literal {text!r}") from None
    return moment.astimezone(UTC)


def _number(text: str) -> Literal:
    body = text.rstrip("mMdDfFlL") if not text.endswith("INF") else text
    if body in ("INF", "-INF"):
        return Literal("float", math.inf if body == "INF" else -math.inf)
    if re.fullmatch(r"-?\d+", body):
        return Literal("int", int(body))
    return Literal("float", float(body))


# $filter -------------------------------------------------------------------------------------


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text, "$filter")
        self.i = 0
        self.depth = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self, expected: str) -> _Token:
        token = self._peek()
        if token is None:
            raise InvalidParameter(f"invalid $filter: expected {expected} but the expression ended")
        self.i += 1
        return token

    def _word(self, token: _Token | None, *words: str) -> bool:
        return token is not None and token.kind == "ident" and token.text in words

    def parse(self) -> Node:
        node = self._or()
        token = self._peek()
        if token is not None:
            raise InvalidParameter(
                f"invalid $filter: unexpected {token.text!r} at position {token.pos}"
                " (expected 'and', 'or' or the end)"
            )
        return node

    def _or(self) -> Node:
        node = self._and()
        while self._word(self._peek(), "or"):
            self.i += 1
            node = BoolOp("or", node, self._and())
        return node

    def _and(self) -> Node:
        node = self._not()
        while self._word(self._peek(), "and"):
            self.i += 1
            node = BoolOp("and", node, self._not())
        return node

    def _not(self) -> Node:
        if self._word(self._peek(), "not"):
            self.i += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise InvalidParameter("invalid $filter: nested too deeply")
            return Not(self._not())
        return self._comparison()

    def _comparison(self) -> Node:
        left = self._primary()
        token = self._peek()
        if token is not None and token.kind == "ident" and token.text in COMPARISONS:
            self.i += 1
            return Compare(token.text, left, self._primary())
        if (
            token is not None
            and token.kind == "ident"
            and token.text in ("has", "in", "add", "sub", "mul", "div", "mod")
        ):
            raise InvalidParameter(f"invalid $filter: the operator {token.text!r} is not supported")
        return left

    def _primary(self) -> Node:
        token = self._next("a property, a literal or '('")
        if token.kind == "lparen":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise InvalidParameter("invalid $filter: nested too deeply")
            node = self._or()
            self.depth -= 1
            if self._next("')'").kind != "rparen":
                raise InvalidParameter(f"invalid $filter: expected ')' in '{self.text}'")
            return node
        if token.kind == "string":
            return Literal("string", token.text[1:-1].replace("''", "'"))
        if token.kind == "number":
            return _number(token.text)
        if token.kind in ("datetime", "date"):
            return Literal("datetime", parse_datetime(token.text))
        if token.kind == "guid":
            return Literal("guid", token.text.lower())
        if token.kind == "ident":
            word = token.text
            if word in ("true", "false"):
                return Literal("bool", word == "true")
            if word == "null":
                return Literal("null", None)
            if word == "NaN":
                return Literal("float", math.nan)
            nxt = self._peek()
            if nxt is not None and nxt.kind == "lparen":
                return self._call(token)
            if word in COMPARISONS or word in ("and", "or", "not"):
                raise InvalidParameter(f"invalid $filter: unexpected {word!r} at position {token.pos}")
            return Prop(word)
        raise InvalidParameter(f"invalid $filter: unexpected {token.text!r} at position {token.pos}")

    def _call(self, name: _Token) -> Node:
        if name.text not in FUNCTIONS:
            raise InvalidParameter(
                f"invalid $filter: the function {name.text!r} is not supported"
                f" (supported: {', '.join(sorted(FUNCTIONS))})"
            )
        self.i += 1  # (
        args: list[Node] = [self._or()]
        while (token := self._next("',' or ')'")).kind == "comma":
            args.append(self._or())
        if token.kind != "rparen":
            raise InvalidParameter(f"invalid $filter: expected ')' after the arguments of {name.text}")
        if len(args) != 2:
            raise InvalidParameter(f"invalid $filter: {name.text} takes 2 arguments, got {len(args)}")
        return Call(name.text, tuple(args))


def parse_filter(text: str | None) -> Node | None:
    """The syntax tree of a `$filter` (None when absent or blank)."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidParameter(f"invalid $filter: longer than {MAX_FILTER_LENGTH} characters")
    return _FilterParser(text).parse()


def parse_orderby(text: str | None) -> list[OrderItem]:
    """The terms of an `$orderby` (`Prop [asc|desc], ...`); empty when absent."""
    if text is None or not text.strip():
        return []
    items: list[OrderItem] = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[0]):
            raise InvalidParameter(f"invalid $orderby term {part.strip()!r}: expected 'Property [asc|desc]'")
        direction = words[1] if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise InvalidParameter(f"invalid $orderby direction {direction!r}: asc or desc")
        items.append(OrderItem(words[0], direction == "desc"))
    return items


def parse_select(text: str | None) -> list[str] | None:
    """The properties of a `$select` (None: all; `*` also means all)."""
    if text is None or not text.strip() or text.strip() == "*":
        return None
    names = [p.strip() for p in text.split(",")]
    for name in names:
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise InvalidParameter(f"invalid $select item {name!r}: property names only (no paths or *)")
    return list(dict.fromkeys(names))
