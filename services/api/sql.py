"""A tiny builder for parameterised WHERE clauses (asyncpg's $n placeholders)."""

from __future__ import annotations

from typing import Any


class Conditions:
    """AND-ed conditions whose values are always bound parameters, never spliced text."""

    def __init__(self) -> None:
        """Start empty."""
        self.args: list[Any] = []
        self._clauses: list[str] = []

    def param(self, value: Any) -> str:
        """Bind `value` and return its placeholder ($n)."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str) -> None:
        """AND a clause (written with placeholders from `param`)."""
        self._clauses.append(clause)

    @property
    def sql(self) -> str:
        """The clauses joined with AND (TRUE when there are none)."""
        return " AND ".join(self._clauses) or "TRUE"
