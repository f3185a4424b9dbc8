"""`runledger admin ...` as an operator runs it: real subprocesses against a `serve all` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from tests.integration.conftest import create_database
from tests.support.services import REPO, ServiceProcess

pytestmark = pytest.mark.integration

BOOTSTRAP = generate_key()


@dataclass(frozen=True)
class Cli:
    url: str
    state_dir: Path  # holds a connection.json with the URL and the bootstrap key

    def run(
        self, *args: str, key: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`runledger admin ARGS`; with `key`, the URL and key are passed as flags."""
        flags = ["--url", self.url, "--api-key", key] if key else []
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
        return subprocess.run(
            [sys.executable, "-m", "runledger.cli", "admin", *args, *flags],
            cwd=REPO,
            env={**base_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str, key: str | None = None, env: dict[str, str] | None = None) -> str:
        done = self.run(*args, key=key, env=env)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    def json(self, *args: str, key: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", key=key))

    def fails(self, *args: str, key: str | None = None) -> str:
        done = self.run(*args, key=key)
        assert done.returncode == 1, f"{args}: {done.stdout}{done.stderr}"
        assert done.stderr.startswith("error: ")
        return done.stderr


@pytest.fixture(scope="module")
def cli(broker: EmbeddedBroker, postgres: EmbeddedPostgres, test_root: Path) -> Iterator[Cli]:
    import asyncio

    suffix = uuid.uuid4().hex[:8]
    events, dlq = f"runledger.events.v1.cli{suffix}", f"runledger.events.dlq.cli{suffix}"
    broker.ensure_topics({events: 2, dlq: 1})
    dsn = asyncio.run(create_database(postgres))
    services = ServiceProcess(
        "all",
        test_root / f"admin-cli-{suffix}",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": events,
            "RUNLEDGER_DLQ_TOPIC": dlq,
            "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "50",
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",
            "RUNLEDGER_BOOTSTRAP_API_KEY": BOOTSTRAP.token,
        },
    )
    services.start()
    state_dir = test_root / f"admin-cli-client-{suffix}"
    state_dir.mkdir()
    (state_dir / "connection.json").write_text(json.dumps({"url": services.url, "api_key": BOOTSTRAP.token}))
    try:
        yield Cli(services.url, state_dir)
    finally:
        services.stop()


def whoami(cli: Cli, key: str) -> httpx.Response:
    return httpx.get(f"{cli.url}/api/v1/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_admin_commands_end_to_end(cli: Cli) -> None:
    acme, beta = f"acme-{uuid.uuid4().hex[:6]}", f"beta-{uuid.uuid4().hex[:6]}"
    root = BOOTSTRAP.token

    # Connection from <state dir>/connection.json.
    created = cli.json(
        "tenants",
        "create",
        acme,
        "--name",
        "Acme",
        "--admin-user",
        "alice",
        "--state-dir",
        str(cli.state_dir),
    )
    assert created["tenant"]["tenant_id"] == acme and created["admin"]["name"] == "alice"
    admin = created["api_key"]["api_key"]
    # Connection from the environment; human output.
    text = cli.ok(
        "tenants",
        "create",
        beta,
        "--admin-user",
        "bob",
        env={"RUNLEDGER_URL": cli.url, "RUNLEDGER_API_KEY": root},
    )
    assert f"tenant {beta} created" in text and "shown only now" in text
    beta_admin = text.strip().splitlines()[-1]
    assert beta_admin.startswith("rlk_") and whoami(cli, beta_admin).json()["tenant_id"] == beta
    listing = cli.ok("tenants", "list", key=root)
    assert listing.splitlines()[0].split() == ["TENANT_ID", "NAME", "STATUS", "CREATED_AT"]
    assert any(line.split()[:3] == [acme, "Acme", "active"] for line in listing.splitlines())
    assert "already exists" in cli.fails("tenants", "create", acme, key=root)
    assert "403 PERMISSION_DENIED" in cli.fails("tenants", "list", key=admin)
    assert "no API URL" in cli.fails("tenants", "list")

    # A user, a viewer grant and a key; the key works and is never listed with its secret.
    user = cli.json("principals", "create", "vera", key=admin)
    assert user["kind"] == "user" and user["roles"] == []
    bot = cli.ok("principals", "create", "ci", "--kind", "service_account", key=admin)
    assert "service_account ci created: sa_" in bot
    assert f"granted viewer for {user['principal_id']}" in cli.ok(
        "grants", "add", user["principal_id"], "viewer", key=admin
    )
    assert "granted already" in cli.ok("grants", "add", user["principal_id"], "viewer", key=admin)
    key = cli.json(
        "keys", "create", user["principal_id"], "--name", "laptop", "--expires-in-days", "7", key=admin
    )
    assert key["expires_at"] and whoami(cli, key["api_key"]).json()["roles"] == [
        {"role": "viewer", "experiment_id": None}
    ]
    keys_text = cli.ok("keys", "list", key=admin)
    assert key["key_id"] in keys_text and key["api_key"].split("_", 2)[2] not in keys_text
    assert [
        k["key_id"] for k in cli.json("keys", "list", "--principal", user["principal_id"], key=admin)["keys"]
    ] == [key["key_id"]]
    principals = cli.ok("principals", "list", key=admin)
    assert any(line.split()[2:4] == ["vera", "viewer"] for line in principals.splitlines())
    grants = cli.json("grants", "list", "--principal", user["principal_id"], key=admin)["grants"]
    assert [(g["role"], g["experiment_id"]) for g in grants] == [("viewer", None)]

    # The viewer is refused with the server's message; another tenant's ids do not exist.
    assert "tenant admin only (403 PERMISSION_DENIED)" in cli.fails("principals", "list", key=key["api_key"])
    assert "404 RESOURCE_DOES_NOT_EXIST" in cli.fails("keys", "revoke", key["key_id"], key=beta_admin)

    # Tagging policy.
    policy = cli.ok("tagging", "set", "project", "stage=dev,prod", "--reject", key=admin)
    assert (
        "enforcement: reject" in policy and "stage: dev, prod" in policy and "project: (any value)" in policy
    )
    assert cli.json("tagging", "show", key=admin) == {
        "required": {"project": [], "stage": ["dev", "prod"]},
        "enforcement": "reject",
    }
    assert "tagging policy removed" in cli.ok("tagging", "clear", key=admin)
    assert "no tagging policy" in cli.fails("tagging", "show", key=admin)

    # Sharing an experiment with the other tenant.
    deadline = time.monotonic() + 10
    while True:  # the projector loads the new admin key within its poll interval
        created_exp = httpx.post(
            f"{cli.url}/api/v1/experiments",
            json={"name": "shared"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        ).json()
        experiment = created_exp["experiment_id"]
        if (
            httpx.get(
                f"{cli.url}/api/v1/experiments/{experiment}", headers={"Authorization": f"Bearer {admin}"}
            ).status_code
            == 200
        ):
            break
        assert time.monotonic() < deadline, created_exp
        time.sleep(0.5)
    assert f"shared experiment {experiment} with tenant {beta}" in cli.ok(
        "shares", "add", experiment, beta, key=admin
    )
    assert [s["experiment_name"] for s in cli.json("shares", "list", key=admin)["outgoing"]] == ["shared"]
    incoming = cli.ok("shares", "list", key=beta_admin)
    assert experiment in incoming.split("incoming:")[1]
    assert "cannot be shared" in cli.fails("shares", "add", "0", beta, key=admin)
    assert "no longer shared" in cli.ok("shares", "remove", experiment, beta, key=admin)

    # Quotas, suspension (the tenant's keys stop working) and resumption.
    assert "events/s 100, points/s 5000, points 0 of unlimited" in cli.ok(
        "tenants", "quota", acme, "--events-per-second", "100", "--points-per-second", "5000", key=root
    )
    assert f"tenant {acme} is suspended" in cli.ok("tenants", "suspend", acme, key=root)
    assert "401 UNAUTHENTICATED" in cli.fails("principals", "list", key=admin)
    assert f"tenant {acme} is active" in cli.ok("tenants", "resume", acme, key=root)

    # Revoking and disabling.
    assert f"key {key['key_id']} revoked" in cli.ok("keys", "revoke", key["key_id"], key=admin)
    assert whoami(cli, key["api_key"]).status_code == 401
    assert f"removed viewer for {user['principal_id']}" in cli.ok(
        "grants", "remove", user["principal_id"], "viewer", key=admin
    )
    assert f"{user['principal_id']} disabled" in cli.ok(
        "principals", "disable", user["principal_id"], key=admin
    )

    # The audit log, human and JSON.
    audit = cli.ok("audit", "--limit", "3", key=admin)
    assert audit.splitlines()[0].split()[:4] == ["SEQ", "AT", "ACTOR", "ACTION"]
    assert "principal.disable" in audit and "older entries: --cursor" in audit
    key_actions = [e["action"] for e in cli.json("audit", "--action", "key.", key=admin)["entries"]]
    assert key_actions[:2] == ["key.revoke", "key.create"]
    denied = cli.json("audit", "--outcome", "denied", key=admin)["entries"]
    assert any(
        e["actor"] == user["principal_id"] and e["action"].endswith("/api/v1/principals") for e in denied
    )
    platform = cli.json("audit", "--platform", "--action", "tenant.", key=root)["entries"]
    assert {("tenant.suspend", acme), ("tenant.resume", acme), ("tenant.create", beta)} <= {
        (e["action"], e["target"]) for e in platform
    }
    assert "403 PERMISSION_DENIED" in cli.fails("audit", "--platform", key=admin)
