"""Request metrics of the API: an ASGI middleware timing each request by its route template.

The `route` label is the template the request matched (`/api/v1/runs/{run_id}`), never
the raw path, so ids in paths add no series; requests that match no route are
`unmatched`. Scrapes of /metrics are not counted.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.observability import API_REQUEST_SECONDS, API_REQUESTS_IN_FLIGHT, METRICS_PATH

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The full template of the route that handled `scope` (after routing), else UNMATCHED.

    Starlette leaves the matched route in scope["route"]. Depending on the FastAPI
    version, a route of an included router carries the include prefix in its path or
    not; the prefix is then the part of the request path before where the route's own
    pattern matches (prefixes here are literal, like /api/v1).
    """
    route: Any = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return UNMATCHED
    regex = getattr(route, "path_regex", None)
    path: str = scope.get("path", "")
    if regex is None or regex.match(path):
        return template
    start = path.find("/", 1)
    while start > 0:
        if regex.match(path[start:]):
            return path[:start] + template
        start = path.find("/", start + 1)
    return template


class RequestMetrics:
    """Pure ASGI middleware (no request/response objects): latency histogram + in-flight gauge."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes the app becomes a 500 further out
        method = scope.get("method", "")

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        API_REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            API_REQUESTS_IN_FLIGHT.dec()
            API_REQUEST_SECONDS.labels(
                method if method in _METHODS else "other", route_template(scope), str(status)
            ).observe(time.perf_counter() - start)
