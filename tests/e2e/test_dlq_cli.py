"""`runledger dlq list|show|replay` against the real broker and pipeline.

The story of an operator: a CI service account was given the viewer role instead of
engineer, so its metrics and params were dead-lettered ("permission denied"). After the
grant is fixed, `runledger dlq replay` re-drives the original bytes: they land in the
projections once, and replaying them a second time changes nothing (event-id dedup).
A message that is not even UTF-8 is kept byte for byte (`dlq show --raw`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from runledger.auth.model import Grant, Role
from runledger.events.codec import metric_columns
from runledger.events.models import EventType
from runledger.stores.postgres import directory
from services.ingest.dlq_tools import DeadLetter, read_letters
from tests.e2e.conftest import Stack
from tests.support.auth import Identity, provision
from tests.support.events import event, params_logged, run_started

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def dlq(stack: Stack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`runledger dlq ARGS` configured like any deployment: through RUNLEDGER_* variables."""
    env = {
        **os.environ,
        "RUNLEDGER_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RUNLEDGER_EVENTS_TOPIC": stack.events_topic,
        "RUNLEDGER_DLQ_TOPIC": stack.dlq_topic,
        "RUNLEDGER_STATE_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "runledger.cli", "dlq", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        args,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )
    return done


def letters_of(stack: Stack, marker: bytes) -> list[DeadLetter]:
    return [
        x for x in read_letters(stack.bootstrap, stack.dlq_topic) if (x.original or b"").find(marker) >= 0
    ]


def wait_for(check: Any, what: str, limit_s: float = 30) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


async def grant(dsn: str, who: Identity, role: Role) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await directory.grant_role(conn, Grant(who.tenant_id, who.principal_id, role, ""))
    finally:
        await conn.close()


def test_dead_letters_are_listed_shown_and_replayed_once_after_the_fix(stack: Stack, tmp_path: Path) -> None:
    tenant = f"dlq-{uuid.uuid4().hex[:8]}"
    owner = asyncio.run(provision(stack.dsn, tenant))
    ci = asyncio.run(provision(stack.dsn, tenant, Role.VIEWER, kind="service_account", name="ci"))
    run_id = uuid.uuid4().hex
    values = np.random.default_rng(3).random(100)
    steps = np.arange(100, dtype=np.int64)
    now_ms = int(time.time() * 1000)  # a retention TTL may drop points stamped long ago
    payload = metric_columns(["loss"], np.zeros(100, dtype=np.int32), values, steps, now_ms + steps)
    points = event(ci, EventType.METRICS_LOGGED, payload, run_id=run_id, experiment_id="0")
    params = params_logged(ci, "0", run_id, {"lr": "0.1"})
    junk = b'{"run_id": "' + run_id.encode() + b'", "bad": "\xff\xfe\xed\xa0\x80"}'
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    try:
        for value in (run_started(owner, "0", run_id), points, params, junk):
            producer.send(stack.events_topic, key=run_id.encode(), value=value)
        producer.flush()

        denied = wait_for(
            lambda: (found := letters_of(stack, run_id.encode())) and len(found) == 3 and found,
            "three dead letters",
        )
        assert Counter(x.reason.split(":")[0] for x in denied) == {
            "permission denied": 2,
            "not valid JSON": 1,
        }
        assert {x.original for x in denied} == {points, params, junk}  # the exact bytes, kept
        junk_letter = next(x for x in denied if x.original == junk)
        assert junk_letter.record["value_b64"] and "\ufffd" in junk_letter.record["value"]

        # list: every letter with its reason; --reason narrows; --json for scripts.
        listing = dlq(stack, tmp_path, "list", "--limit", "0").stdout.decode()
        assert all(x.id in listing for x in denied) and "permission denied" in listing
        reason = f"permission denied: {ci.principal_id}"
        chosen = dlq(stack, tmp_path, "list", "--reason", reason, "--json").stdout.decode().splitlines()
        ids = sorted(orjson.loads(line)["id"] for line in chosen)
        assert ids == sorted(x.id for x in denied if x.original in (points, params))
        summary = orjson.loads(chosen[0])
        assert summary["source"].endswith(f"{stack.events_topic}.{int(summary['source'].rsplit('.', 1)[1])}")
        assert summary["size"] in (len(points), len(params)) and summary["time"].endswith("+00:00")

        # show: the letter and its message; --raw: the exact bytes, even when not UTF-8.
        shown = dlq(stack, tmp_path, "show", ids[0]).stdout.decode()
        assert reason in shown and run_id in shown
        assert dlq(stack, tmp_path, "show", junk_letter.id, "--raw").stdout == junk

        # Before the fix, a dry run says what would go; nothing is sent.
        dry = dlq(stack, tmp_path, "replay", "--reason", reason, "--dry-run").stdout.decode()
        assert "would replay 2" in dry and all(i in dry for i in ids)

        # The fix: the service account becomes an engineer. Then replay, by reason.
        asyncio.run(grant(stack.dsn, ci, Role.ENGINEER))
        time.sleep(2)  # the projector reloads grants every RUNLEDGER_AUTH_POLL_INTERVAL_S (0.2 s here)
        assert "replayed 2 dead letters" in dlq(stack, tmp_path, "replay", "--reason", reason).stdout.decode()

        with httpx.Client(base_url=stack.url, timeout=30, headers=owner.headers) as client:

            def projected() -> dict[str, Any] | None:
                run = client.get(f"/api/v1/runs/{run_id}")
                body: dict[str, Any] = run.json() if run.status_code == 200 else {}
                return body if body.get("params") and body.get("metrics", {}).get("loss") else None

            assert wait_for(projected, "the replayed events")["params"] == {"lr": "0.1"}
            history = client.get(f"/api/v1/runs/{run_id}/metrics/loss/history").json()
            assert history["steps"] == list(range(100))
            assert history["values"] == values.tolist()

            # Replaying again (by id) is harmless: dropped by event id. A sentinel sent after
            # them on the same key shows the projector has been past them.
            assert "replayed 2 dead letters" in dlq(stack, tmp_path, "replay", *ids).stdout.decode()
            sentinel = {"after": "second replay"}
            producer.send(
                stack.events_topic,
                key=run_id.encode(),
                value=owner.sign(
                    {
                        **orjson.loads(run_started(owner, "0", run_id)),
                        "type": "run.tags_set",
                        "event_id": str(uuid.uuid4()),
                        "payload": {"tags": sentinel},
                    }
                ),
            )
            producer.flush()
            wait_for(lambda: client.get(f"/api/v1/runs/{run_id}").json()["tags"].get("after"), "the sentinel")
            again = client.get(f"/api/v1/runs/{run_id}/metrics/loss/history").json()
            assert again["steps"] == list(range(100)), "a replayed batch was applied twice"
            assert client.get(f"/api/v1/runs/{run_id}").json()["params"] == {"lr": "0.1"}
    finally:
        producer.close()
    assert len(letters_of(stack, run_id.encode())) == 3, "a replay after the fix was dead-lettered again"
