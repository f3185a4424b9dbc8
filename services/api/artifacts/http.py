"""What the native and the MLflow artifact routes share: the store, the service, raw bodies, file responses."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from runledger.artifacts import ArtifactStore, hex_of, open_store
from services.api.artifacts.paths import RangeNotSatisfiable, parse_range
from services.api.artifacts.repository import ArtifactRow
from services.api.artifacts.service import ArtifactService
from services.api.deps import Auth, RuntimeDep
from services.api.errors import InvalidParameter

# OpenAPI: the request body of a PUT is the file's raw bytes (read as a stream, never parsed).
RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes, streamed."},
    206: {"description": "The requested byte range (`Range: bytes=a-b`)."},
    416: {"description": "The range starts past the end of the file."},
}


async def artifact_store(request: Request, runtime: RuntimeDep) -> ArtifactStore:
    """The app's artifact store (RUNLEDGER_ARTIFACT_URI), opened on first use; tests may set
    app.state.artifact_store beforehand."""
    store: ArtifactStore | None = getattr(request.app.state, "artifact_store", None)
    if store is None:
        # Building a boto3 client reads config files: off the event loop.
        store = await asyncio.to_thread(open_store, runtime.settings)
        request.app.state.artifact_store = store
    return store


async def get_service(
    runtime: RuntimeDep, principal: Auth, store: Annotated[ArtifactStore, Depends(artifact_store)]
) -> ArtifactService:
    """The artifact service acting for the caller."""
    return ArtifactService(runtime.pool, store, runtime.writer, principal)


Service = Annotated[ArtifactService, Depends(get_service)]


def declared_size(request: Request) -> int | None:
    """The body's Content-Length, None when it is sent chunked."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        raise InvalidParameter(f"invalid Content-Length {value!r}") from None
    if size < 0:
        raise InvalidParameter(f"invalid Content-Length {value!r}")
    return size


async def file_response(service: ArtifactService, row: ArtifactRow, request: Request) -> Response:
    """The file, streamed; a single `Range: bytes=a-b` is answered with 206."""
    try:
        byte_range = parse_range(request.headers.get("range"), row.size)
    except RangeNotSatisfiable:
        return JSONResponse(
            {"error_code": "INVALID_PARAMETER_VALUE", "message": f"range not satisfiable: {row.size} bytes"},
            416,
            headers={"Content-Range": f"bytes */{row.size}"},
        )
    download = await service.download(row, byte_range)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{hex_of(row.digest)}"',  # content-addressed: the digest is a perfect validator
        "X-Artifact-Digest": row.digest,
        "Content-Length": str(row.size if byte_range is None else byte_range.length),
        # Artifacts are user content served from the API's (and the UI's) origin: an HTML or
        # SVG file opened directly must not run script there (stored XSS), nor a text file
        # be sniffed into HTML. Embedding it as <img> or downloading it is unaffected.
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'",
        "X-Content-Type-Options": "nosniff",
    }
    if byte_range is not None:
        headers["Content-Range"] = byte_range.content_range
    return StreamingResponse(
        download.chunks,
        status_code=200 if byte_range is None else 206,
        media_type=row.media_type,
        headers=headers,
    )
