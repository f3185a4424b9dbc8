"""Client-side checks with the contract's rules, so bad input fails in the caller, not later."""

from __future__ import annotations

from typing import Any

from runledger.events.models import (
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    RunStatus,
    _check_key,
)

TERMINAL_STATUSES = frozenset({RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED})


def check_key(key: Any, what: str = "key") -> str:
    """`key` if it is a valid metric/param/tag key; ValueError otherwise."""
    if not isinstance(key, str):
        raise ValueError(f"{what} must be a str, not {type(key).__name__}")
    try:
        return _check_key(key)
    except ValueError as exc:
        raise ValueError(f"invalid {what}: {exc}") from None


def param_value(key: str, value: Any) -> str:
    """The str() of a param value; ValueError when longer than the contract allows."""
    text = str(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        raise ValueError(f"param {key!r}: value longer than {MAX_PARAM_VALUE_LENGTH} characters")
    return text


def tag_value(key: str, value: Any) -> str:
    """The str() of a tag value; ValueError when longer than the contract allows."""
    text = str(value)
    if len(text) > MAX_TAG_VALUE_LENGTH:
        raise ValueError(f"tag {key!r}: value longer than {MAX_TAG_VALUE_LENGTH} characters")
    return text


def terminal_status(status: str | RunStatus) -> RunStatus:
    """`status` as a terminal RunStatus (FINISHED, FAILED, KILLED); ValueError otherwise."""
    try:
        parsed = RunStatus(str(status).upper())
    except ValueError:
        raise ValueError(f"unknown run status {status!r}") from None
    if parsed not in TERMINAL_STATUSES:
        raise ValueError(f"a run ends as FINISHED, FAILED or KILLED, not {parsed.value}")
    return parsed
