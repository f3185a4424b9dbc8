"""Hostile bodies through every write route: a 4xx with a message, never a 5xx, and the
server keeps serving (and projecting) good writes afterwards.

The routes come from the running server's OpenAPI document, so a route added later is
covered without editing this test: every POST/PUT/PATCH/DELETE under /api/ whose body is
JSON gets
- every whole-body hostile input of tests/support/hostile.py (malformed JSON, wrong types,
  missing fields, huge, deeply nested, NaN, invalid UTF-8, ...), and
- a plausible body built from the route's request schema with one field at a time replaced
  by a hostile value (NUL, lone surrogate, 300 kB string, integers past 64 bits, NaN and
  infinities, deep nesting, wrong JSON types, path traversal), which reaches the code
  behind the validation.
Both are seeded by RUNLEDGER_TEST_SEED. The caller is the admin of a tenant of its own, so
what a hostile body happens to write stays there. Write routes without a JSON body (artifact
byte uploads, DELETEs, actions) take no body to be hostile about.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runledger.auth.model import Role
from tests.e2e.conftest import Stack
from tests.support.auth import provision
from tests.support.hostile import hostile_bodies, hostile_seed

pytestmark = pytest.mark.integration

WRITE_METHODS = ("post", "put", "patch", "delete")
# Bodies no route may accept: not JSON, or no JSON object where every route wants one.
MUST_REFUSE = {"malformed_json", "empty", "not_object", "deep_nesting", "invalid_utf8", "wrong_content_type"}
# JSON texts put in place of one field of a plausible body.
HOSTILE_VALUES = [
    '"a\\u0000b"',
    '"\\ud800x"',
    '"' + "x" * 300_000 + '"',
    "1" + "0" * 30,
    "-9223372036854775809",
    "18446744073709551615",
    "1e400",
    "NaN",
    "-Infinity",
    "[" * 600 + "]" * 600,
    "{}",
    "[]",
    "true",
    "null",
    '""',
    '"../../../etc/passwd"',
    '"\\u202e\\ufeff\\ud83d\\ude00"',
]
_PLACEHOLDER = "@@hostile-field@@"


def _write_routes(spec: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(method, path) of write routes with a JSON body, and of those without one."""
    json_routes, other = [], []
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            if method not in WRITE_METHODS:
                continue
            content = (operation.get("requestBody") or {}).get("content", {})
            (json_routes if "application/json" in content else other).append((method.upper(), path))
    return json_routes, other


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "hostile-x"), path)


class Examples:
    """Plausible values for a JSON schema of the OpenAPI document (enough to pass most checks)."""

    def __init__(self, spec: dict[str, Any], names: dict[str, Any]) -> None:
        self.components = spec.get("components", {}).get("schemas", {})
        self.names = names

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def value(self, schema: dict[str, Any], name: str = "", depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if name in self.names:
            return self.names[name]
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                options = [o for o in schema[key] if self.resolve(o).get("type") != "null"]
                return self.value(options[0], name, depth) if options else None
        if schema.get("default") is not None:
            return schema["default"]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            if depth > 4:
                return {}
            props = schema.get("properties", {})
            out = {k: self.value(v, k, depth + 1) for k, v in props.items()}
            extra = schema.get("additionalProperties")
            if not props and isinstance(extra, dict):
                out = {"k": self.value(extra, "", depth + 1)}
            return out
        if kind == "array":
            return [self.value(schema.get("items", {}), name, depth + 1)] if depth <= 4 else []
        if kind == "integer":
            return max(1, int(schema.get("minimum", 1)))
        if kind == "number":
            return 1.0
        if kind == "boolean":
            return True
        if schema.get("format") == "date-time":
            return "2026-01-01T00:00:00Z"
        return "x"


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every field (objects by key, arrays at their first item), outermost first."""
    if path:
        yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list) and value:
        yield from _leaves(value[0], (*path, 0))


def _mutated(body: Any, path: tuple[Any, ...], fragment: str) -> bytes:
    """`body` as JSON with the field at `path` replaced by the JSON text `fragment`."""
    copy = json.loads(json.dumps(body))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = _PLACEHOLDER
    return json.dumps(copy).replace(json.dumps(_PLACEHOLDER), fragment, 1).encode()


def test_hostile_bodies_get_a_4xx_with_a_message_on_every_write_route(stack: Stack) -> None:
    seed = hostile_seed()
    rng = random.Random(seed)
    tenant = f"hostile-http-{uuid.uuid4().hex[:8]}"
    admin = asyncio.run(provision(stack.dsn, tenant, Role.ADMIN))
    with httpx.Client(base_url=stack.url, timeout=60, headers=admin.headers) as client:
        spec = client.get("/openapi.json").json()
        json_routes, _without_json_body = _write_routes(spec)
        assert len(json_routes) >= 40, json_routes  # RunLedger and MLflow writes
        assert any(p.startswith("/api/2.0/mlflow/") for _, p in json_routes)
        assert any(p.startswith("/api/v1/") for _, p in json_routes)

        run = _until_authenticated(lambda: client.post("/api/v1/runs", json={"name": f"hostile-http-{seed}"}))
        assert run.status_code in (200, 201, 202), run.text
        run_id = run.json()["run_id"]
        values = {
            "run_id": run_id,
            "experiment_id": "0",
            "tenant_id": tenant,
            "principal_id": admin.principal_id,
            "webhook_id": "hostile-none",
            "model_id": "m-hostile-none",
            "key": "hostile-key",
        }
        examples = Examples(spec, {"run_id": run_id, "run_uuid": run_id, "experiment_id": "0"})
        bodies = list(hostile_bodies(seed, huge_bytes=2_000_000))
        failures: list[str] = []
        answered = 0
        for method, path in json_routes:
            url = _fill(path, values)
            for body in bodies:
                answered += 1
                refuse = body.category in MUST_REFUSE
                if problem := _send(client, method, url, body.content, body.content_type, refuse):
                    failures.append(f"{method} {path} [{body.category}]: {problem}")
            schema = spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"][
                "schema"
            ]
            base = examples.value(schema)
            for field in list(_leaves(base))[:15]:
                for fragment in rng.sample(HOSTILE_VALUES, 4):
                    content = _mutated(base, field, fragment)
                    what = f"{method} {path} [{'.'.join(map(str, field))} = {fragment[:40]}]"
                    answered += 1
                    if problem := _send(client, method, url, content, "application/json", False):
                        failures.append(f"{what}: {problem}")
        assert answered > len(json_routes) * len(bodies)
        assert not failures, f"{len(failures)} of {answered} answers wrong:\n" + "\n".join(failures[:80])

        # Still serving and projecting: good writes on both APIs (200 = projected). The hostile
        # bodies may well have deleted the first run (a plausible runs/delete), so a new one.
        after = client.post("/api/v1/runs", json={"name": "after-hostile"})
        assert after.status_code == 201, after.text
        run_id = after.json()["run_id"]
        good = client.post(f"/api/v1/runs/{run_id}/params", json={"params": {"after": "hostile"}})
        assert good.status_code == 200, good.text
        created = client.post(
            "/api/2.0/mlflow/runs/create", json={"experiment_id": "0", "run_name": "after-hostile"}
        )
        assert created.status_code == 200, created.text
        mlflow_run = created.json()["run"]["info"]["run_id"]
        logged = client.post(
            "/api/2.0/mlflow/runs/log-metric",
            json={"run_id": mlflow_run, "key": "after", "value": 1.5, "timestamp": 1, "step": 0},
        )
        assert logged.status_code == 200, logged.text
        assert client.get(f"/api/v1/runs/{run_id}").json()["params"]["after"] == "hostile"
        assert client.get("/healthz").status_code == 200


def _until_authenticated(request: Any) -> httpx.Response:
    """A new key is known to the API within its auth poll interval."""
    deadline = time.monotonic() + 10
    while True:
        answer: httpx.Response = request()
        if answer.status_code != 401 or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def _send(
    client: httpx.Client, method: str, url: str, content: bytes, content_type: str, refuse: bool
) -> str:
    """Send one hostile request; what is wrong with the answer ("" when nothing)."""
    try:
        answer = client.request(method, url, content=content, headers={"Content-Type": content_type})
    except httpx.TransportError as exc:
        alive = _until_healthy(client)
        return f"no answer ({type(exc).__name__}: {exc}); server {'still up' if alive else 'DOWN'}"
    return _judge(refuse, answer)


def _until_healthy(client: httpx.Client) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def _judge(must_refuse: bool, answer: httpx.Response) -> str:
    """What is wrong with the answer to a hostile body ("" when nothing)."""
    status = answer.status_code
    if status >= 500:
        return f"{status} {answer.text[:300]}"
    if status < 400:
        return f"accepted ({status}) {answer.text[:200]}" if must_refuse else ""
    try:
        error = answer.json()
    except ValueError:
        return f"{status} without a JSON error body: {answer.text[:200]!r}"
    if not isinstance(error, dict) or not str(error.get("message", "")).strip():
        return f"{status} without a message: {answer.text[:200]}"
    return ""


def test_body_builder_reaches_past_validation() -> None:
    """The plausible bodies are plausible: the builder fills required fields by type."""
    spec = {
        "components": {
            "schemas": {
                "M": {
                    "type": "object",
                    "properties": {
                        "run_id": {"type": "string"},
                        "n": {"type": "integer", "minimum": 3},
                        "tags": {"type": "array", "items": {"$ref": "#/components/schemas/T"}},
                        "kind": {"anyOf": [{"type": "null"}, {"enum": ["a", "b"]}]},
                    },
                },
                "T": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "value": {"type": "number"}},
                },
            }
        }
    }
    body = Examples(spec, {"run_id": "r1"}).value({"$ref": "#/components/schemas/M"})
    assert body == {"run_id": "r1", "n": 3, "tags": [{"key": "x", "value": 1.0}], "kind": "a"}
    assert list(_leaves(body)) == [
        ("run_id",),
        ("n",),
        ("tags",),
        ("tags", 0),
        ("tags", 0, "key"),
        ("tags", 0, "value"),
        ("kind",),
    ]
    assert json.loads(_mutated(body, ("tags", 0, "value"), "1e400"))["tags"][0]["value"] == float("inf")
