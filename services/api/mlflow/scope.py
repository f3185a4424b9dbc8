"""Which tenant holds each experiment a search names: the caller's own, or the owner of an
experiment shared read-only with the caller's tenant (services/api/access.py).

MLflow's searches name experiment ids. Like the native routes, an id the caller may not
read adds nothing (it looks missing), the caller's own experiment wins over a share of the
same id, and a shared experiment is searched in its owner's rows, read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from services.api.access import Access


async def search_scope(
    pool: asyncpg.Pool[Any], access: Access, experiment_ids: Sequence[str]
) -> list[tuple[str, list[str]]]:
    """[(tenant id, its experiment ids)] to search: the caller's readable ones first, then
    shared ones grouped by owner tenant; empty when the caller may read none of them."""
    wanted = [e for e in dict.fromkeys(experiment_ids) if access.can_read(e)]
    if not wanted:
        return []
    shared = access.shared()
    candidates = [e for e in wanted if e in shared]
    own_held: set[str] = set()
    if candidates:
        rows = await pool.fetch(
            "SELECT experiment_id FROM experiments WHERE tenant_id = $1 AND experiment_id = ANY($2::text[])",
            access.tenant_id,
            candidates,
        )
        own_held = {r["experiment_id"] for r in rows}
    own = [e for e in wanted if e not in shared or e in own_held]
    scope: list[tuple[str, list[str]]] = [(access.tenant_id, own)] if own else []
    by_owner: dict[str, list[str]] = {}
    for e in wanted:
        if e in shared and e not in own_held:
            by_owner.setdefault(shared[e], []).append(e)
    scope += sorted(by_owner.items())
    return scope
