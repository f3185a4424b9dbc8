"""Guard JSON request bodies at the door: a size limit (413) and unpaired surrogates (400).

A JSON body is parsed whole into Python objects (several times its size in memory), so
one bigger than RUNLEDGER_API_MAX_JSON_BODY_BYTES is refused before it is read to the end
(at once when Content-Length says so). Streamed uploads (artifacts) are not JSON and are
not limited here.

Unpaired surrogates (`"\\ud800"`):
JSON allows the escape, Python's json module (FastAPI's parser) turns it into a `str` that
cannot be encoded, and every store refuses it: orjson, asyncpg and the event codec all
raise deep inside a route, which answered 500 after part of the work. Checked once, at
the door, for every JSON request; bodies without such an escape (nearly all) cost one
byte search.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import InvalidParameter, PayloadTooLarge
from services.api.handlers import error_response

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def unpaired_surrogate(body: bytes) -> bool:
    """Whether the JSON text `body` holds a string with an unpaired surrogate."""
    if b"\\u" not in body or not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False  # not JSON at all: the route's own parsing refuses it
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return b"json" in value.lower()
    return False


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class GuardJsonBodies:
    """ASGI middleware: 413 for a JSON request body over `max_bytes`, 400 for one with an
    unpaired surrogate escape."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD") or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"the JSON body is larger than {self.max_bytes} bytes (RUNLEDGER_API_MAX_JSON_BODY_BYTES);"
            " send fewer items per request"
        )
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        first: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first.append(message)  # a disconnect: hand it on as it came
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # chunked, or a Content-Length that lied
                await error_response(too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not first and unpaired_surrogate(body):
            error = InvalidParameter(
                "the body escapes an unpaired UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text"
            )
            await error_response(error)(scope, receive, send)
            return
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *first]

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)
