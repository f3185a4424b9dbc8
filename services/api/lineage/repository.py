"""Lineage reads from Postgres, always scoped to the principal's tenant."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.api.principal import Principal

# Breadth-first walk from the root over lineage_edges. $5 follows edges forward
# (source -> target, downstream), $6 backward (upstream); both together walk the edges
# as undirected. Rows are (depth, node); UNION drops a row already produced, so each node
# is expanded at most once per depth and a cycle ends at the depth bound ($4). The walk
# is evaluated lazily: the LIMIT ($7) stops it early on a huge graph.
_WALK = """
WITH RECURSIVE walk(depth, kind, id) AS (
    SELECT 0, $2::text, $3::text
  UNION
    SELECT w.depth + 1, n.kind, n.id
    FROM walk w CROSS JOIN LATERAL (
        SELECT e.target_kind, e.target_id FROM lineage_edges e
        WHERE $5::boolean AND e.tenant_id = $1 AND e.source_kind = w.kind AND e.source_id = w.id
      UNION ALL
        SELECT e.source_kind, e.source_id FROM lineage_edges e
        WHERE $6::boolean AND e.tenant_id = $1 AND e.target_kind = w.kind AND e.target_id = w.id
    ) AS n(kind, id)
    WHERE w.depth < $4
)
SELECT depth, kind, id FROM walk LIMIT $7
"""

# The edges the walk followed: those leaving ($6) or entering ($7) a node short of the
# depth bound ($2, $3), whose other end the walk reached too ($4, $5). Edges between two
# nodes at the bound are left out: reading them would mean scanning the bound's fan-out.
_EDGES = """
WITH inner_nodes AS (SELECT * FROM unnest($2::text[], $3::text[]) AS t(kind, id)),
     reached AS (SELECT * FROM unnest($4::text[], $5::text[]) AS t(kind, id))
SELECT DISTINCT e.source_kind, e.source_id, e.target_kind, e.target_id, e.relation
FROM (
    SELECT e.* FROM inner_nodes n JOIN lineage_edges e
      ON e.tenant_id = $1 AND e.source_kind = n.kind AND e.source_id = n.id
    WHERE $6::boolean
  UNION ALL
    SELECT e.* FROM inner_nodes n JOIN lineage_edges e
      ON e.tenant_id = $1 AND e.target_kind = n.kind AND e.target_id = n.id
    WHERE $7::boolean
) AS e
WHERE (e.source_kind, e.source_id) IN (SELECT kind, id FROM reached)
  AND (e.target_kind, e.target_id) IN (SELECT kind, id FROM reached)
ORDER BY e.source_kind, e.source_id, e.target_kind, e.target_id, e.relation
LIMIT $8
"""


class LineageRepository:
    """Reads the lineage graph of one tenant; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], principal: Principal) -> None:
        """Bind the repository to the caller's tenant."""
        self._pool = pool
        self._tenant_id = principal.tenant_id

    async def walk(
        self, kind: str, node_id: str, depth: int, *, downstream: bool, upstream: bool, limit: int
    ) -> list[tuple[int, str, str]]:
        """(depth, kind, id) rows of the walk from the root (itself at depth 0), at most `limit`."""
        rows = await self._pool.fetch(
            _WALK, self._tenant_id, kind, node_id, depth, downstream, upstream, limit
        )
        return [(r["depth"], r["kind"], r["id"]) for r in rows]

    async def edges(
        self,
        inner: list[tuple[str, str]],
        reached: list[tuple[str, str]],
        *,
        downstream: bool,
        upstream: bool,
        limit: int,
    ) -> list[asyncpg.Record]:
        """The edges the walk followed from the `inner` nodes to `reached` ones, at most `limit`."""
        return await self._pool.fetch(
            _EDGES,
            self._tenant_id,
            [k for k, _ in inner],
            [i for _, i in inner],
            [k for k, _ in reached],
            [i for _, i in reached],
            downstream,
            upstream,
            limit,
        )

    async def touches(self, kind: str, node_id: str) -> bool:
        """Whether any edge starts or ends at the node."""
        found = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM lineage_edges WHERE tenant_id = $1"
            " AND source_kind = $2 AND source_id = $3)"
            " OR EXISTS (SELECT 1 FROM lineage_edges WHERE tenant_id = $1"
            " AND target_kind = $2 AND target_id = $3)",
            self._tenant_id,
            kind,
            node_id,
        )
        return bool(found)

    async def runs(self, run_ids: list[str]) -> list[asyncpg.Record]:
        """The runs among these ids."""
        return await self._pool.fetch(
            "SELECT run_id, name, status, experiment_id, lifecycle_stage, start_time, end_time"
            " FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
            self._tenant_id,
            run_ids,
        )

    async def model_versions(self, names: list[str], versions: list[int]) -> list[asyncpg.Record]:
        """The registered model versions among these (name, version) pairs."""
        return await self._pool.fetch(
            "SELECT m.model_name, m.version, m.run_id, m.source, m.stage FROM model_versions m"
            " JOIN unnest($2::text[], $3::int[]) AS p(name, version)"
            " ON m.model_name = p.name AND m.version = p.version WHERE m.tenant_id = $1",
            self._tenant_id,
            names,
            versions,
        )

    async def inputs_of_runs(self, run_ids: list[str], names: list[str]) -> list[asyncpg.Record]:
        """Dataset inputs logged by (run, dataset name) pairs (primary-key lookups)."""
        return await self._pool.fetch(
            "SELECT d.name, d.digest, d.body FROM dataset_inputs d"
            " JOIN unnest($2::text[], $3::text[]) AS p(run_id, name)"
            " ON d.run_id = p.run_id AND d.name = p.name WHERE d.tenant_id = $1",
            self._tenant_id,
            run_ids,
            names,
        )

    async def inputs_named(self, name: str, limit: int) -> list[asyncpg.Record]:
        """Some dataset inputs with this name (any run): is a dataset without edges known?"""
        return await self._pool.fetch(
            "SELECT DISTINCT ON (digest, body->'tags'->>'version') name, digest, body"
            " FROM dataset_inputs WHERE tenant_id = $1 AND name = $2 LIMIT $3",
            self._tenant_id,
            name,
            limit,
        )
