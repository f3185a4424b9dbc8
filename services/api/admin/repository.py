"""Platform-wide projections an operator reads: dead-letter counters."""

from __future__ import annotations

from typing import Any

import asyncpg


async def dead_letter_counts(pool: asyncpg.Pool[Any], tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Dead letters by tenant ("" when the event did not parse) and reason class; one tenant's if given."""
    rows = await pool.fetch(
        "SELECT tenant_id, reason, count FROM dead_letters_count"
        " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, reason",
        tenant_id,
    )
    return [{"tenant_id": r["tenant_id"], "reason": r["reason"], "count": r["count"]} for r in rows]
