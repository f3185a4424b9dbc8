"""HTTP routes of the exports: GET /exports/{experiments,runs,metric-points,findings,business-metrics}?format=...

The first batch is read before the response starts, so a bad filter or a missing grant is
a proper 4xx; after that, batches are written to the response as they are read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from fastapi.types import DecoratedCallable

from services.api.access import Access
from services.api.business.endpoints import MetricFilter, ModelFilter, StageFilter
from services.api.business.endpoints import Service as BusinessServiceDep
from services.api.business.schemas import Level
from services.api.deps import Auth, ConsistentRead, RuntimeDep
from services.api.exports.formats import EXTENSIONS, MEDIA_TYPES, BatchWriter
from services.api.exports.service import Export, ExportRequest, ExportService, business_metrics
from services.api.schemas import READ_RESPONSES

log = logging.getLogger(__name__)
router = APIRouter(tags=["exports"])

FormatParam = Annotated[
    Literal["csv", "ndjson", "parquet", "arrow"],
    Query(description="csv (default), ndjson, parquet or arrow (Arrow IPC stream)."),
]
ExperimentIds = Annotated[
    list[str],
    Query(
        description="Repeatable: only these experiments (a shared experiment is exported only when named)."
    ),
]
RunFilter = Annotated[
    str | None,
    Query(description="MLflow run search filter, e.g. metrics.acc > 0.9 and params.lr = '0.01'."),
]
ViewType = Annotated[
    Literal["ACTIVE_ONLY", "DELETED_ONLY", "ALL"], Query(description="Which runs (lifecycle stage).")
]
_MAX_MS = 9_999_999_999_999
# The 200 of every export: a file in the requested format, never JSON.
_EXPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    **READ_RESPONSES,
    200: {
        "description": "The export as a file in `format` (Content-Disposition: attachment).",
        "content": {
            media.split(";")[0]: {"schema": {"type": "string", "format": "binary"}}
            for media in MEDIA_TYPES.values()
        },
    },
}


def _export_route(path: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The GET route of an export table: a file in `format`, after an optional consistency token."""
    return router.get(
        path, response_class=StreamingResponse, responses=_EXPORT_RESPONSES, dependencies=[ConsistentRead]
    )


async def get_service(runtime: RuntimeDep, principal: Auth) -> ExportService:
    return ExportService(runtime.pool, runtime.clickhouse, Access(principal))


Service = Annotated[ExportService, Depends(get_service)]


async def _stream(export: Export, fmt: str) -> StreamingResponse:
    batches = export.batches
    first = await anext(batches, None)  # errors before the first byte are proper answers

    async def body() -> AsyncIterator[bytes]:
        writer = BatchWriter(fmt, export.schema)  # type: ignore[arg-type]
        # Encoding (CSV text, Parquet's zstd) runs in a thread, so that the event loop meanwhile
        # reads the next page (an export that reads ahead) and serves other requests.
        try:
            if first is not None:
                yield await asyncio.to_thread(writer.write, first)
            async for batch in batches:
                chunk = await asyncio.to_thread(writer.write, batch)
                if chunk:
                    yield chunk
            yield await asyncio.to_thread(writer.close)
        except Exception:
            log.exception("export %s failed while streaming; the response is cut short", export.name)
            raise

    filename = f"{export.name}.{EXTENSIONS[fmt]}"
    return StreamingResponse(
        body(),
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


@_export_route("/exports/experiments")
async def export_experiments(
    service: Service,
    format: FormatParam = "csv",
    experiment_id: ExperimentIds = [],  # noqa: B006
    filter: Annotated[
        str | None, Query(description="MLflow experiment search filter, e.g. name LIKE 'vision%'.")
    ] = None,
    view_type: ViewType = "ACTIVE_ONLY",
) -> StreamingResponse:
    """Experiments: one row each, then one `tags.<key>` column per experiment tag key."""
    request = ExportRequest(experiment_ids=experiment_id, filter=filter, view_type=view_type)
    return await _stream(await service.experiments(request), format)


@_export_route("/exports/runs")
async def export_runs(
    service: Service,
    format: FormatParam = "csv",
    experiment_id: ExperimentIds = [],  # noqa: B006
    filter: RunFilter = None,
    view_type: ViewType = "ACTIVE_ONLY",
) -> StreamingResponse:
    """Runs as a wide table: attributes, `params.<key>`, `tags.<key>`, `metrics.<key>.latest|min|max`."""
    request = ExportRequest(experiment_ids=experiment_id, filter=filter, view_type=view_type)
    return await _stream(await service.runs(request), format)


@_export_route("/exports/metric-points")
async def export_metric_points(
    service: Service,
    format: FormatParam = "csv",
    experiment_id: ExperimentIds = [],  # noqa: B006
    filter: RunFilter = None,
    view_type: ViewType = "ACTIVE_ONLY",
    key: Annotated[list[str], Query(description="Repeatable: only these metric keys.")] = [],  # noqa: B006
) -> StreamingResponse:
    """Every metric point of the selected runs, one row per point (a long table)."""
    request = ExportRequest(experiment_ids=experiment_id, filter=filter, view_type=view_type, metric_keys=key)
    return await _stream(await service.metric_points(request), format)


@_export_route("/exports/findings")
async def export_findings(
    service: Service,
    format: FormatParam = "csv",
    experiment_id: ExperimentIds = [],  # noqa: B006
    filter: RunFilter = None,
    view_type: ViewType = "ALL",
    kind: Annotated[list[str], Query(description="Repeatable: only these finding kinds.")] = [],  # noqa: B006
    since: Annotated[
        int | None, Query(ge=0, le=_MAX_MS, description="ms since the epoch, inclusive.")
    ] = None,
) -> StreamingResponse:
    """Findings (anomalies, lint results, attributions), newest first; `filter` narrows to runs."""
    request = ExportRequest(
        experiment_ids=experiment_id, filter=filter, view_type=view_type, kinds=kind, since=since
    )
    return await _stream(await service.findings(request), format)


@_export_route("/exports/business-metrics")
async def export_business_metrics(
    service: BusinessServiceDep,
    format: FormatParam = "csv",
    level: Level = "version",
    model: ModelFilter = None,
    stage: StageFilter = None,
    metric: MetricFilter = [],  # noqa: B006
) -> StreamingResponse:
    """The stakeholder report of GET /reports/business (same rows, columns, filters and narrowing)
    as a file: one row per (model version, business metric), or rolled up per stage or model."""
    # The report itself (tenant, grants, roll-up query): the export only changes the format.
    report = await service.report(level, model, stage, metric)
    return await _stream(business_metrics(report), format)
