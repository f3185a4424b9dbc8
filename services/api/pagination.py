"""Opaque page tokens for keyset pagination.

A token carries the sort key of the last row served and a fingerprint of the
filters it was issued for, so a token replayed with other filters is refused
instead of silently skipping or repeating rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from services.api.errors import InvalidParameter

_VERSION = 1
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of the filters a listing was asked with."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_page_token(position: list[Any], filters: str) -> str:
    """The token that resumes a listing after `position` (the last row's sort key)."""
    raw = orjson.dumps({"v": _VERSION, "f": filters, "p": position})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_page_token(token: str, filters: str) -> list[Any]:
    """The sort key a token resumes after; InvalidParameter when it is malformed or foreign."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidParameter("invalid page_token") from None
    if not isinstance(body, dict) or body.get("v") != _VERSION or not isinstance(body.get("p"), list):
        raise InvalidParameter("invalid page_token")
    if body.get("f") != filters:
        raise InvalidParameter("page_token was issued for other filters; repeat the first request")
    position: list[Any] = body["p"]
    return position


def time_id_position(token: str | None, filters: str) -> tuple[int, str] | None:
    """The (time, id) keyset position a token resumes after; None for a first page."""
    if not token:
        return None
    position = decode_page_token(token, filters)
    if len(position) != 2 or not isinstance(position[0], int) or not isinstance(position[1], str):
        raise InvalidParameter("invalid page_token")
    return position[0], position[1]


Row = TypeVar("Row")


def split_page(
    rows: list[Row], page_size: int, position_of: Callable[[Row], list[Any]], filters: str
) -> tuple[list[Row], str | None]:
    """The page and the next page's token, from a query that fetched page_size + 1 rows.

    The extra row tells whether a next page exists without a count query.
    """
    if len(rows) <= page_size:
        return rows, None
    page = rows[:page_size]
    return page, encode_page_token(position_of(page[-1]), filters)
