"""HTTP routes of the OData v4 feed: /odata/ (service document), /odata/$metadata, one
collection route per entity set (and its /$count).

Authentication is the API's (app.py includes this router with get_principal): Basic auth
with the key id as user name and the secret as password, which is what Excel, Power BI and
Tableau send; Bearer and X-API-Key work too. The routes stay out of the OpenAPI schema
(it documents the JSON API); tests/integration/test_odata.py probes them across tenants.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.api.access import Access
from services.api.deps import Auth, RuntimeDep
from services.api.errors import ApiError
from services.api.odata.csdl import metadata_xml
from services.api.odata.model import ENTITY_SETS, EntitySet
from services.api.odata.repository import ODataRepository, Scope
from services.api.odata.service import DEFAULT_PAGE_SIZE, ODataService, page_size_preference

PREFIX = "/odata"
router = APIRouter(prefix=PREFIX, include_in_schema=False, tags=["odata"])

_VERSION = {"OData-Version": "4.0"}
_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"


def service_root(request: Request) -> str:
    """The absolute URL of the service root, ending in '/'."""
    return str(request.base_url).rstrip("/") + PREFIX + "/"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type=_JSON, headers={**_VERSION, **(headers or {})}
    )


def odata_error(error: ApiError) -> Response:
    """An error in OData's JSON shape, with the API's error_code/message alongside."""
    body = error.body() | {"error": {"code": error.error_code, "message": error.message}}
    return _json(body, error.status_code, error.headers)


def _service(runtime: RuntimeDep, principal: Auth) -> ODataService:
    access = Access(principal)
    access.require_listing()
    scope = Scope(principal.tenant_id, access.readable())
    return ODataService(ODataRepository(runtime.pool, runtime.clickhouse, scope))


@router.get("")
@router.get("/")
async def service_document(request: Request, principal: Auth) -> Response:
    """The service document: every entity set."""
    del principal
    root = service_root(request)
    return _json(
        {
            "@odata.context": f"{root}$metadata",
            "value": [{"name": s.name, "kind": "EntitySet", "url": s.name} for s in ENTITY_SETS],
        }
    )


@router.get("/$metadata")
async def metadata(principal: Auth) -> Response:
    """The CSDL XML document."""
    del principal
    return Response(metadata_xml(), media_type="application/xml;charset=utf-8", headers=_VERSION)


def _collection_route(entity_set: EntitySet) -> Callable[..., Awaitable[Response]]:
    async def collection(request: Request, runtime: RuntimeDep, principal: Auth) -> Response:
        try:
            service = _service(runtime, principal)
            size = page_size_preference(request.headers.get("prefer"))
            body = await service.collection(
                entity_set,
                list(request.query_params.multi_items()),
                service_root(request),
                size or DEFAULT_PAGE_SIZE,
            )
        except ApiError as exc:
            return odata_error(exc)
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if size else None
        return _json(body, headers=headers)

    collection.__name__ = f"odata_{entity_set.name}"
    return collection


def _count_route(entity_set: EntitySet) -> Callable[..., Awaitable[Response]]:
    async def count(request: Request, runtime: RuntimeDep, principal: Auth) -> Response:
        try:
            value = await _service(runtime, principal).count(
                entity_set, list(request.query_params.multi_items())
            )
        except ApiError as exc:
            return odata_error(exc)
        return Response(str(value), media_type="text/plain;charset=utf-8", headers=_VERSION)

    count.__name__ = f"odata_{entity_set.name}_count"
    return count


for _set in ENTITY_SETS:
    router.add_api_route(f"/{_set.name}", _collection_route(_set), methods=["GET"])
    router.add_api_route(f"/{_set.name}/$count", _count_route(_set), methods=["GET"])
