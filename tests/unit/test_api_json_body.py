"""Metrics bodies parsed off the event loop."""

from __future__ import annotations

import json
import threading
from typing import Any

import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from httpx import ASGITransport, AsyncClient

from services.api.json_body import INLINE_PARSE_BYTES, documented_body, parse_body
from services.api.runs.schemas import MetricsLog


def _metrics_app() -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    threads: list[str] = []

    @app.post("/metrics", openapi_extra=documented_body(MetricsLog))
    async def log(request: Request) -> dict[str, Any]:
        body = await parse_body(request, MetricsLog)
        threads.append(threading.current_thread().name)
        return {"points": len(body.metrics)}

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: Exception) -> Any:
        from fastapi.responses import JSONResponse

        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"errors": [list(e["loc"]) for e in exc.errors()]}, 400)

    return app, threads


async def test_a_metrics_body_is_validated_as_fastapi_would_and_a_large_one_off_the_loop() -> None:
    app, _ = _metrics_app()
    loop_thread = threading.current_thread()
    parsed_in: list[threading.Thread] = []
    original = MetricsLog.model_validate.__func__  # type: ignore[attr-defined]

    def spy(cls: type[MetricsLog], obj: Any, *args: Any, **kwargs: Any) -> MetricsLog:
        parsed_in.append(threading.current_thread())
        validated: MetricsLog = original(cls, obj, *args, **kwargs)
        return validated

    small = {"metrics": [{"key": "loss", "value": "NaN", "step": 1}]}
    large = {"metrics": [{"key": f"m{i}", "value": float(i), "step": 1} for i in range(2000)]}
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as client:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MetricsLog, "model_validate", classmethod(spy))
            ok_small = await client.post("/metrics", json=small)
            ok_large = await client.post("/metrics", json=large)
        assert ok_small.json() == {"points": 1} and ok_large.json() == {"points": 2000}
        assert len(json.dumps(large)) > INLINE_PARSE_BYTES
        assert parsed_in[0] is loop_thread and parsed_in[1] is not loop_thread
        bad_point = await client.post("/metrics", json={"metrics": [{"key": "../x", "value": 1}]})
        assert bad_point.status_code == 400
        assert bad_point.json() == {"errors": [["body", "metrics", 0, "key"]]}
        not_json = await client.post(
            "/metrics", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json() == {"errors": [["body", 1]]}
        deep = b'{"metrics": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        too_deep = await client.post("/metrics", content=deep, headers={"content-type": "application/json"})
        assert too_deep.status_code == 400 and too_deep.json() == {"errors": [["body"]]}
        nested: object = 1
        for _ in range(200):
            nested = [nested]
        shallow = await client.post("/metrics", json={"metrics": nested})
        assert shallow.status_code == 400
        as_form = await client.post(
            "/metrics",
            content=orjson.dumps(small),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert as_form.status_code == 400 and as_form.json() == {"errors": [["body"]]}
        vendor_json = await client.post(
            "/metrics",
            content=orjson.dumps(small),
            headers={"content-type": "application/vnd.x+json; charset=utf-8"},
        )
        assert vendor_json.status_code == 200
        empty = await client.post("/metrics", json={"metrics": []})
        assert empty.status_code == 400
        schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/metrics"]["post"]["requestBody"]
    described = body["content"]["application/json"]["schema"]
    assert body["required"] is True
    assert described["properties"]["metrics"]["items"]["required"] == ["key", "value"]
    assert "$ref" not in str(described)
