"""schemathesis over every operation of the OpenAPI schema (RunLedger, MLflow-compatible, artifacts,
exports, OData), each generated request sent with no key and with the keys of a viewer, an engineer
and an admin of a tenant and of the platform superadmin.

Every answer must be below 500, carry a status code, a content type, headers and a body that the
schema declares for that operation. Positive (valid) and negative (invalid) requests are generated;
path, query and body ids are sometimes replaced by ids of real resources, so that requests reach
past "not found" into the handlers. Seeded: RUNLEDGER_FUZZ_SEED; sized: RUNLEDGER_FUZZ_EXAMPLES.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from runledger.auth.model import Role
from runledger.config import Settings
from services.api.app import create_app
from tests.fuzz.conftest import CLI, CLI_EXAMPLES, EXAMPLES, SEED, STATS, Caller, Target, wait_until_known
from tests.support.auth import provision

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Served outside the documented API on purpose: the schema itself, its viewers, Prometheus.
UNDOCUMENTED = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/metrics"),
}
# The web UI (its pages, static files and cookie session) is for browsers, not part of the API.
UI = "/ui"
_METHODS = ("get", "put", "post", "delete", "patch")


@cache
def _app() -> FastAPI:
    return create_app(Settings(), None)  # type: ignore[arg-type]  # never started: only its schema


@cache
def _schema() -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(_app().openapi())


def _operations() -> list[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = _app().openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item if method in _METHODS]


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path template) of every route the app serves, included routers walked."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:  # FastAPI's included router
            yield from _routes(original.routes, prefix + (route.include_context.prefix or ""))
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                yield method, prefix + route.path


def _as_documented(template: str) -> str:
    """A route's path as OpenAPI names it: `{key:path}` is `{key}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", template)


def _matcher(template: str) -> str:
    """A regex of the URLs a route template matches: `{x}` one segment, `{x:path}` several."""
    parts = re.split(r"(\{\w+(?::\w+)?\})", template)
    return "".join(
        (".+" if ":path" in part else "[^/]+") if part.startswith("{") else re.escape(part) for part in parts
    )


def test_every_route_is_in_the_schema() -> None:
    """schemathesis can only fuzz what the schema declares: every served route is declared."""
    served = {(method, _as_documented(template)) for method, template in _routes(list(_app().routes))}
    served = {(m, path) for m, path in served if path != UI and not path.startswith(UI + "/")}
    assert served - UNDOCUMENTED - set(_operations()) == set()
    assert len(_operations()) > 100


def test_the_served_schema_is_the_fuzzed_one(target: Target) -> None:
    served = requests.get(f"{target.url}/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == _app().openapi()


@pytest.mark.parametrize("path", sorted({path for _, path in _operations()}))
def test_undeclared_methods_answer_405_with_allow(target: Target, path: str) -> None:
    """A method the schema does not declare for a path is a 405 whose `Allow` lists the declared ones."""
    concrete = re.sub(r"\{\w+\}", "x", path)
    # Every route whose template matches the URL answers for it (`/logged-models/search` is also
    # a `/logged-models/{model_id}`).
    declared = {m for m, t in _routes(list(_app().routes)) if re.fullmatch(_matcher(t), concrete)}
    admin = next(caller for caller in target.callers if caller.name == "admin")
    url = target.url + concrete
    for method in {"DELETE", "PATCH", "POST", "PUT", "TRACE"} - declared:
        response = requests.request(method, url, headers=admin.headers, timeout=30)
        assert response.status_code == 405, (method, response.text)
        assert set(response.headers["Allow"].split(", ")) == declared, method
        assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_a_nul_character_is_a_400_not_a_500(target: Target) -> None:
    """Postgres text holds no U+0000: found by the fuzzer in GET /reports/business?model=...%00..."""
    admin = next(caller for caller in target.callers if caller.name == "admin")
    for path in ("/api/v1/reports/business?model=a%00b", "/api/v1/experiments?name=a%00b"):
        response = requests.get(target.url + path, headers=admin.headers, timeout=30)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_a_long_query_string_is_answered_by_the_api(target: Target) -> None:
    """A 120 kB query string (found by the fuzzer: a filter of 10,000 four-byte characters) reaches
    the route, which answers in JSON. Sent in pieces, as a loaded server reads it: a head past
    h11's default 16 KiB used to get uvicorn's plain-text 400 once a piece left it incomplete."""
    admin = next(caller for caller in target.callers if caller.name == "admin")
    experiment = target.known["experiment_id"][0]
    query = urlencode({"filter": "\U0003cd7a" * 10_000})
    head = (
        f"GET /api/v1/experiments/{experiment}/hyperparameter-importance?{query} HTTP/1.1\r\n"
        f"Host: fuzz\r\nConnection: close\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in admin.headers.items())
        + "\r\n"
    ).encode()
    host, port = urlsplit(target.url).hostname, urlsplit(target.url).port
    with socket.create_connection((host, port), timeout=60) as connection:
        for start in range(0, len(head), 20_000):
            connection.sendall(head[start : start + 20_000])
            time.sleep(0.05)  # each piece is read on its own
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request", answer[:500]
    assert b"content-type: application/json" in headers.lower(), answer[:500]
    assert json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"


def _substitute(values: object, target: Target, data: st.DataObject, where: str) -> None:
    """Replace some generated ids by real ones, so that requests get past 404 into the handlers."""
    if not isinstance(values, dict):
        return
    for name in list(values):
        real = target.known.get(name)
        if real and data.draw(st.booleans(), label=f"real {where} {name}"):
            choice = data.draw(st.sampled_from(real), label=f"{where} {name}")
            values[name] = [choice] if isinstance(values[name], list) else choice


def _failure_key(caller: str, status: int, failure: Failure) -> str:
    return f"{caller}: {failure.code} {failure.title} (HTTP {status})"


@pytest.mark.parametrize(("method", "path"), _operations(), ids=[f"{m} {p}" for m, p in _operations()])
def test_operation(target: Target, method: str, path: str) -> None:
    operation = _schema()[path][method]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )
    found: dict[str, str] = {}
    session = requests.Session()
    started = time.monotonic()

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        print_blob=False,
    )
    @hypothesis.seed(SEED)
    @hypothesis.given(case=strategy, data=st.data())
    def fuzz(case: schemathesis.Case[Any], data: st.DataObject) -> None:
        _substitute(case.path_parameters, target, data, "path")
        _substitute(case.query, target, data, "query")
        _substitute(case.body, target, data, "body")
        STATS.examples += 1
        for caller in target.callers:
            response = case.call(base_url=target.url, session=session, headers=caller.headers, timeout=60)
            STATS.requests += 1
            STATS.statuses[response.status_code] = STATS.statuses.get(response.status_code, 0) + 1
            try:
                case.validate_response(response, checks=CHECKS, headers=caller.headers)
            except FailureGroup as group:
                for failure in group.exceptions:
                    key = _failure_key(caller.name, response.status_code, failure)
                    if key not in found:
                        curl = case.as_curl_command(headers=caller.headers)
                        body = response.text[:500] if response.content else ""
                        found[key] = f"{failure.message[:1500]}\n  {curl}\n  -> {body}"

    try:
        fuzz()
    finally:
        STATS.operations += 1
        STATS.failures += len(found)
        STATS.seconds += time.monotonic() - started
        session.close()
    if found:
        report = "\n\n".join(f"[{key}]\n{detail}" for key, detail in found.items())
        if target.services.proc is not None and target.services.proc.poll() is not None:
            report += "\n\nthe server exited:\n" + target.services.log_tail()
        pytest.fail(f"{len(found)} distinct failure(s) of {method} {path}:\n\n{report}", pytrace=False)


def test_the_fuzzed_callers_still_authenticate(target: Target) -> None:
    """Every keyed caller above was still authenticated at the end: the answers were not all 401s."""
    for caller in target.callers[1:]:
        response = requests.get(f"{target.url}/api/v1/whoami", headers=caller.headers, timeout=30)
        assert response.status_code == 200, (caller.name, response.text)


@pytest.mark.skipif(not CLI, reason="the schemathesis CLI pass runs in `make fuzz` (RUNLEDGER_FUZZ_CLI=1)")
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("role", ["anonymous", "viewer", "engineer", "admin", "superadmin"])
def test_schemathesis_cli(target: Target, role: str, tmp_path: Path) -> None:
    """`st run` as reviewers run it, every phase (examples, coverage, fuzzing, stateful), as `role`.

    Last in the module, with a key of its own in a tenant of its own: the stateful phase follows
    links from one answer to the next request (as the tenant's admin, from the principal and key
    listings to disabling those principals and revoking their keys: seen in the audit log), so a
    pass may lock out every key of its tenant, and the passes above would then have fuzzed
    nothing but 401s."""
    caller = cli_caller(target, role)
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{target.url}/openapi.json",
        f"--checks={','.join(check.__name__ for check in CHECKS)}",
        f"--max-examples={CLI_EXAMPLES}",
        f"--seed={SEED}",
        "--workers=2",
        "--request-timeout=60",
        "--no-color",
        *(f"--header={name}: {value}" for name, value in caller.headers.items()),
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=3500)
    took = time.monotonic() - started
    STATS.cli[role] = f"exit {done.returncode} in {took:.0f}s: {_cli_totals(done.stdout)}"
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]


def _cli_totals(output: str) -> str:
    """The `N generated, M found ...` line of `st run`'s summary."""
    lines = [line.strip() for line in output.splitlines() if " generated" in line]
    return lines[-1] if lines else "no summary"


def cli_caller(target: Target, role: str) -> Caller:
    """A fresh caller of `role` for one CLI pass: a new tenant for a tenant role, a new platform
    principal for the superadmin, no key for anonymous."""
    if role == "anonymous":
        return Caller(role, {})
    suffix = uuid.uuid4().hex[:8]
    if role == "superadmin":
        identity = asyncio.run(provision(target.dsn, f"fuzz-cli-ops-{suffix}", None, superadmin=True))
    else:
        identity = asyncio.run(provision(target.dsn, f"fuzz-cli-{role}-{suffix}", Role(role)))
    caller = Caller(role, identity.headers)
    with httpx.Client(base_url=target.url, timeout=30) as client:
        wait_until_known(client, caller)
    return caller
