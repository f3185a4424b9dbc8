"""Native artifact routes: PUT/GET /api/v1/runs/{run_id}/artifacts/{path}, GET .../artifacts?path=."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from runledger.auth.model import Action
from services.api.artifacts.http import FILE_RESPONSES, RAW_BODY, Service, declared_size, file_response
from services.api.artifacts.paths import artifact_path
from services.api.artifacts.schemas import ArtifactEntry, ArtifactFile, ArtifactList, ArtifactWriteResult
from services.api.deps import ConsistentRead, require
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES, ErrorBody, write_status

router = APIRouter(prefix="/runs", tags=["artifacts"])

Writer = require(Action.WRITE)
_PUT_RESPONSES = {
    **WRITE_RESPONSES,
    403: {"model": ErrorBody, "description": "The caller may read the run but not write it."},
    429: {"model": ErrorBody, "description": "The tenant's artifact storage quota (REQUEST_LIMIT_EXCEEDED)."},
}


@router.put(
    "/{run_id}/artifacts/{path:path}",
    response_model=ArtifactWriteResult,
    status_code=201,
    responses=_PUT_RESPONSES,
    dependencies=[Writer],
    openapi_extra=RAW_BODY,
)
async def put_artifact(
    run_id: str, path: str, request: Request, service: Service, response: Response
) -> ArtifactWriteResult:
    """Store the request body (raw bytes, streamed) as the run's file `path`; the same path again
    replaces it. Content-addressed: bytes already stored are kept once. Answers once listings
    show the file (202 + consistency_token if projection is slow)."""
    path = artifact_path(path)
    info = await service.writable_run(run_id)
    uploaded = await service.upload(info, path, request.stream(), declared_size(request))
    response.status_code = write_status(uploaded.receipt, created=True)
    row = uploaded.artifact
    return ArtifactWriteResult(
        run_id=run_id,
        artifact=ArtifactFile(path=row.path, size=row.size, digest=row.digest, media_type=row.media_type),
        projected=uploaded.receipt.projected,
        consistency_token=uploaded.receipt.token.encode(),
    )


@router.get(
    "/{run_id}/artifacts/{path:path}",
    response_class=Response,
    responses={**READ_RESPONSES, **FILE_RESPONSES},
    dependencies=[ConsistentRead],
)
async def get_artifact(run_id: str, path: str, request: Request, service: Service) -> Response:
    """The file's bytes, streamed (ETag = its sha256; `Range: bytes=a-b` gives 206)."""
    return await file_response(service, await service.file(run_id, path), request)


@router.get(
    "/{run_id}/artifacts",
    response_model=ArtifactList,
    responses=READ_RESPONSES,
    dependencies=[ConsistentRead],
)
async def list_artifacts(
    run_id: str,
    service: Service,
    path: Annotated[
        str, Query(description="Directory to list, relative to the run's root ('' = root).")
    ] = "",
) -> ArtifactList:
    """Files and directories directly in `path` of the run (empty for a file or a missing path)."""
    entries = await service.listing(run_id, path)
    return ArtifactList(
        root=path.strip("/"),
        files=[
            ArtifactEntry(
                path=e.path, is_dir=e.is_dir, file_size=e.size, digest=e.digest, media_type=e.media_type
            )
            for e in entries
        ],
    )
