"""HTTP routes of business metrics and the stakeholder report (thin: parse, call, shape)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from runledger.auth.model import Action
from services.api.access import Access
from services.api.business.repository import BusinessRepository
from services.api.business.schemas import (
    BusinessMetric,
    BusinessMetricList,
    BusinessReport,
    DeclaredBusinessMetric,
    Level,
)
from services.api.business.service import BusinessService, report_csv
from services.api.deps import Auth, RuntimeDep, forbid
from services.api.principal import Principal
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES

router = APIRouter(tags=["business"])


async def get_service(runtime: RuntimeDep, principal: Auth) -> BusinessService:
    """The business-metrics service acting for the caller."""
    return BusinessService(
        BusinessRepository(runtime.pool, principal.tenant_id), Access(principal), principal
    )


async def _tenant_writer(request: Request, runtime: RuntimeDep, principal: Auth) -> Principal:
    # Declarations apply to the whole tenant: WRITE on the tenant (engineer or admin), not a
    # grant narrowed to one experiment. A dependency, so the 403 comes before body validation.
    if not principal.can(Action.WRITE):
        raise forbid(
            runtime, request, principal, "declaring business metrics needs the engineer role on the tenant"
        )
    return principal


Service = Annotated[BusinessService, Depends(get_service)]
TenantWriter = Depends(_tenant_writer)
# The report's filters, shared with its export table (GET /exports/business-metrics).
ModelFilter = Annotated[str | None, Query(max_length=250, description="Only this registered model.")]
StageFilter = Annotated[str | None, Query(max_length=64, description="Only versions in this stage.")]
MetricFilter = Annotated[list[str], Query(description="Repeatable: only these business metrics.")]


@router.get("/business-metrics", response_model=BusinessMetricList, responses=READ_RESPONSES)
async def list_business_metrics(service: Service) -> BusinessMetricList:
    """The metrics the tenant declared business metrics."""
    return await service.declarations()


@router.post(
    "/business-metrics",
    response_model=DeclaredBusinessMetric,
    responses={
        **WRITE_RESPONSES,
        201: {"model": DeclaredBusinessMetric, "description": "A new declaration (200: a replaced one)."},
    },
    dependencies=[TenantWriter],
)
async def declare_business_metric(
    body: BusinessMetric, service: Service, response: Response
) -> DeclaredBusinessMetric:
    """Declare a metric key a business metric, or replace its declaration (201 when new)."""
    stored, created = await service.declare(body)
    response.status_code = 201 if created else 200
    return stored


@router.delete(
    "/business-metrics/{key:path}", status_code=204, responses=WRITE_RESPONSES, dependencies=[TenantWriter]
)
async def delete_business_metric(key: str, service: Service) -> Response:
    """Withdraw a declaration (the metric's values stay; it leaves the report)."""
    await service.delete(key)
    return Response(status_code=204)


@router.get(
    "/reports/business",
    response_model=BusinessReport,
    responses={**READ_RESPONSES, 200: {"content": {"text/csv": {}}}},
)
async def business_report(
    service: Service,
    level: Level = "version",
    model: ModelFilter = None,
    stage: StageFilter = None,
    metric: MetricFilter = [],  # noqa: B006
    format: Literal["json", "csv"] = "json",
) -> BusinessReport | Response:
    """The stakeholder report: business metrics of registered model versions, by model, version
    and stage (`level=version`), or rolled up per stage or per model; `format=csv` for BI tools."""
    report = await service.report(level, model, stage, metric)
    if format == "csv":
        return Response(
            report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="business-report-{level}.csv"'},
        )
    return report
