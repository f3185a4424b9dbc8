"""Response shapes shared by every domain."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, Field

from services.api.writes import WriteReceipt

# `?wait=false` on the bulk write routes: for writers that do not read back at once (the SDK's
# HTTP transport, loggers), whose throughput a projector round per request would bound.
WaitForProjection = Annotated[
    bool,
    Query(
        description="false: answer 202 once the event log acknowledged the write (it is durable),"
        " with the consistency_token that reads wait on, instead of waiting for its projection."
    ),
]


class ErrorBody(BaseModel):
    """Every error response."""

    error_code: str = Field(description="MLflow-style code, e.g. RESOURCE_DOES_NOT_EXIST.")
    message: str


class WriteResult(BaseModel):
    """What every write answers: 200/201 once reads see it, 202 when projection is still pending."""

    projected: bool = Field(
        description="True when reads already see this write. False (HTTP 202): pass consistency_token to reads."
    )
    consistency_token: str = Field(
        description="Opaque position of the write in the event log; reads given `?consistency_token=` wait for it."
    )


def write_status(receipt: WriteReceipt, *, created: bool = False) -> int:
    """HTTP status of a write: 201/200 when projected, 202 Accepted when still pending."""
    if not receipt.projected:
        return 202
    return 201 if created else 200


# Documented on every write route.
WRITE_RESPONSES: dict[int | str, dict[str, object]] = {
    202: {"description": "Accepted: produced but not yet projected; reads may wait with consistency_token."},
    400: {
        "model": ErrorBody,
        "description": "Invalid input (INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS).",
    },
    404: {"model": ErrorBody, "description": "RESOURCE_DOES_NOT_EXIST in the caller's tenant."},
    429: {
        "model": ErrorBody,
        "description": "REQUEST_LIMIT_EXCEEDED: a tenant quota; retry after Retry-After.",
    },
    503: {"model": ErrorBody, "description": "The event log or a store is unavailable; retry."},
}
READ_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "Invalid query parameter or page token."},
    404: {"model": ErrorBody, "description": "RESOURCE_DOES_NOT_EXIST in the caller's tenant."},
}
# Documented on every authenticated route (app.py adds them to each API router).
API_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {
        "model": ErrorBody,
        "description": "UNAUTHENTICATED: no API key, or an unknown, revoked or expired one.",
    },
    403: {"model": ErrorBody, "description": "PERMISSION_DENIED: the caller's role does not allow this."},
    503: {
        "model": ErrorBody,
        "description": "A backing service is unavailable or the API is starting; retry.",
    },
}
