"""HTTP routes of anomalies, attributions and detector settings (thin: parse, call, shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from services.api.access import Access
from services.api.analysis.repository import AnalysisRepository
from services.api.analysis.schemas import (
    AnomalyList,
    AnomalySetting,
    AnomalySettings,
    AttributionCreate,
    AttributionList,
    AttributionStatus,
)
from services.api.analysis.service import AnalysisService
from services.api.deps import Auth, ConsistentRead, RuntimeDep, tenant_admin
from services.api.findings.repository import FindingFilters, FindingRepository
from services.api.findings.service import FindingService
from services.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.api.runs.repository import RunRepository
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES

router = APIRouter(tags=["analysis"])

_MAX_MS = 9_999_999_999_999


async def get_service(runtime: RuntimeDep, principal: Auth) -> AnalysisService:
    """The analysis service acting for the caller."""
    access = Access(principal)
    findings = FindingService(
        FindingRepository(runtime.pool, principal), RunRepository(runtime.pool, principal), access
    )
    return AnalysisService(
        AnalysisRepository(runtime.pool, principal.tenant_id), findings, access, principal, runtime.writer
    )


Service = Annotated[AnalysisService, Depends(get_service)]
TenantAdmin = Depends(tenant_admin)


@router.get("/anomalies", response_model=AnomalyList, responses=READ_RESPONSES, dependencies=[ConsistentRead])
async def list_anomalies(
    service: Service,
    experiment_id: Annotated[list[str], Query(description="Repeatable.")] = [],  # noqa: B006
    run_id: Annotated[list[str], Query(description="Repeatable.")] = [],  # noqa: B006
    key: Annotated[list[str], Query(description="Repeatable: metric keys.")] = [],  # noqa: B006
    kind: Annotated[
        list[str],
        Query(description="Repeatable: non_finite, spike, divergence, plateau, level_shift, outlier_run."),
    ] = [],  # noqa: B006
    since: Annotated[
        int | None, Query(ge=0, le=_MAX_MS, description="ms since the epoch, inclusive.")
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> AnomalyList:
    """Findings of the streaming detectors, newest first, one page at a time."""
    filters = FindingFilters(run_ids=run_id, experiment_ids=experiment_id, kinds=kind, since=since, keys=key)
    return await service.anomalies(filters, page_size, page_token)


@router.post("/attributions", response_model=AttributionStatus, status_code=202, responses=WRITE_RESPONSES)
async def request_attribution(body: AttributionCreate, service: Service) -> AttributionStatus:
    """Attribute a metric's shift between baseline and candidate runs to the factors that differ.

    Answers at once with the id (status `pending`); poll GET /attributions/{id}.
    """
    return await service.request_attribution(body)


@router.get("/attributions", response_model=AttributionList, responses=READ_RESPONSES)
async def list_attributions(
    service: Service,
    experiment_id: Annotated[list[str], Query(description="Repeatable.")] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AttributionList:
    """The newest attributions (without their reports; GET one for its report)."""
    return await service.attributions(experiment_id, limit)


@router.get("/attributions/{attribution_id}", response_model=AttributionStatus, responses=READ_RESPONSES)
async def get_attribution(attribution_id: str, service: Service) -> AttributionStatus:
    """Status of an attribution and, when done, its factors ranked by contribution."""
    return await service.attribution(attribution_id)


@router.get(
    "/anomaly-settings", response_model=AnomalySettings, responses=READ_RESPONSES, dependencies=[TenantAdmin]
)
async def get_anomaly_settings(service: Service) -> AnomalySettings:
    """The tenant's detector settings (tenant admin)."""
    return await service.settings()


@router.put(
    "/anomaly-settings", response_model=AnomalySetting, responses=WRITE_RESPONSES, dependencies=[TenantAdmin]
)
async def put_anomaly_setting(body: AnomalySetting, service: Service) -> AnomalySetting:
    """Create or replace the overrides of one (experiment, key) scope (tenant admin)."""
    return await service.put_setting(body)


@router.delete("/anomaly-settings", status_code=204, responses=WRITE_RESPONSES, dependencies=[TenantAdmin])
async def delete_anomaly_setting(
    service: Service,
    experiment_id: Annotated[str, Query(max_length=64)] = "",
    key: Annotated[str, Query(max_length=250)] = "",
) -> Response:
    """Remove the overrides of one (experiment, key) scope (tenant admin)."""
    await service.delete_setting(experiment_id, key)
    return Response(status_code=204)
