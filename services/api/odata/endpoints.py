"""HTTP routes of the OData v4 feed: /odata/ (service document), /odata/$metadata, one
collection route per entity set (and its /$count).

Authentication is the API's (app.py includes this router with get_principal): Basic auth
with the key id as user name and the secret as password, which is what Excel, Power BI and
Tableau send; Bearer and X-API-Key work too. The OpenAPI schema declares the routes with
OData's system query options and media types (so that schemathesis fuzzes them too);
tests/integration/test_odata.py probes them across tenants with a real OData client.
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
router = APIRouter(prefix=PREFIX, tags=["odata"])

_VERSION = {"OData-Version": "4.0"}
_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

_ERROR = {"$ref": "#/components/schemas/ErrorBody"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"schema": _ERROR}}}
    for status, description in (
        (400, "An invalid system query option ($filter, $orderby, $select, $top, $skip, $skiptoken)."),
        (403, "PERMISSION_DENIED: the caller may not read this tenant."),
    )
}
_JSON_OBJECT = {"type": "object", "required": ["value"], "properties": {"value": {"type": "array"}}}
_COLLECTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "One page of entities: `value`, `@odata.nextLink` while more follow, `@odata.count`.",
        "content": {"application/json": {"schema": _JSON_OBJECT}},
    },
}
_COUNT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "The number of matching entities.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}


def _option(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_FILTER = _option(
    "$filter", {"type": "string"}, "e.g. Status eq 'FINISHED' and StartTime gt 2024-01-01T00:00:00Z"
)
# OData's system query options, read from the raw query string (FastAPI cannot bind `$` names).
_COLLECTION_OPTIONS = {
    "parameters": [
        _FILTER,
        _option("$select", {"type": "string"}, "Comma-separated property names."),
        _option("$orderby", {"type": "string"}, "e.g. StartTime desc,RunId"),
        _option("$top", {"type": "integer", "minimum": 0}, "At most this many entities in all."),
        _option("$skip", {"type": "integer", "minimum": 0}, "Skip this many entities first."),
        _option("$count", {"type": "string", "enum": ["true", "false"]}, "Add @odata.count."),
        _option("$skiptoken", {"type": "string"}, "From @odata.nextLink: the next page."),
        _option("$format", {"type": "string", "enum": ["json"]}, "Only JSON is served."),
    ]
}
_COUNT_OPTIONS = {"parameters": [_FILTER]}


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


@router.get("", responses={403: _ERRORS[403]})
@router.get("/", responses={403: _ERRORS[403]})
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


@router.get(
    "/$metadata",
    response_class=Response,
    responses={200: {"description": "CSDL (OData v4 XML).", "content": {"application/xml": {}}}},
)
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
    router.add_api_route(
        f"/{_set.name}",
        _collection_route(_set),
        methods=["GET"],
        response_class=Response,
        responses=_COLLECTION_RESPONSES,
        openapi_extra=_COLLECTION_OPTIONS,
    )
    router.add_api_route(
        f"/{_set.name}/$count",
        _count_route(_set),
        methods=["GET"],
        response_class=Response,
        responses=_COUNT_RESPONSES,
        openapi_extra=_COUNT_OPTIONS,
    )
