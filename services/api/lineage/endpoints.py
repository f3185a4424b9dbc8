"""HTTP route of the lineage graph (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from services.api.access import Access
from services.api.deps import Auth, ConsistentRead, RuntimeDep
from services.api.lineage.repository import LineageRepository
from services.api.lineage.schemas import (
    DEFAULT_DEPTH,
    MAX_DEPTH,
    MIN_DEPTH,
    Direction,
    LineageGraph,
    NodeKind,
)
from services.api.lineage.service import LineageService
from services.api.schemas import READ_RESPONSES

router = APIRouter(prefix="/lineage", tags=["lineage"])


async def get_service(runtime: RuntimeDep, principal: Auth) -> LineageService:
    """The lineage service acting for the caller."""
    Access(principal).require_listing()
    return LineageService(LineageRepository(runtime.pool, principal), principal.readable_experiments())


Service = Annotated[LineageService, Depends(get_service)]


@router.get(
    "/{kind}/{node_id:path}",
    response_model=LineageGraph,
    responses=READ_RESPONSES,
    dependencies=[ConsistentRead],
)
async def get_lineage(
    kind: NodeKind,
    node_id: Annotated[
        str,
        Path(
            description="Run id; dataset `name@version` or `name@<digest12>`; model `name@version`"
            " or `name@run:<run_id>` (runledger.lineage). Percent-encode '?', '#' and '%'."
        ),
    ],
    service: Service,
    depth: Annotated[
        int, Query(ge=MIN_DEPTH, le=MAX_DEPTH, description="Hops from the root.")
    ] = DEFAULT_DEPTH,
    direction: Annotated[
        Direction,
        Query(
            description="upstream: what the root derives from; downstream: what derives from it;"
            " both: every edge either way at each hop (siblings included)."
        ),
    ] = Direction.BOTH,
) -> LineageGraph:
    """The lineage graph around a dataset, run or model: nodes within `depth` hops, and the
    edges between them: dataset -input-> run -output-> dataset, run -produced-> model, and
    base run -> derived run (relation fine_tuned_from, resumed_from, ...)."""
    return await service.graph(kind, node_id, depth, direction)
