"""HTTP routes of MLflow's tracking REST API (thin: parse as the mlflow client sends, call the service).

GET routes read the query string, POST routes a JSON body, as the client's
`call_endpoint` does. Every write route refuses a caller that may write nothing
before reading its body (403), like the native routes.

Read-your-writes without a token: the run writes answered on the broker's ack take
`AckService`; every other route takes `Service`, which first waits until the caller's
acknowledged writes are projected (services/api/pending.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.types import DecoratedCallable

from runledger.auth.model import Action
from services.api.deps import Auth, RuntimeDep, require
from services.api.mlflow import schemas
from services.api.mlflow.models import LoggedModelService
from services.api.mlflow.service import MlflowService
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES

MLFLOW_PREFIX = "/api/2.0/mlflow"

router = APIRouter(prefix=MLFLOW_PREFIX, tags=["mlflow"])
v3_router = APIRouter(prefix="/api/3.0/mlflow", tags=["mlflow"])

Writer = require(Action.WRITE)
_JSON = "application/json"


async def get_service(runtime: RuntimeDep, principal: Auth) -> MlflowService:
    """The MLflow service acting for the caller, once the caller's earlier writes are projected."""
    await runtime.pending.settle(principal)
    return MlflowService(runtime, principal)


async def get_ack_service(runtime: RuntimeDep, principal: Auth) -> MlflowService:
    """The MLflow service acting for the caller, for the writes answered on the broker's ack."""
    return MlflowService(runtime, principal)


async def get_models(runtime: RuntimeDep, principal: Auth) -> LoggedModelService:
    """The logged-model service acting for the caller, once the caller's earlier writes are projected."""
    await runtime.pending.settle(principal)
    return LoggedModelService(runtime, principal)


Service = Annotated[MlflowService, Depends(get_service)]
AckService = Annotated[MlflowService, Depends(get_ack_service)]
Models = Annotated[LoggedModelService, Depends(get_models)]
Body = dict[str, Any]


def _write(path: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    return router.post(path, responses=WRITE_RESPONSES, dependencies=[Writer])


# ---------------------------------------------------------------------- experiments


@_write("/experiments/create")
async def create_experiment(body: schemas.ExperimentCreate, service: Service) -> Body:
    """Create an experiment: {experiment_id}."""
    return await service.create_experiment(body)


@router.get("/experiments/get", responses=READ_RESPONSES)
async def get_experiment(experiment_id: str, service: Service) -> Body:
    """One experiment: {experiment}."""
    return await service.get_experiment(experiment_id)


@router.get("/experiments/get-by-name", responses=READ_RESPONSES)
async def get_experiment_by_name(
    experiment_name: Annotated[str, Query(min_length=1, max_length=500)], service: Service
) -> Body:
    """The experiment of that name: {experiment}, or 404 RESOURCE_DOES_NOT_EXIST."""
    return await service.get_experiment_by_name(experiment_name)


@router.post("/experiments/search", responses=READ_RESPONSES)
async def search_experiments(body: schemas.ExperimentSearch, service: Service) -> Body:
    """Search experiments (a read, though a POST): {experiments, next_page_token}."""
    return await service.search_experiments(body)


@_write("/experiments/update")
async def update_experiment(body: schemas.ExperimentUpdate, service: Service) -> Body:
    """Rename an experiment."""
    return await service.rename_experiment(body)


@_write("/experiments/delete")
async def delete_experiment(body: schemas.ExperimentRef, service: Service) -> Body:
    """Soft-delete an experiment."""
    return await service.delete_experiment(body.experiment_id)


@_write("/experiments/restore")
async def restore_experiment(body: schemas.ExperimentRef, service: Service) -> Body:
    """Restore a deleted experiment."""
    return await service.restore_experiment(body.experiment_id)


@_write("/experiments/set-experiment-tag")
async def set_experiment_tag(body: schemas.ExperimentTag, service: Service) -> Body:
    """Set one tag of an experiment."""
    return await service.set_experiment_tag(body)


@_write("/experiments/delete-experiment-tag")
async def delete_experiment_tag(body: schemas.ExperimentTagDelete, service: Service) -> Body:
    """Delete one tag of an experiment (RESOURCE_DOES_NOT_EXIST when it has none of that key)."""
    return await service.delete_experiment_tag(body)


# ---------------------------------------------------------------------- runs


@_write("/runs/create")
async def create_run(body: schemas.RunCreate, service: AckService) -> Body:
    """Start a run: {run}."""
    return await service.create_run(body)


@router.get("/runs/get", responses=READ_RESPONSES)
async def get_run(service: Service, run_id: str | None = None, run_uuid: str | None = None) -> Body:
    """One run with its latest metrics, params, tags and inputs: {run}."""
    return await service.get_run(run_id or run_uuid or "")


@_write("/runs/update")
async def update_run(body: schemas.RunUpdate, service: AckService) -> Body:
    """Change status, end_time or run_name: {run_info}."""
    return await service.update_run(body)


@_write("/runs/delete")
async def delete_run(body: schemas.RunRef, service: Service) -> Body:
    """Soft-delete a run."""
    return await service.delete_run(body.id())


@_write("/runs/restore")
async def restore_run(body: schemas.RunRef, service: Service) -> Body:
    """Restore a deleted run."""
    return await service.restore_run(body.id())


@router.post("/runs/search", responses=READ_RESPONSES)
async def search_runs(body: schemas.RunSearch, service: Service) -> Body:
    """Search runs with MLflow's filter grammar (a read, though a POST): {runs, next_page_token}."""
    return await service.search_runs(body)


@_write("/runs/log-metric")
async def log_metric(body: schemas.LogMetric, service: AckService) -> Body:
    """Log one metric point."""
    return await service.log_metric(body)


@_write("/runs/log-parameter")
async def log_parameter(body: schemas.LogParam, service: AckService) -> Body:
    """Log one param (immutable)."""
    return await service.log_param(body)


@_write("/runs/set-tag")
async def set_tag(body: schemas.SetTag, service: AckService) -> Body:
    """Set one tag of a run."""
    return await service.set_tag(body)


@_write("/runs/delete-tag")
async def delete_tag(body: schemas.DeleteTag, service: Service) -> Body:
    """Delete one tag of a run."""
    return await service.delete_tag(body)


@_write("/runs/log-batch")
async def log_batch(body: schemas.LogBatch, service: AckService) -> Body:
    """Log up to 1000 metrics, 100 params and 100 tags (1000 in all) at once."""
    return await service.log_batch(body)


@_write("/runs/log-inputs")
async def log_inputs(body: schemas.LogInputs, service: AckService) -> Body:
    """Log dataset inputs of a run."""
    return await service.log_inputs(body)


@_write("/runs/outputs")
async def log_outputs(body: schemas.LogOutputs, service: Service) -> Body:
    """Record logged models a run produced (Run.outputs.model_outputs)."""
    return await service.log_outputs(body)


@_write("/runs/log-model")
async def log_model(body: schemas.LogModel, service: Service) -> Body:
    """Legacy (MLflow 2) model metadata: appended to the run's `mlflow.log-model.history` tag."""
    return await service.log_model(body)


# ---------------------------------------------------------------------- metrics


@router.get("/metrics/get-history", responses=READ_RESPONSES)
async def get_metric_history(
    service: Service,
    metric_key: str,
    run_id: str | None = None,
    run_uuid: str | None = None,
    max_results: Annotated[int | None, Query(ge=1)] = None,
    page_token: str | None = None,
) -> Response:
    """A metric's history by (timestamp, step, value), paged: {metrics, next_page_token}."""
    body = await service.metric_history(run_id or run_uuid or "", metric_key, max_results, page_token)
    return Response(body, media_type=_JSON)


@router.get("/metrics/get-history-bulk-interval", responses=READ_RESPONSES)
async def get_metric_history_bulk_interval(
    service: Service,
    metric_key: str,
    run_ids: Annotated[list[str], Query()] = [],  # noqa: B006
    start_step: Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1)] = None,
    end_step: Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1)] = None,
    max_results: int = schemas.MAX_BULK_RESULTS,
) -> Response:
    """A metric of up to 100 runs, each sampled to about max_results steps: {metrics}."""
    body = await service.metric_history_bulk(run_ids, metric_key, start_step, end_step, max_results)
    return Response(body, media_type=_JSON)


# ---------------------------------------------------------------------- logged models (MLflow 3)


@_write("/logged-models")
async def create_logged_model(body: schemas.LoggedModelCreate, models: Models) -> Body:
    """Create a logged model (PENDING): {model}."""
    return await models.create(body)


@router.post("/logged-models/search", responses=READ_RESPONSES)
async def search_logged_models(body: schemas.LoggedModelSearch, models: Models) -> Body:
    """Search logged models with MLflow's filter grammar (a read, though a POST): {models, next_page_token}."""
    return await models.search(body)


@router.get("/logged-models/{model_id}", responses=READ_RESPONSES)
async def get_logged_model(model_id: str, models: Models, allow_deleted: bool = False) -> Body:
    """One logged model: {model} (a deleted one only with allow_deleted=true)."""
    return await models.get(model_id, allow_deleted)


@router.delete("/logged-models/{model_id}", responses=WRITE_RESPONSES, dependencies=[Writer])
async def delete_logged_model(model_id: str, models: Models) -> Body:
    """Delete a logged model (soft)."""
    return await models.delete(model_id)


@_write("/logged-models/{model_id}/params")
async def log_logged_model_params(model_id: str, body: schemas.LoggedModelParams, models: Models) -> Body:
    """Log params of a logged model (first value of a key wins)."""
    return await models.log_params(model_id, body)


@router.patch("/logged-models/{model_id}", responses=WRITE_RESPONSES, dependencies=[Writer])
async def finalize_logged_model(model_id: str, body: schemas.LoggedModelFinalize, models: Models) -> Body:
    """Finalize a logged model (status READY or UPLOAD_FAILED): {model}."""
    return await models.finalize(model_id, body)


@router.patch("/logged-models/{model_id}/tags", responses=WRITE_RESPONSES, dependencies=[Writer])
async def set_logged_model_tags(model_id: str, body: schemas.LoggedModelTags, models: Models) -> Body:
    """Set tags of a logged model."""
    return await models.set_tags(model_id, body)


@router.delete("/logged-models/{model_id}/tags/{tag_key}", responses=WRITE_RESPONSES, dependencies=[Writer])
async def delete_logged_model_tag(model_id: str, tag_key: str, models: Models) -> Body:
    """Delete one tag of a logged model."""
    return await models.delete_tag(model_id, tag_key)


# ---------------------------------------------------------------------- server info


@v3_router.get("/server-info")
async def server_info(_: Auth) -> Body:
    """What this server offers the client: artifacts one PUT/GET per file through the proxy."""
    return {
        "store_type": "RunLedger",
        "workspaces_enabled": False,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": False,
        "multipart_downloads_enabled": False,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
    }
