"""HTTP routes of experiments (thin: parse, call the service, shape the answer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from runledger.auth.model import Action
from services.api.deps import Auth, ConsistentRead, RuntimeDep, require
from services.api.experiments.repository import ExperimentFilters, ExperimentRepository
from services.api.experiments.schemas import (
    Experiment,
    ExperimentCreate,
    ExperimentList,
    ExperimentUpdate,
    ExperimentWriteResult,
    LifecycleFilter,
)
from services.api.experiments.service import ExperimentService
from services.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES, write_status
from services.api.writes import WriteReceipt

router = APIRouter(prefix="/experiments", tags=["experiments"])

# A caller that may write nothing at all is refused before its body is even read.
Writer = require(Action.WRITE)


async def get_service(runtime: RuntimeDep, principal: Auth) -> ExperimentService:
    """The experiment service acting for the caller."""
    return ExperimentService(ExperimentRepository(runtime.pool, principal), runtime.writer, principal)


Service = Annotated[ExperimentService, Depends(get_service)]


def _result(
    experiment_id: str, receipt: WriteReceipt, experiment: Experiment | None
) -> ExperimentWriteResult:
    return ExperimentWriteResult(
        experiment_id=experiment_id,
        experiment=experiment,
        projected=receipt.projected,
        consistency_token=receipt.token.encode(),
    )


@router.get("", response_model=ExperimentList, responses=READ_RESPONSES, dependencies=[ConsistentRead])
async def list_experiments(
    service: Service,
    name: Annotated[
        str | None, Query(max_length=500, description="Case-insensitive substring of the name.")
    ] = None,
    lifecycle_stage: LifecycleFilter = LifecycleFilter.ACTIVE,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: str | None = None,
) -> ExperimentList:
    """List experiments, newest first, one page at a time."""
    return await service.page(ExperimentFilters(name, lifecycle_stage), page_size, page_token)


@router.get(
    "/{experiment_id}", response_model=Experiment, responses=READ_RESPONSES, dependencies=[ConsistentRead]
)
async def get_experiment(experiment_id: str, service: Service) -> Experiment:
    """One experiment with its tags."""
    return await service.get(experiment_id)


@router.post(
    "",
    response_model=ExperimentWriteResult,
    status_code=201,
    responses=WRITE_RESPONSES,
    dependencies=[Writer],
)
async def create_experiment(
    body: ExperimentCreate, service: Service, response: Response
) -> ExperimentWriteResult:
    """Create an experiment; its id derives from the name (RESOURCE_ALREADY_EXISTS if taken)."""
    experiment_id, receipt, experiment = await service.create(body.name, body.tags, body.artifact_location)
    response.status_code = write_status(receipt, created=True)
    return _result(experiment_id, receipt, experiment)


@router.patch(
    "/{experiment_id}", response_model=ExperimentWriteResult, responses=WRITE_RESPONSES, dependencies=[Writer]
)
async def rename_experiment(
    experiment_id: str, body: ExperimentUpdate, service: Service, response: Response
) -> ExperimentWriteResult:
    """Rename an experiment (its id does not change)."""
    receipt, experiment = await service.rename(experiment_id, body.name)
    response.status_code = write_status(receipt)
    return _result(experiment_id, receipt, experiment)


@router.delete(
    "/{experiment_id}", response_model=ExperimentWriteResult, responses=WRITE_RESPONSES, dependencies=[Writer]
)
async def delete_experiment(
    experiment_id: str, service: Service, response: Response
) -> ExperimentWriteResult:
    """Soft-delete an experiment (lifecycle_stage becomes deleted)."""
    receipt, experiment = await service.delete(experiment_id)
    response.status_code = write_status(receipt)
    return _result(experiment_id, receipt, experiment)
