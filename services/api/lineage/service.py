"""The lineage graph around a node: a bounded walk over lineage_edges, then node details."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from runledger.lineage import MAX_MODEL_VERSION, dataset_id, dataset_name, parse_model_id
from services.api.errors import NotFound
from services.api.lineage.repository import LineageRepository
from services.api.lineage.schemas import (
    Direction,
    LineageEdge,
    LineageGraph,
    LineageNode,
    NodeKind,
    NodeRef,
)

# Bounds on one answer: rows of the walk ((depth, node) pairs) and edges.
MAX_WALK_ROWS = 10_000
MAX_EDGES = 20_000
_KNOWN_INPUTS_SCAN = 1_000


def _input_dataset_id(name: str, digest: str, body: Any) -> str | None:
    """The graph id of a logged dataset input (None when it has neither version nor digest)."""
    data = orjson.loads(body) if isinstance(body, str | bytes) else body
    tags = data.get("tags") or {}
    try:
        return dataset_id(name, tags.get("version") or None, digest or None)
    except ValueError:
        return None


def _input_details(digest: str, body: Any) -> dict[str, str | int | None]:
    data = orjson.loads(body) if isinstance(body, str | bytes) else body
    tags = data.get("tags") or {}
    return {
        "version": tags.get("version"),
        "digest": digest or None,
        "source": data.get("source") or None,
        "source_type": data.get("source_type") or None,
    }


class LineageService:
    """What the lineage route does, independent of HTTP."""

    def __init__(self, repository: LineageRepository, readable: frozenset[str] | None = None) -> None:
        """Read through the caller's tenant-scoped repository; a caller whose grants are narrowed
        to some experiments (`readable`; None = all) sees only their runs and what those reach."""
        self._repo = repository
        self._readable = readable

    async def graph(self, kind: NodeKind, node_id: str, depth: int, direction: Direction) -> LineageGraph:
        """The nodes at most `depth` hops from the root and the edges between them; NotFound
        when the root has no edge and is no run, model version or dataset input of the tenant."""
        downstream = direction is not Direction.UPSTREAM
        upstream = direction is not Direction.DOWNSTREAM
        rows = await self._repo.walk(
            kind.value, node_id, depth, downstream=downstream, upstream=upstream, limit=MAX_WALK_ROWS + 1
        )
        truncated = len(rows) > MAX_WALK_ROWS
        depths: dict[tuple[str, str], int] = {}
        for hops, k, i in rows[:MAX_WALK_ROWS]:
            if depths.get((k, i), hops + 1) > hops:
                depths[(k, i)] = hops
        lonely = len(depths) == 1 and not await self._repo.touches(kind.value, node_id)
        if lonely and not await self._known(kind, node_id):
            raise NotFound(f"{kind.value} {node_id!r} has no lineage")
        inner = [key for key, hops in depths.items() if hops < depth]
        edge_rows = await self._repo.edges(
            inner, list(depths), downstream=downstream, upstream=upstream, limit=MAX_EDGES + 1
        )
        truncated = truncated or len(edge_rows) > MAX_EDGES
        edges = [LineageEdge(**dict(r)) for r in edge_rows[:MAX_EDGES]]
        if self._readable is not None:
            depths, edges = await self._visible(kind, node_id, depths, edges, depth)
        nodes = {key: LineageNode(kind=NodeKind(key[0]), id=key[1], depth=d) for key, d in depths.items()}
        await self._describe(nodes, edges)
        ordered = sorted(nodes.values(), key=lambda n: (n.depth, n.kind.value, n.id))
        return LineageGraph(
            root=NodeRef(kind=kind, id=node_id),
            depth=depth,
            direction=direction,
            nodes=ordered,
            edges=edges,
            truncated=truncated,
        )

    async def _visible(
        self,
        kind: NodeKind,
        node_id: str,
        depths: dict[tuple[str, str], int],
        edges: list[LineageEdge],
        depth: int,
    ) -> tuple[dict[tuple[str, str], int], list[LineageEdge]]:
        """The part of the graph a narrowed caller may see: runs of its experiments, and the
        datasets and models reached through them (within `depth` hops of the root); NotFound
        when that leaves no run of its experiments at all."""
        assert self._readable is not None
        run_ids = [i for k, i in depths if k == NodeKind.RUN.value]
        rows = await self._repo.runs(run_ids) if run_ids else []
        visible_runs = {r["run_id"] for r in rows if r["experiment_id"] in self._readable}
        if not visible_runs:
            raise NotFound(f"{kind.value} {node_id!r} has no lineage")

        def allowed(k: str, i: str) -> bool:
            return k != NodeKind.RUN.value or i in visible_runs

        root = (kind.value, node_id)
        if not allowed(*root):
            raise NotFound(f"{kind.value} {node_id!r} has no lineage")
        kept = [
            e
            for e in edges
            if allowed(e.source_kind.value, e.source_id) and allowed(e.target_kind.value, e.target_id)
        ]
        neighbours: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for e in kept:
            a, b = (e.source_kind.value, e.source_id), (e.target_kind.value, e.target_id)
            neighbours.setdefault(a, set()).add(b)
            neighbours.setdefault(b, set()).add(a)
        # Hops are counted again without the hidden runs: nothing is reached through them.
        reached = {root: 0}
        frontier = [root]
        for hops in range(1, depth + 1):
            frontier = list({n for f in frontier for n in neighbours.get(f, ()) if n not in reached})
            for n in frontier:
                reached[n] = hops
        if len(reached) == 1 and kind is not NodeKind.RUN:
            raise NotFound(f"{kind.value} {node_id!r} has no lineage")
        return reached, [
            e
            for e in kept
            if (e.source_kind.value, e.source_id) in reached and (e.target_kind.value, e.target_id) in reached
        ]

    async def _known(self, kind: NodeKind, node_id: str) -> bool:
        """Whether a node without edges still exists as a run, model version or dataset input."""
        if kind is NodeKind.RUN:
            return bool(await self._repo.runs([node_id]))
        if kind is NodeKind.MODEL:
            try:
                name, version, _ = parse_model_id(node_id)
            except ValueError:
                return False
            if version is None or version > MAX_MODEL_VERSION:
                return False
            return bool(await self._repo.model_versions([name], [version]))
        rows = await self._repo.inputs_named(dataset_name(node_id), _KNOWN_INPUTS_SCAN)
        return any(_input_dataset_id(r["name"], r["digest"], r["body"]) == node_id for r in rows)

    async def _describe(
        self, nodes: dict[tuple[str, str], LineageNode], edges: Iterable[LineageEdge]
    ) -> None:
        """Labels and details from runs, model_versions and dataset_inputs (indexed lookups only)."""
        run_ids = [i for k, i in nodes if k == NodeKind.RUN]
        for r in await self._repo.runs(run_ids) if run_ids else []:
            node = nodes[(NodeKind.RUN.value, r["run_id"])]
            node.label = r["name"]
            node.details = {
                "status": r["status"],
                "experiment_id": r["experiment_id"],
                "lifecycle_stage": r["lifecycle_stage"],
                "start_time": r["start_time"],
                "end_time": r["end_time"],
            }
        registered: list[tuple[str, int]] = []
        for k, i in nodes:
            if k != NodeKind.MODEL:
                continue
            try:
                name, version, run_id = parse_model_id(i)
            except ValueError:
                continue
            nodes[(k, i)].label = name
            nodes[(k, i)].details = {"name": name, "version": version, "run_id": run_id}
            if version is not None and version <= MAX_MODEL_VERSION:
                registered.append((name, version))
        if registered:
            rows = await self._repo.model_versions([n for n, _ in registered], [v for _, v in registered])
            for r in rows:
                node = nodes[(NodeKind.MODEL.value, f"{r['model_name']}@{r['version']}")]
                node.details = {
                    "name": r["model_name"],
                    "version": r["version"],
                    "run_id": r["run_id"],
                    "source": r["source"],
                    "stage": r["stage"],
                }
        for k, i in nodes:
            if k == NodeKind.DATASET:
                nodes[(k, i)].label = dataset_name(i)
        # A dataset's details come from the inputs of the runs it feeds in this graph.
        pairs = {
            (e.target_id, dataset_name(e.source_id))
            for e in edges
            if e.source_kind is NodeKind.DATASET and e.target_kind is NodeKind.RUN
        }
        if pairs:
            rows = await self._repo.inputs_of_runs([r for r, _ in pairs], [n for _, n in pairs])
            for r in rows:
                found = _input_dataset_id(r["name"], r["digest"], r["body"])
                described = nodes.get((NodeKind.DATASET.value, found)) if found else None
                if described is not None and not described.details:
                    described.details = _input_details(r["digest"], r["body"])
