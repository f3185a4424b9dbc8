"""Quotas and tagging policies at the projector: events and points per second (by Kafka record
time), stored points (tenant_usage), and run tags flagged (a finding) or rejected (the DLQ)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest
from kafka import KafkaProducer

from runledger.embedded.broker import EmbeddedBroker
from runledger.stores.postgres import directory
from services.ingest.gate import TAGGING_FINDING_KIND, finding_id
from tests.integration.test_signed_events import dead_letters, ingest_env
from tests.support.auth import provision
from tests.support.events import metrics_batch, run_started
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration


async def _configure(dsn: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(sql, *args)
            await directory.bump_generation(conn)
    finally:
        await conn.close()


async def test_quotas_and_tagging_policies(
    broker: EmbeddedBroker, topics: dict[str, str], fresh_dsn: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    rate, points, flag, reject, pps = [
        await provision(fresh_dsn, f"q-{n}-{suffix}") for n in ("rate", "pts", "flag", "rej", "pps")
    ]
    quota_sql = "INSERT INTO tenant_quotas (tenant_id, events_per_second, max_points) VALUES ($1, $2, $3)"
    await _configure(fresh_dsn, quota_sql, rate.tenant_id, 5, None)
    await _configure(fresh_dsn, quota_sql, points.tenant_id, None, 150)
    await _configure(
        fresh_dsn, "INSERT INTO tenant_quotas (tenant_id, points_per_second) VALUES ($1, 100)", pps.tenant_id
    )
    policy_sql = "INSERT INTO tagging_policies (tenant_id, required, enforcement) VALUES ($1, $2::jsonb, $3)"
    await _configure(fresh_dsn, policy_sql, flag.tenant_id, json.dumps({"project": []}), "flag")
    await _configure(
        fresh_dsn, policy_sql, reject.tenant_id, json.dumps({"stage": ["dev", "prod"]}), "reject"
    )

    projector = ServiceProcess("ingest", tmp_path / "state", ingest_env(broker, topics, fresh_dsn))
    projector.start()
    kafka = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        # 8 events produced within one second, 3 in the next, and an old backlog (one an hour
        # ago per second): only the 6th to 8th of the first second exceed 5/s.
        second = (int(time.time()) - 60) * 1000
        runs: dict[str, list[str]] = {"burst": [], "next": [], "backlog": []}
        plan = [("burst", second + 10 * i) for i in range(8)]
        plan += [("next", second + 1000 + i) for i in range(3)]
        plan += [("backlog", second - 3_600_000 + 1000 * i) for i in range(6)]
        for group, at in plan:
            run_id = uuid.uuid4().hex
            runs[group].append(run_id)
            raw = run_started(rate, "e", run_id)
            kafka.send(topics["events"], key=b"rate", value=raw, timestamp_ms=at).get(30)

        # 100 points fit, 100 more would pass 150, the next 50 fit exactly.
        points_run = uuid.uuid4().hex
        kafka.send(topics["events"], key=b"pts", value=run_started(points, "e", points_run)).get(30)
        for first, n in ((0, 100), (100, 100), (200, 50)):
            raw, _ = metrics_batch(points, "e", points_run, ["loss"], first, n, seed=first)
            kafka.send(topics["events"], key=b"pts", value=raw).get(30)

        # 100 points a second: 60 fit, 60 more do not, 40 fill the second; in the next, a
        # 250-point batch passes alone (an empty second admits any one event), 1 more does not.
        pps_run = uuid.uuid4().hex
        kafka.send(topics["events"], key=b"pps", value=run_started(pps, "e", pps_run)).get(30)
        pps_second = (int(time.time()) - 120) * 1000
        for first, n, at in ((0, 60, 0), (60, 60, 10), (120, 40, 20), (160, 250, 1000), (410, 1, 1010)):
            raw, _ = metrics_batch(pps, "e", pps_run, ["loss"], first, n, seed=first)
            kafka.send(topics["events"], key=b"pps", value=raw, timestamp_ms=pps_second + at).get(30)

        flagged, tagged = uuid.uuid4().hex, uuid.uuid4().hex
        flagged_raw = run_started(flag, "e", flagged)
        kafka.send(topics["events"], key=b"flag", value=flagged_raw).get(30)
        raw = run_started(flag, "e", tagged, tags={"project": "p1"})
        kafka.send(topics["events"], key=b"flag", value=raw).get(30)
        refused, accepted = uuid.uuid4().hex, uuid.uuid4().hex
        raw = run_started(reject, "e", refused, tags={"stage": "qa"})
        kafka.send(topics["events"], key=b"rej", value=raw).get(30)
        raw = run_started(reject, "e", accepted, tags={"stage": "dev"})
        kafka.send(topics["events"], key=b"rej", value=raw).get(30)

        conn = await asyncpg.connect(fresh_dsn)
        try:
            expected_runs = 5 + 3 + 6 + 1 + 2 + 1 + 1
            tenants = [rate.tenant_id, points.tenant_id, flag.tenant_id, reject.tenant_id, pps.tenant_id]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                n = await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE tenant_id = ANY($1::text[])", tenants
                )
                usage = await conn.fetchval(
                    "SELECT points FROM tenant_usage WHERE tenant_id = $1", points.tenant_id
                )
                pps_usage = await conn.fetchval(
                    "SELECT points FROM tenant_usage WHERE tenant_id = $1", pps.tenant_id
                )
                if n >= expected_runs and usage == 150 and pps_usage == 350:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"projection incomplete ({n} runs, usage {usage})\n{projector.log_tail()}")
            await asyncio.sleep(1.0)  # nothing more arrives
            projected = {
                r["run_id"]
                for r in await conn.fetch(
                    "SELECT run_id FROM runs WHERE tenant_id = ANY($1::text[])", tenants
                )
            }
            assert projected & set(runs["burst"]) == set(runs["burst"][:5])
            assert set(runs["next"]) <= projected and set(runs["backlog"]) <= projected
            assert refused not in projected and {flagged, tagged, accepted, points_run} <= projected
            latest = await conn.fetchrow(
                "SELECT step, first_step FROM latest_metrics WHERE run_id = $1 AND key = 'loss'", points_run
            )
            assert (latest["first_step"], latest["step"]) == (0, 249)
            steps = await conn.fetchval(
                "SELECT step FROM latest_metrics WHERE run_id = $1 AND key = 'loss'", pps_run
            )
            assert steps == 409
            assert (
                await conn.fetchval("SELECT points FROM tenant_usage WHERE tenant_id = $1", pps.tenant_id)
                == 350
            )
            assert (
                await conn.fetchval("SELECT points FROM tenant_usage WHERE tenant_id = $1", points.tenant_id)
                == 150
            )

            findings = await conn.fetch(
                "SELECT event_id::text, run_id, kind, body FROM findings WHERE tenant_id = $1", flag.tenant_id
            )
            assert [(f["run_id"], f["kind"]) for f in findings] == [(flagged, TAGGING_FINDING_KIND)]
            assert json.loads(findings[0]["body"])["evidence"] == {"problems": ["missing tag 'project'"]}
            # Its id derives from the RunStarted's: a crash or replay re-creates it, never twice.
            assert findings[0]["event_id"] == finding_id(
                orjson.loads(flagged_raw)["event_id"], TAGGING_FINDING_KIND
            )
            counts = {
                (r["tenant_id"], r["reason"]): r["count"]
                for r in await conn.fetch("SELECT tenant_id, reason, count FROM dead_letters_count")
            }
            assert counts == {
                (rate.tenant_id, "quota exceeded"): 3,
                (points.tenant_id, "quota exceeded"): 1,
                (reject.tenant_id, "tagging policy"): 1,
                (pps.tenant_id, "quota exceeded"): 2,
            }
        finally:
            await conn.close()
        reasons = sorted(d["reason"] for d in dead_letters(broker.bootstrap, topics["dlq"]))
        assert reasons == [
            "quota exceeded: events_per_second=5",
            "quota exceeded: events_per_second=5",
            "quota exceeded: events_per_second=5",
            "quota exceeded: max_points=150",
            "quota exceeded: points_per_second=100",
            "quota exceeded: points_per_second=100",
            "tagging policy: tag 'stage'='qa' is not one of ['dev', 'prod']",
        ]
    finally:
        kafka.close()
        projector.stop()
