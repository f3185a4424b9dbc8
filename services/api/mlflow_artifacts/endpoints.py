"""MLflow's artifact proxy, exactly as the unmodified client calls it.

Runs' artifact_uri is mlflow-artifacts:/<exp>/<run>/artifacts, so the client sends
PUT/GET /api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/<path> (raw body,
one request per file) and lists with GET /api/2.0/mlflow-artifacts/artifacts?path=
<exp>/<run>/artifacts[/sub]. Listings give names relative to the listed directory,
no file_size for directories, and `{}` for a file, an empty or missing directory, or
a run the caller may not read (exactly what MLflow answers for a missing path).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from runledger.auth.model import Action
from services.api.artifacts.http import FILE_RESPONSES, RAW_BODY, Service, declared_size, file_response
from services.api.artifacts.paths import artifact_path
from services.api.deps import SettledCaller, require
from services.api.errors import ApiError
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES, ErrorBody

# The client uploads right after runs/create, which answers before the run is projected.
router = APIRouter(prefix="/mlflow-artifacts", tags=["mlflow"], dependencies=[SettledCaller])
PREFIX = "/api/2.0"  # where app.py mounts this router

Writer = require(Action.WRITE)
_RUN_FILE = "/artifacts/{experiment_id}/{run_id}/artifacts/{path:path}"


@router.put(
    _RUN_FILE,
    responses={
        **WRITE_RESPONSES,
        403: {"model": ErrorBody, "description": "PERMISSION_DENIED"},
        429: {"model": ErrorBody, "description": "REQUEST_LIMIT_EXCEEDED: artifact storage quota"},
    },
    dependencies=[Writer],
    openapi_extra=RAW_BODY,
)
async def upload_artifact(
    experiment_id: str, run_id: str, path: str, request: Request, service: Service
) -> dict[str, Any]:
    """Store one file of a run (raw body, streamed); answers `{}` like MLflow's server."""
    path = artifact_path(path)
    info = await service.writable_run(run_id, experiment_id)
    await service.upload(info, path, request.stream(), declared_size(request))
    return {}


@router.get(_RUN_FILE, response_class=Response, responses={**READ_RESPONSES, **FILE_RESPONSES})
async def download_artifact(
    experiment_id: str, run_id: str, path: str, request: Request, service: Service
) -> Response:
    """One file of a run, streamed."""
    return await file_response(service, await service.file(run_id, path, experiment_id), request)


@router.get("/artifacts", responses=READ_RESPONSES)
async def list_artifacts(
    service: Service,
    path: Annotated[str, Query(description="<experiment_id>/<run_id>/artifacts[/<dir>]")] = "",
) -> dict[str, Any]:
    """`{"files": [{"path", "is_dir", "file_size"}]}` of one directory of a run's artifacts."""
    parts = path.strip("/").split("/", 3)
    if len(parts) < 3 or parts[2] != "artifacts" or not parts[0] or not parts[1]:
        return {}  # not inside a run's artifact root: nothing MLflow's client asks for
    experiment_id, run_id = parts[0], parts[1]
    directory = parts[3] if len(parts) == 4 else ""
    try:
        entries = await service.listing(run_id, directory, experiment_id)
    except ApiError as exc:
        if exc.status_code == 404:
            return {}
        raise
    files: list[dict[str, Any]] = []
    for entry in entries:
        item: dict[str, Any] = {"path": entry.name, "is_dir": entry.is_dir}
        if not entry.is_dir:
            item["file_size"] = entry.size
        files.append(item)
    return {"files": files} if files else {}
