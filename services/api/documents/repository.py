"""Run document reads from Postgres (run_documents), always scoped to the principal's tenant."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import orjson

from services.api.principal import Principal


class DocumentRepository:
    """Reads the documents of one tenant's runs; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], principal: Principal) -> None:
        """Bind the repository to the caller's tenant."""
        self._pool = pool
        self._tenant_id = principal.tenant_id

    def bound_to(self, tenant_id: str) -> DocumentRepository:
        """The same reads over another tenant's rows (a run of an experiment shared with the caller's)."""
        bound = copy.copy(self)
        bound._tenant_id = tenant_id
        return bound

    async def for_run(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's documents by kind (code_state, environment); {} when it has none."""
        rows = await self._pool.fetch(
            "SELECT kind, body FROM run_documents WHERE tenant_id = $1 AND run_id = $2",
            self._tenant_id,
            run_id,
        )
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            body = row["body"]
            out[row["kind"]] = orjson.loads(body) if isinstance(body, str | bytes) else dict(body)
        return out
