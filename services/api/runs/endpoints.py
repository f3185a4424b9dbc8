"""HTTP routes of runs (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from runledger.auth.model import Action
from services.api.deps import Auth, ConsistentRead, RuntimeDep, require
from services.api.experiments.repository import ExperimentRepository
from services.api.json_body import documented_body, parse_body
from services.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.api.runs.filters import parse_key_values
from services.api.runs.repository import RunFilters, RunRepository
from services.api.runs.schemas import (
    MetricsLog,
    ParamsLog,
    Run,
    RunCreate,
    RunLifecycleFilter,
    RunList,
    RunTable,
    RunWriteResult,
    StatusUpdate,
    TagsSet,
)
from services.api.runs.service import RunService
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES, WaitForProjection, write_status
from services.api.writes import WriteReceipt

router = APIRouter(prefix="/runs", tags=["runs"])

MAX_TABLE_RUNS = 100_000  # runs of one GET /runs:table answer

# A caller that may write nothing at all is refused before its body is even read.
Writer = require(Action.WRITE)


async def get_service(runtime: RuntimeDep, principal: Auth) -> RunService:
    """The run service acting for the caller."""
    return RunService(
        RunRepository(runtime.pool, principal),
        ExperimentRepository(runtime.pool, principal),
        runtime.writer,
        principal,
    )


Service = Annotated[RunService, Depends(get_service)]


def _result(run_id: str, receipt: WriteReceipt, run: Run | None) -> RunWriteResult:
    return RunWriteResult(
        run_id=run_id, run=run, projected=receipt.projected, consistency_token=receipt.token.encode()
    )


@router.get("", response_model=RunList, responses=READ_RESPONSES, dependencies=[ConsistentRead])
async def list_runs(
    service: Service,
    experiment_id: Annotated[
        list[str], Query(description="Repeatable: runs of any of these experiments.")
    ] = [],  # noqa: B006
    status: Annotated[list[str], Query(description="Repeatable: RUNNING, FINISHED, ...")] = [],  # noqa: B006
    parent_run_id: str | None = None,
    tag: Annotated[
        list[str],
        Query(description="Repeatable `key:value` (or bare `key`; `` `a:b`:v `` for keys with ':')."),
    ] = [],  # noqa: B006
    param: Annotated[list[str], Query(description="Repeatable `key:value` (or bare `key`).")] = [],  # noqa: B006
    lifecycle_stage: RunLifecycleFilter = RunLifecycleFilter.ACTIVE,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> RunList:
    """Search runs (filters AND-ed), newest start_time first, one page at a time."""
    filters = RunFilters(
        experiment_ids=experiment_id,
        statuses=[s.upper() for s in status],
        parent_run_id=parent_run_id,
        tags=parse_key_values(tag, "tag"),
        params=parse_key_values(param, "param"),
        lifecycle=lifecycle_stage,
    )
    return await service.page(filters, page_size, page_token)


@router.get(
    ":table",
    response_class=Response,
    responses={**READ_RESPONSES, 200: {"model": RunTable, "description": "The runs as columns."}},
    dependencies=[ConsistentRead],
)
async def runs_table(
    service: Service,
    experiment_id: Annotated[
        list[str],
        Query(max_length=100, description="Repeatable; default: every experiment the caller may read."),
    ] = [],  # noqa: B006
    filter: Annotated[
        str | None,
        Query(
            max_length=10_000,
            description="MLflow run-search grammar, as POST /api/2.0/mlflow/runs/search takes it.",
        ),
    ] = None,
    lifecycle_stage: RunLifecycleFilter = RunLifecycleFilter.ACTIVE,
    limit: Annotated[int, Query(ge=1, le=MAX_TABLE_RUNS)] = MAX_TABLE_RUNS,
) -> Response:
    """Every run of the experiments in one answer, as columns (the web UI's runs table).

    Attributes, every param, tag and latest metric value: one list per field, entry i of each
    is run i (newest start_time first). Four queries whatever the number of runs, instead of
    paging through GET /runs; `truncated` says that more than `limit` runs matched.
    """
    table = await service.table(experiment_id, filter, lifecycle_stage, limit)
    return Response(orjson.dumps(dict(table)), media_type="application/json")


@router.get("/{run_id}", response_model=Run, responses=READ_RESPONSES, dependencies=[ConsistentRead])
async def get_run(run_id: str, service: Service) -> Run:
    """A run with params, tags and the latest value of each metric."""
    return await service.get(run_id)


@router.post(
    "", response_model=RunWriteResult, status_code=201, responses=WRITE_RESPONSES, dependencies=[Writer]
)
async def create_run(body: RunCreate, service: Service, response: Response) -> RunWriteResult:
    """Start a run; with experiment_name the experiment is created when missing."""
    run_id, receipt, run = await service.create(body)
    response.status_code = write_status(receipt, created=True)
    return _result(run_id, receipt, run)


@router.post(
    "/{run_id}/params", response_model=RunWriteResult, responses=WRITE_RESPONSES, dependencies=[Writer]
)
async def log_params(run_id: str, body: ParamsLog, service: Service, response: Response) -> RunWriteResult:
    """Log params (immutable: re-logging the same value is fine, another value is refused)."""
    receipt = await service.log_params(run_id, body.params)
    response.status_code = write_status(receipt)
    return _result(run_id, receipt, None)


@router.post(
    "/{run_id}/metrics",
    response_model=RunWriteResult,
    responses=WRITE_RESPONSES,
    dependencies=[Writer],
    openapi_extra=documented_body(MetricsLog),
)
async def log_metrics(
    run_id: str, request: Request, service: Service, response: Response, wait: WaitForProjection = True
) -> RunWriteResult:
    """Log metric points as columnar events (up to 100,000 points per request)."""
    body = await parse_body(request, MetricsLog)  # up to 100,000 points: off the event loop
    receipt = await service.log_metrics(run_id, body.metrics, wait=wait)
    response.status_code = write_status(receipt)
    return _result(run_id, receipt, None)


@router.post(
    "/{run_id}/tags", response_model=RunWriteResult, responses=WRITE_RESPONSES, dependencies=[Writer]
)
async def set_tags(run_id: str, body: TagsSet, service: Service, response: Response) -> RunWriteResult:
    """Set tags (overwriting existing values)."""
    receipt = await service.set_tags(run_id, body.tags)
    response.status_code = write_status(receipt)
    return _result(run_id, receipt, None)


@router.delete(
    "/{run_id}/tags/{key:path}",
    response_model=RunWriteResult,
    responses=WRITE_RESPONSES,
    dependencies=[Writer],
)
async def delete_tag(run_id: str, key: str, service: Service, response: Response) -> RunWriteResult:
    """Delete one tag (keys may contain '/')."""
    receipt = await service.delete_tag(run_id, key)
    response.status_code = write_status(receipt)
    return _result(run_id, receipt, None)


@router.post(
    "/{run_id}/status", response_model=RunWriteResult, responses=WRITE_RESPONSES, dependencies=[Writer]
)
async def set_status(run_id: str, body: StatusUpdate, service: Service, response: Response) -> RunWriteResult:
    """Change the run's status; terminal states get end_time (default now)."""
    receipt = await service.set_status(run_id, body.status, body.end_time)
    response.status_code = write_status(receipt)
    return _result(run_id, receipt, await service.after_write(run_id, receipt))


@router.delete("/{run_id}", response_model=RunWriteResult, responses=WRITE_RESPONSES, dependencies=[Writer])
async def delete_run(run_id: str, service: Service, response: Response) -> RunWriteResult:
    """Soft-delete a run (lifecycle_stage becomes deleted)."""
    receipt = await service.delete(run_id)
    response.status_code = write_status(receipt)
    return _result(run_id, receipt, await service.after_write(run_id, receipt))
