"""HTTP routes of findings (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from services.api.access import Access
from services.api.deps import Auth, ConsistentRead, RuntimeDep
from services.api.findings.repository import FindingFilters, FindingRepository
from services.api.findings.schemas import FindingList
from services.api.findings.service import FindingService
from services.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.api.runs.repository import RunRepository
from services.api.schemas import READ_RESPONSES

router = APIRouter(tags=["findings"])

# DateTime64(3)-compatible bound, as the other millisecond parameters.
_MAX_MS = 9_999_999_999_999


async def get_service(runtime: RuntimeDep, principal: Auth) -> FindingService:
    """The finding service acting for the caller."""
    return FindingService(
        FindingRepository(runtime.pool, principal), RunRepository(runtime.pool, principal), Access(principal)
    )


Service = Annotated[FindingService, Depends(get_service)]
Kinds = Annotated[
    list[str], Query(description="Repeatable: findings of any of these kinds, e.g. lint.metric_myopia.")
]
Since = Annotated[
    int | None,
    Query(ge=0, le=_MAX_MS, description="Only findings at or after this time (ms since the epoch)."),
]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


@router.get("/findings", response_model=FindingList, responses=READ_RESPONSES, dependencies=[ConsistentRead])
async def list_findings(
    service: Service,
    run_id: Annotated[list[str], Query(description="Repeatable: findings of any of these runs.")] = [],  # noqa: B006
    experiment_id: Annotated[
        list[str], Query(description="Repeatable: findings of any of these experiments.")
    ] = [],  # noqa: B006
    kind: Kinds = [],  # noqa: B006
    since: Since = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> FindingList:
    """Findings (anomalies, lint results, attributions), newest first, one page at a time."""
    filters = FindingFilters(run_ids=run_id, experiment_ids=experiment_id, kinds=kind, since=since)
    return await service.page(filters, page_size, page_token)


@router.get(
    "/runs/{run_id}/findings",
    response_model=FindingList,
    responses=READ_RESPONSES,
    dependencies=[ConsistentRead],
)
async def list_run_findings(
    run_id: str,
    service: Service,
    kind: Kinds = [],  # noqa: B006
    since: Since = None,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> FindingList:
    """The run's findings (e.g. the SDK's lint.* results), newest first; 404 for an unknown run."""
    return await service.for_run(run_id, FindingFilters(kinds=kind, since=since), page_size, page_token)
