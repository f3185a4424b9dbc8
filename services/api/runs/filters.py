"""Parsing the `tag=` and `param=` filters of GET /runs.

`key:value` matches runs where that key has exactly that value; a bare `key`
matches runs that have the key at all. Keys may contain ':' (MLflow allows it), so
such a key is written in backticks: `` `a:b`:value ``. The value is everything
after the first ':' that follows the key, colons included.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.api.errors import InvalidParameter


@dataclass(frozen=True, slots=True)
class KeyValueFilter:
    """One `key[:value]` condition; value None means "has the key"."""

    key: str
    value: str | None


def parse_key_value(raw: str, what: str) -> KeyValueFilter:
    """Parse one `key:value`, `key`, or `` `key`:value `` filter; InvalidParameter if malformed."""
    if raw.startswith("`"):
        end = raw.find("`", 1)
        if end <= 1:
            raise InvalidParameter(f"{what} filter {raw!r}: unterminated or empty `key`")
        key, rest = raw[1:end], raw[end + 1 :]
        if rest == "":
            return KeyValueFilter(key, None)
        if not rest.startswith(":"):
            raise InvalidParameter(f"{what} filter {raw!r}: expected ':' after the quoted key")
        return KeyValueFilter(key, rest[1:])
    key, sep, value = raw.partition(":")
    if not key:
        raise InvalidParameter(f"{what} filter {raw!r}: the key is empty")
    return KeyValueFilter(key, value if sep else None)


def parse_key_values(raws: list[str], what: str) -> list[KeyValueFilter]:
    """Parse repeated filters (at most 20, to bound the query)."""
    if len(raws) > 20:
        raise InvalidParameter(f"at most 20 {what} filters")
    return [parse_key_value(r, what) for r in raws]
