"""The API's error vocabulary: every failure a client can see, as a typed exception.

Domain services raise these; `handlers.py` turns them into
`{"error_code": ..., "message": ...}` with the status below. The codes are
MLflow's, so the MLflow-compatible routes can pass them through unchanged.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of every error the API reports on purpose."""

    status_code = 500
    error_code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        body: dict[str, Any] = {"error_code": self.error_code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidParameter(ApiError):
    """The request is malformed or asks for something impossible."""

    status_code = 400
    error_code = "INVALID_PARAMETER_VALUE"


class AlreadyExists(ApiError):
    """A create would collide with an existing resource (MLflow answers 400 too)."""

    status_code = 400
    error_code = "RESOURCE_ALREADY_EXISTS"


class NotFound(ApiError):
    """The resource does not exist in the caller's tenant."""

    status_code = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class EndpointNotFound(ApiError):
    """No such route (MLflow clients rely on this exact code for their fallbacks)."""

    status_code = 404
    error_code = "ENDPOINT_NOT_FOUND"


class Unauthenticated(ApiError):
    """No or bad credentials."""

    status_code = 401
    error_code = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    """Authenticated, but not allowed (e.g. an event of another tenant)."""

    status_code = 403
    error_code = "PERMISSION_DENIED"
    # Set once the denial is in the audit log, so the error handler does not append it twice.
    audited = False


class PayloadTooLarge(ApiError):
    """The request body is larger than this server accepts."""

    status_code = 413
    error_code = "INVALID_PARAMETER_VALUE"


class RequestLimitExceeded(ApiError):
    """A tenant quota (events per second, stored points) refuses the request; see Retry-After."""

    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class TemporarilyUnavailable(ApiError):
    """A backing service is down or slow; retrying later may succeed (clients retry 503)."""

    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class InvalidState(ApiError):
    """The request conflicts with what the server is doing (e.g. no projector to pause)."""

    status_code = 409
    error_code = "INVALID_STATE"
