"""Exception handlers: every error leaves the API as `{"error_code", "message"}` JSON.

FastAPI's defaults (`{"detail": ...}`, 422 for bad input) are replaced: MLflow
clients read a body without `error_code` as INTERNAL_ERROR and break, and bad input
must be a 400 so that no client retries it (they retry 5xx).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.api.deps import Runtime, deny
from services.api.errors import (
    ApiError,
    EndpointNotFound,
    InvalidParameter,
    PermissionDenied,
    TemporarilyUnavailable,
)
from services.api.principal import Principal

log = logging.getLogger(__name__)

# Errors of the backing services that a retry may fix: answered 503, not 500.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def error_response(error: ApiError, status_code: int | None = None) -> JSONResponse:
    """The JSON response of an ApiError."""
    return JSONResponse(error.body(), status_code=status_code or error.status_code, headers=error.headers)


def validation_message(errors: Sequence[Any]) -> str:
    """One readable line from pydantic/FastAPI validation errors: `where: what; ...`."""
    parts: list[str] = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > 10:
        parts.append(f"... and {len(errors) - 10} more")
    return "; ".join(parts) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if isinstance(exc, PermissionDenied) and not exc.audited:
        _audit_denial(request, exc)
    return error_response(exc)


def _audit_denial(request: Request, exc: PermissionDenied) -> None:
    """Every 403 goes to the audit log, wherever in a route it was raised."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    principal: Principal | None = getattr(request.state, "principal", None)
    if runtime is None or principal is None:
        return
    deny(runtime, request, principal.tenant_id, principal.principal_id, exc.message)
    exc.audited = True


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    unauthenticated: ApiError | None = getattr(request.state, "auth_error", None)
    if unauthenticated is not None:  # the body was parsed before get_principal could refuse
        return error_response(unauthenticated)
    return error_response(InvalidParameter(validation_message(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405):
        # 405 keeps its status but carries the same code: for an MLflow client both
        # mean "this server has no such endpoint", which triggers its fallbacks.
        headers = {"Allow": _allowed_methods(request)} if exc.status_code == 405 else None
        error = EndpointNotFound(f"no endpoint {request.method} {request.url.path}", headers=headers)
        return error_response(error, exc.status_code)
    other = ApiError(str(exc.detail))
    other.error_code = "INVALID_PARAMETER_VALUE" if exc.status_code < 500 else "INTERNAL_ERROR"
    return error_response(other, exc.status_code)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers, for the `Allow` header of a 405 (RFC 9110); the router's own
    names only the first route of the path."""
    allowed = {
        method
        for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
        for route in request.app.router.routes
        if route.matches({**request.scope, "method": method})[0] == Match.FULL
    }
    return ", ".join(sorted(allowed))


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("backing service unavailable: %r", exc)
    return error_response(TemporarilyUnavailable(f"a backing service is unavailable: {type(exc).__name__}"))


async def _unstorable_text(_: Request, exc: Exception) -> JSONResponse:
    # Postgres text holds no NUL (U+0000): a request value carrying one is bad input, not a 500.
    return error_response(InvalidParameter(f"a request value cannot be stored or matched: {exc}"))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(ApiError("internal error"))


def _openapi_without_422(app: FastAPI) -> None:
    """Drop FastAPI's generated 422 responses from the spec: validation errors are 400 here."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the API can raise to its JSON error (and document it so)."""
    _openapi_without_422(app)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in _UNAVAILABLE:
        app.add_exception_handler(exc_type, _unavailable)
    for exc_type in (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
        app.add_exception_handler(exc_type, _unstorable_text)
    app.add_exception_handler(Exception, _unexpected)
