"""HTTP routes of metrics: a run's keys, and one series' history in JSON or Arrow."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response

from services.api.access import Access
from services.api.deps import Auth, ConsistentRead, RuntimeDep
from services.api.metrics.downsample import MAX_MAX_POINTS, Method
from services.api.metrics.encode import ARROW_STREAM, arrow_stream, columnar_json, points_json
from services.api.metrics.repository import MetricSeriesRepository
from services.api.metrics.schemas import (
    ColumnarHistory,
    HistoryFormat,
    HistoryShape,
    MetricKeys,
    PointsHistory,
)
from services.api.metrics.service import HistoryQuery, MetricService
from services.api.runs.repository import RunRepository
from services.api.schemas import READ_RESPONSES

router = APIRouter(prefix="/runs", tags=["metrics"])

Int64Query = Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1)]


async def get_service(runtime: RuntimeDep, principal: Auth) -> MetricService:
    """The metric service acting for the caller."""
    return MetricService(
        RunRepository(runtime.pool, principal),
        MetricSeriesRepository(runtime.clickhouse, principal),
        Access(principal),
    )


Service = Annotated[MetricService, Depends(get_service)]

_HISTORY_RESPONSES: dict[int | str, dict[str, object]] = {
    **READ_RESPONSES,
    200: {
        "model": ColumnarHistory | PointsHistory,
        "description": "JSON in shape=columnar (default) or shape=points. format=arrow (or Accept: "
        f"{ARROW_STREAM}) gives an Arrow IPC stream of (step int64, timestamp int64 ms nullable, value float64) "
        "with key, method and downsampled in the schema metadata.",
        "content": {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    },
}


@router.get(
    "/{run_id}/metrics", response_model=MetricKeys, responses=READ_RESPONSES, dependencies=[ConsistentRead]
)
async def list_metrics(run_id: str, service: Service) -> MetricKeys:
    """Every metric key of a run with its latest point."""
    return await service.keys(run_id)


@router.get(
    "/{run_id}/metrics/{key:path}/history",
    responses=_HISTORY_RESPONSES,
    dependencies=[ConsistentRead],
    response_class=Response,
)
async def metric_history(
    run_id: str,
    key: str,
    service: Service,
    start_step: Int64Query = None,
    end_step: Int64Query = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=2, le=MAX_MAX_POINTS, description="Reduce to at most this many points (default method minmax)."
        ),
    ] = None,
    method: Annotated[
        Method | None,
        Query(
            description="raw (every point; the default without max_points), minmax (min and max of "
            "max_points/2 step buckets: spikes survive) or lttb (largest triangle three buckets)."
        ),
    ] = None,
    format: HistoryFormat | None = None,
    shape: HistoryShape = HistoryShape.COLUMNAR,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The points of one series in step order, optionally downsampled in ClickHouse."""
    answer = await service.plan(run_id, key, HistoryQuery(start_step, end_step, max_points, method))
    if format is HistoryFormat.ARROW or (format is None and accept is not None and ARROW_STREAM in accept):
        table = await service.table(run_id, key, answer)
        return Response(arrow_stream(key, answer.method, answer.downsampled, table), media_type=ARROW_STREAM)
    if shape is HistoryShape.POINTS:
        rows = await service.json_rows(run_id, key, answer)
        return Response(
            points_json(key, answer.method, answer.downsampled, rows), media_type="application/json"
        )
    table = await service.table(run_id, key, answer)
    return Response(
        columnar_json(key, answer.method, answer.downsampled, table), media_type="application/json"
    )
