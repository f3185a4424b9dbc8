"""The API under schemathesis: one real `serve all` process (API, projector, analysis) on the
session's Postgres and broker, keys of every role, and a few real resources to aim at.

Sizes come from the environment: RUNLEDGER_FUZZ_EXAMPLES (examples per operation; small in
`make test`, large in `make fuzz`) and RUNLEDGER_FUZZ_SEED (the Hypothesis seed).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from tests.integration.conftest import broker, create_database, postgres, test_root  # noqa: F401
from tests.support.auth import Identity, provision
from tests.support.services import ServiceProcess

TENANT = "fuzz"
EXAMPLES = int(os.environ.get("RUNLEDGER_FUZZ_EXAMPLES", "3"))
SEED = int(os.environ.get("RUNLEDGER_FUZZ_SEED", "20261127"))
# Also run the schemathesis CLI (all its phases) once per role: `make fuzz` sets it.
CLI = os.environ.get("RUNLEDGER_FUZZ_CLI", "") == "1"
# Its fuzzing and stateful phases' examples per operation (its coverage phase is a fixed set).
CLI_EXAMPLES = int(os.environ.get("RUNLEDGER_FUZZ_CLI_EXAMPLES", "10"))


@dataclass(frozen=True)
class Caller:
    """One role the fuzzer calls every operation as: its name and the headers it sends."""

    name: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Target:
    """A running API, who calls it, and real ids the fuzzer substitutes for generated ones."""

    url: str
    dsn: str
    services: ServiceProcess
    callers: tuple[Caller, ...]
    # parameter or body field name -> real values of the tenant (experiment_id, run_id, ...)
    known: dict[str, tuple[str, ...]]


@dataclass
class FuzzStats:
    """What the run did, for the terminal summary (and `make fuzz`'s report)."""

    operations: int = 0
    examples: int = 0
    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    cli: dict[str, str] = field(default_factory=dict)


STATS = FuzzStats()


@pytest.fixture(scope="session")
def target(
    broker: EmbeddedBroker,  # noqa: F811
    postgres: EmbeddedPostgres,  # noqa: F811
    test_root: Path,  # noqa: F811
) -> Iterator[Target]:
    suffix = uuid.uuid4().hex[:8]
    events, dlq = f"runledger.events.v1.fuzz{suffix}", f"runledger.events.dlq.fuzz{suffix}"
    broker.ensure_topics({events: 4, dlq: 1})
    dsn = asyncio.run(create_database(postgres))
    services = ServiceProcess(
        "all",
        test_root / f"fuzz-{suffix}",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": events,
            "RUNLEDGER_DLQ_TOPIC": dlq,
            "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "20",
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",
            "RUNLEDGER_BOOTSTRAP_API_KEY": generate_key().token,
            "RUNLEDGER_DEFAULT_TENANT": "default",
            "RUNLEDGER_AUTH_POLL_INTERVAL_S": "0.2",
            "RUNLEDGER_WRITE_WAIT_TIMEOUT_S": "10",
        },
    )
    try:
        try:
            services.start()
        except TimeoutError:  # not healthy in 60 s: a loaded machine (the suite shares 2 cores); wait on
            services.wait_healthy(timeout=240)
        identities = asyncio.run(_identities(dsn))
        callers = (
            Caller("anonymous", {}),
            *(Caller(name, identity.headers) for name, identity in identities.items()),
        )
        with httpx.Client(base_url=services.url, timeout=30) as client:
            for caller in callers[1:]:
                wait_until_known(client, caller)
            known = _seed(client, identities["engineer"])
        yield Target(services.url, dsn, services, callers, known)
    finally:
        services.stop()


async def _identities(dsn: str) -> dict[str, Identity]:
    """Viewer, engineer and admin of the fuzzed tenant, and a platform superadmin of another."""
    return {
        "viewer": await provision(dsn, TENANT, Role.VIEWER, name="fuzz-viewer"),
        "engineer": await provision(dsn, TENANT, Role.ENGINEER, name="fuzz-engineer"),
        "admin": await provision(dsn, TENANT, Role.ADMIN, name="fuzz-admin"),
        "superadmin": await provision(dsn, "fuzz-platform", None, superadmin=True, name="fuzz-ops"),
    }


def wait_until_known(client: httpx.Client, caller: Caller, timeout: float = 30.0) -> None:
    """The API's auth snapshot picks new keys up within its poll interval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/api/v1/whoami", headers=caller.headers).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the API never accepted the {caller.name} key")


def _ok(response: httpx.Response) -> dict[str, object]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, object] = response.json()
    return body


def _seed(client: httpx.Client, engineer: Identity) -> dict[str, tuple[str, ...]]:
    """An experiment with a run that has params, tags, a metric series and an artifact; their ids."""
    headers = engineer.headers
    exp = _ok(client.post("/api/v1/experiments", json={"name": "fuzz-seed"}, headers=headers))
    experiment_id = str(exp["experiment_id"])
    run = _ok(
        client.post(
            "/api/v1/runs",
            json={"experiment_id": experiment_id, "name": "seed-run", "tags": {"team": "fuzz"}},
            headers=headers,
        )
    )
    run_id = str(run["run_id"])
    _ok(client.post(f"/api/v1/runs/{run_id}/params", json={"params": {"lr": "0.01"}}, headers=headers))
    _ok(
        client.post(
            f"/api/v1/runs/{run_id}/metrics",
            json={"metrics": [{"key": "loss", "value": 1.0 / (s + 1), "step": s} for s in range(20)]},
            headers=headers,
        )
    )
    artifact = "model/weights.bin"
    put = client.put(f"/api/v1/runs/{run_id}/artifacts/{artifact}", content=b"\x00" * 64, headers=headers)
    assert put.status_code == 201, put.text
    return {
        "experiment_id": (experiment_id,),
        "experiment_ids": (experiment_id,),
        "run_id": (run_id,),
        "run_uuid": (run_id,),
        "run_ids": (run_id,),
        "key": ("loss", "team"),
        "metric_key": ("loss",),
        "path": (artifact, "model"),
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS.operations and not STATS.cli:
        return
    summary: dict[str, object] = {
        "operations": STATS.operations,
        "examples_per_operation": EXAMPLES,
        "cli_examples_per_operation": CLI_EXAMPLES if CLI else None,
        "examples": STATS.examples,
        "requests": STATS.requests,
        "failures": STATS.failures,
        "seed": SEED,
        "seconds": round(STATS.seconds, 1),
        "statuses": dict(sorted(STATS.statuses.items())),
    }
    if STATS.cli:
        summary["schemathesis_cli"] = STATS.cli
    terminalreporter.write_sep("-", "API fuzzing (schemathesis)")
    terminalreporter.write_line(json.dumps(summary))
