"""Who a request acts for; every repository scopes its queries by this tenant."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: the tenant every query is scoped to, and the user for audit fields."""

    tenant_id: str
    user_id: str = ""
