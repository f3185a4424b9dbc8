"""Signed events on the Kafka path: the projector lets through only what a usable key of the
event's tenant signed and may write. Forged, unsigned, unknown-key, wrong-tenant, expired,
viewer and out-of-scope events go to the DLQ with their reason, counted per tenant, and
never reach a projection; good events interleaved with them all arrive. A revoked key's
events are refused within 5 s; `runledger replay` keeps what it signed before."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.embedded.broker import EmbeddedBroker
from runledger.events.codec import encode, envelope_dict, producer
from runledger.events.models import EventType
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.postgres import directory
from services.ingest.replay import replay
from tests.support.auth import Identity, provision
from tests.support.events import metrics_batch, params_logged, run_started
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration


def ingest_env(broker: EmbeddedBroker, topics: dict[str, str], dsn: str) -> dict[str, str]:
    return {
        "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
        "RUNLEDGER_POSTGRES_DSN": dsn,
        "RUNLEDGER_EVENTS_TOPIC": topics["events"],
        "RUNLEDGER_DLQ_TOPIC": topics["dlq"],
        "RUNLEDGER_PROJECTOR_GROUP": f"projector-{uuid.uuid4().hex[:6]}",
        "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",
        "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "50",
    }


def dead_letters(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every dead letter so far, with its event parsed (None when it did not parse)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    letter = orjson.loads(r.value)
                    try:
                        letter["event"] = orjson.loads(letter["value"])
                    except orjson.JSONDecodeError:
                        letter["event"] = None
                    out.append(letter)
        return out
    finally:
        consumer.close()


def reasons_by_run(letters: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for letter in letters:
        event = letter["event"]
        if isinstance(event, dict) and event.get("run_id"):
            out.setdefault(event["run_id"], []).append(letter["reason"])
    return out


async def wait_for(check: Any, limit_s: float, what: str, service: ServiceProcess) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    letters = [
        (d["reason"], (d["event"] or {}).get("run_id"))
        for d in dead_letters(service.env["RUNLEDGER_KAFKA_BOOTSTRAP"], service.env["RUNLEDGER_DLQ_TOPIC"])
    ]
    pytest.fail(f"timed out waiting for {what}; dead letters: {letters}\n{service.log_tail(15)}")


def forged(raw: bytes) -> bytes:
    """A signed event changed after signing (its run name)."""
    event = orjson.loads(raw)
    event["payload"]["name"] = "forged"
    return orjson.dumps(event)


async def expired_identity(dsn: str, owner: Identity) -> Identity:
    conn = await asyncpg.connect(dsn)
    try:
        key = await directory.create_key(
            conn, owner.principal_id, name="expired", expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    finally:
        await conn.close()
    return Identity(owner.tenant_id, owner.principal_id, key)


async def test_only_verified_events_reach_the_projections(
    broker: EmbeddedBroker, topics: dict[str, str], fresh_dsn: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    ten_a, ten_b = f"sig-a-{suffix}", f"sig-b-{suffix}"
    alice = await provision(fresh_dsn, ten_a)  # engineer of A
    bob = await provision(fresh_dsn, ten_b)  # engineer of B
    viewer = await provision(fresh_dsn, ten_a, Role.VIEWER)
    narrow = await provision(fresh_dsn, ten_a, Role.ENGINEER, experiment_id="exp-x")
    expired = await expired_identity(fresh_dsn, alice)
    stranger = Identity(ten_a, "nobody", generate_key())  # a key no database knows

    projector = ServiceProcess("ingest", tmp_path / "state", ingest_env(broker, topics, fresh_dsn))
    projector.start()
    kafka = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        good = {name: uuid.uuid4().hex for name in ("alice", "alice2", "y", "x", "bob")}
        bad = {
            name: uuid.uuid4().hex
            for name in ("forged", "unsigned", "unknown", "wrong_tenant", "expired", "viewer")
        }
        unsigned = encode(
            envelope_dict(
                tenant_id=ten_a,
                type=EventType.RUN_STARTED,
                run_id=bad["unsigned"],
                experiment_id="exp-a",
                producer=producer("tests"),
                payload={"name": "unsigned", "start_time": 1_700_000_000_000},
            )
        )
        points, _ = metrics_batch(alice, "exp-a", good["alice"], ["loss"], 0, 50, seed=1)
        narrow_points, _ = metrics_batch(narrow, "exp-x", good["y"], ["stolen"], 0, 10, seed=2)
        messages: list[tuple[str, bytes]] = [
            (good["alice"], run_started(alice, "exp-a", good["alice"])),
            (bad["forged"], forged(run_started(alice, "exp-a", bad["forged"]))),
            (good["alice"], points),
            (bad["unsigned"], unsigned),
            (good["y"], run_started(alice, "exp-y", good["y"])),
            (bad["unknown"], run_started(stranger, "exp-a", bad["unknown"])),
            (bad["wrong_tenant"], run_started(bob, "exp-a", bad["wrong_tenant"], tenant=ten_a)),
            (good["x"], run_started(narrow, "exp-x", good["x"])),
            (bad["expired"], run_started(expired, "exp-a", bad["expired"])),
            (good["x"], params_logged(narrow, "exp-x", good["x"], {"lr": "0.1"})),
            (bad["viewer"], run_started(viewer, "exp-a", bad["viewer"])),
            # The narrowed engineer claims exp-x for a run recorded in exp-y.
            (good["y"], params_logged(narrow, "exp-x", good["y"], {"stolen": "1"})),
            (good["y"], narrow_points),
            (good["bob"], run_started(bob, "exp-b", good["bob"])),
            (good["alice2"], run_started(alice, "exp-a", good["alice2"])),
            (good["y"], params_logged(alice, "exp-y", good["y"], {"mine": "1"})),
        ]
        print({k: v for k, v in {**good, **bad}.items()})
        for run_id, raw in messages:
            kafka.send(topics["events"], key=run_id.encode(), value=raw).get(30)

        conn = await asyncpg.connect(fresh_dsn)
        try:

            async def all_good_arrived() -> bool:
                runs = await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE run_id = ANY($1::text[])", list(good.values())
                )
                params = await conn.fetchval(
                    "SELECT count(*) FROM params WHERE (run_id, key) IN (($1, 'lr'), ($2, 'mine'))",
                    good["x"],
                    good["y"],
                )
                metrics = await conn.fetchval(
                    "SELECT count(*) FROM latest_metrics WHERE run_id = $1", good["alice"]
                )
                return bool(runs == len(good) and params == 2 and metrics == 1)

            await wait_for(all_good_arrived, 60, "the good events", projector)

            async def all_refused() -> dict[str, list[str]]:
                found = reasons_by_run(dead_letters(broker.bootstrap, topics["dlq"]))
                wanted = set(bad) | {"y"}
                names = {v: k for k, v in {**bad, "y": good["y"]}.items()}
                seen = {names[r] for r in found if r in names}
                return found if seen == wanted and len(found.get(good["y"], [])) == 2 else {}

            reasons = await wait_for(all_refused, 30, "the dead letters", projector)
            assert reasons[bad["forged"]] == ["signature mismatch"]
            assert reasons[bad["unsigned"]] == ["unsigned event"]
            assert reasons[bad["unknown"]] == ["unknown key"]
            assert reasons[bad["wrong_tenant"]] == [f"tenant mismatch: key of {ten_b}, event for {ten_a}"]
            assert reasons[bad["expired"]] == ["key revoked or expired"]
            assert reasons[bad["viewer"]] == [
                f"permission denied: {viewer.principal_id} may not write experiment exp-a"
            ]
            stolen = (
                f"permission denied: {narrow.principal_id} may not write experiment exp-y (run {good['y']})"
            )
            assert reasons[good["y"]] == [stolen, stolen]

            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE run_id = ANY($1::text[])", list(bad.values())
                )
                == 0
            )
            assert await conn.fetchval("SELECT count(*) FROM params WHERE key = 'stolen'") == 0
            assert await conn.fetchval("SELECT count(*) FROM latest_metrics WHERE key = 'stolen'") == 0
            assert await conn.fetchval("SELECT name FROM runs WHERE run_id = $1", good["alice"]) == "run"
            counts = {
                (r["tenant_id"], r["reason"]): r["count"]
                for r in await conn.fetch("SELECT tenant_id, reason, count FROM dead_letters_count")
            }
            assert counts == {
                (ten_a, "signature mismatch"): 1,
                (ten_a, "unsigned event"): 1,
                (ten_a, "unknown key"): 1,
                (ten_b, "tenant mismatch"): 1,  # the key's tenant
                (ten_a, "key revoked or expired"): 1,
                (ten_a, "permission denied"): 3,
            }

            revocation_s = await _revocation_window(
                conn, kafka, broker.bootstrap, topics, fresh_dsn, ten_a, projector
            )
            print(f"revoked key: last event accepted {revocation_s:.2f} s after the revocation")
            assert revocation_s <= 5.0
        finally:
            await conn.close()
    finally:
        kafka.close()
        projector.stop()

    # Replay re-projects what was verified then, though a key of it is revoked now.
    clickhouse = ChdbClickHouse(tmp_path / "state" / "clickhouse")
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        stolen_points = clickhouse.query_arrow(
            "SELECT count() AS n FROM runledger.metric_points"
            " WHERE key = 'stolen' OR has(splitByChar(',', {bad:String}), run_id)",
            {"bad": ",".join(bad.values())},
        ).to_pylist()[0]["n"]
        assert stolen_points == 0
        async with pool.acquire() as conn:
            before = await conn.fetchval("SELECT count(*) FROM runs WHERE tenant_id = $1", ten_a)
        await replay(clickhouse, pool)
        async with pool.acquire() as conn:
            after = await conn.fetchval("SELECT count(*) FROM runs WHERE tenant_id = $1", ten_a)
        assert after == before
    finally:
        await pool.close()
        clickhouse.close()


async def _revocation_window(
    conn: asyncpg.Connection,
    kafka: KafkaProducer,
    bootstrap: str,
    topics: dict[str, str],
    dsn: str,
    tenant: str,
    projector: ServiceProcess,
) -> float:
    """Revoke a working key while its holder keeps sending; seconds from the revocation to
    the send of its last event that was still projected."""
    carol = await provision(dsn, tenant)
    first = uuid.uuid4().hex
    kafka.send(topics["events"], key=first.encode(), value=run_started(carol, "exp-a", first)).get(30)

    async def accepted() -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM runs WHERE run_id = $1", first))

    await wait_for(accepted, 30, "carol's first run", projector)
    revoked_at = time.monotonic()
    await directory.revoke_key(conn, carol.key.key_id)
    sent: dict[str, float] = {}
    while time.monotonic() - revoked_at < 6.5:
        run_id = uuid.uuid4().hex
        kafka.send(topics["events"], key=run_id.encode(), value=run_started(carol, "exp-a", run_id)).get(30)
        sent[run_id] = time.monotonic() - revoked_at
        await asyncio.sleep(0.1)
    late = [r for r, at in sent.items() if at > 5.0]

    async def settled() -> bool:
        letters = reasons_by_run(dead_letters(bootstrap, topics["dlq"]))
        return all(letters.get(r) == ["key revoked or expired"] for r in late)

    await wait_for(settled, 30, "the revoked key's events to be refused", projector)
    await asyncio.sleep(1.0)  # anything accepted is projected by now
    projected = {
        r["run_id"]
        for r in await conn.fetch("SELECT run_id FROM runs WHERE run_id = ANY($1::text[])", list(sent))
    }
    assert projected.isdisjoint(late)
    return max((sent[r] for r in projected), default=0.0)
