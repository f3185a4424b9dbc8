"""Large JSON bodies parsed and validated off the event loop.

FastAPI parses a declared body model on the event loop. For a metrics write of up to
100,000 points that is up to ~0.3 s of CPU during which no other request of any tenant
moves (a 2,000-point body: ~8 ms). A route that takes such bodies reads the raw bytes and
calls `parse_body` instead, with `documented_body` in its `openapi_extra` so that the
OpenAPI schema still describes the body. The result and the errors are FastAPI's: the same
model validation after `json.loads`, and a RequestValidationError (400 through the app's
handler) located under "body".
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

# Below this many bytes the hop to a worker thread costs more than the parse it moves.
INLINE_PARSE_BYTES = 16 << 10

M = TypeVar("M", bound=BaseModel)


def _body_error(type_: str, msg: str, *loc: int | str, **ctx: str) -> RequestValidationError:
    """FastAPI's error for a body: located under "body"."""
    error: dict[str, Any] = {"type": type_, "loc": ("body", *loc), "msg": msg, "input": {}}
    return RequestValidationError([{**error, "ctx": ctx} if ctx else error])


def _validated(model: type[M], body: bytes) -> M:
    try:
        content = json.loads(body)
    except RecursionError:  # FastAPI answers a body it cannot parse with a 400 too
        raise _body_error("json_invalid", "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        reason = getattr(exc, "msg", str(exc))
        raise _body_error("json_invalid", "JSON decode error", getattr(exc, "pos", 0), error=reason) from None
    try:
        return model.model_validate(content)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _declares_json(content_type: str | None) -> bool:
    """FastAPI's rule: no Content-Type, application/json or application/*+json."""
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def parse_body(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as `model`; a large one in a worker thread."""
    if not _declares_json(request.headers.get("content-type")):
        raise _body_error(
            "model_attributes_type", "Input should be a JSON object (Content-Type: application/json)"
        )
    body = await request.body()
    if len(body) < INLINE_PARSE_BYTES:
        return _validated(model, body)
    return await asyncio.to_thread(_validated, model, body)


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` describing `model` as the route's required JSON body (its definitions
    inlined: the schema lives in the route, not among the document's components)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
