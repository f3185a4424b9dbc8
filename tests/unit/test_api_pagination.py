"""Page tokens and the `tag=`/`param=` filter grammar of the API (no services needed)."""

from __future__ import annotations

import pytest

from services.api.errors import InvalidParameter
from services.api.pagination import decode_page_token, encode_page_token, fingerprint
from services.api.runs.filters import KeyValueFilter, parse_key_value, parse_key_values


def test_page_token_round_trips_the_position() -> None:
    scope = fingerprint("runs", ["e1"], None)
    token = encode_page_token([1_700_000_000_000, "abc"], scope)
    assert "=" not in token and "/" not in token and "+" not in token  # URL-safe, unpadded
    assert decode_page_token(token, scope) == [1_700_000_000_000, "abc"]


def test_page_token_of_other_filters_is_refused() -> None:
    token = encode_page_token([1, "a"], fingerprint("runs", ["e1"]))
    with pytest.raises(InvalidParameter, match="other filters"):
        decode_page_token(token, fingerprint("runs", ["e2"]))


@pytest.mark.parametrize("token", ["", "!!!", "bm90IGpzb24", "W10", "eyJ2IjoyLCJmIjoieCIsInAiOltdfQ"])
def test_malformed_page_tokens_are_invalid_parameters(token: str) -> None:
    with pytest.raises(InvalidParameter):
        decode_page_token(token, "x")


def test_fingerprint_is_stable_and_sensitive() -> None:
    assert fingerprint("a", [1, 2], {"k": "v"}) == fingerprint("a", [1, 2], {"k": "v"})
    assert fingerprint("a", [1, 2]) != fingerprint("a", [2, 1])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("lr:0.1", KeyValueFilter("lr", "0.1")),
        ("model", KeyValueFilter("model", None)),
        ("url:http://x:80/a", KeyValueFilter("url", "http://x:80/a")),  # value keeps its colons
        ("empty:", KeyValueFilter("empty", "")),
        ("`a:b`:v", KeyValueFilter("a:b", "v")),
        ("`a:b`", KeyValueFilter("a:b", None)),
        ("`a:b`::", KeyValueFilter("a:b", ":")),
        ("train/loss:1", KeyValueFilter("train/loss", "1")),
    ],
)
def test_key_value_filters_parse(raw: str, expected: KeyValueFilter) -> None:
    assert parse_key_value(raw, "tag") == expected


@pytest.mark.parametrize("raw", [":v", "`", "``:v", "`a:b", "`a`b"])
def test_malformed_key_value_filters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_key_value(raw, "tag")


def test_too_many_filters_are_refused() -> None:
    with pytest.raises(InvalidParameter, match="at most 20"):
        parse_key_values([f"k{i}:v" for i in range(21)], "param")
