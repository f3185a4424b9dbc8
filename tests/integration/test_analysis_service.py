"""The analysis service against a real broker and Postgres: verified events only, findings once,
state that survives a restart and a crash between publishing and checkpointing, outlier runs
that start an attribution, attribution jobs that report their failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import REGISTRY

from runledger.analysis.sharding import shard_of
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.events.codec import encode, envelope_dict, metric_columns, producer
from runledger.events.models import EventType
from runledger.stores.postgres.migrate import migrate
from services.analysis import store
from services.analysis.service import AnalysisService
from tests.support.auth import Identity, provision
from tests.support.events import event

pytestmark = pytest.mark.integration

TENANT = "analysis-co"
EXPERIMENT = "exp-analysis"
KEY = "train/loss"


@dataclass
class World:
    settings: Settings
    dsn: str
    engineer: Identity
    platform: Identity
    producer: KafkaProducer


@pytest.fixture
async def world(broker: EmbeddedBroker, fresh_dsn: str, topics: dict[str, str]) -> AsyncIterator[World]:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    engineer = await provision(fresh_dsn, TENANT, Role.ENGINEER)
    platform = await provision(fresh_dsn, "platform", None, superadmin=True)
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        postgres_dsn=fresh_dsn,
        events_topic=topics["events"],
        dlq_topic=topics["dlq"],
        analysis_settings_refresh_s=0.2,
        analysis_checkpoint_interval_s=0.5,
        auth_poll_interval_s=0.2,
        attribution_auto=True,
    )
    kafka = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
    try:
        yield World(settings, fresh_dsn, engineer, platform, kafka)
    finally:
        kafka.close(5)


@contextlib.asynccontextmanager
async def running(world: World, settings: Settings | None = None) -> AsyncIterator[AnalysisService]:
    """An analysis service over the world's topic and database, stopped on exit."""
    pool = await asyncpg.create_pool(world.dsn, min_size=1, max_size=4)
    service = AnalysisService(settings or world.settings, pool, world.platform.key)
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.stop.set()
        await asyncio.wait_for(task, 30)
        await pool.close()


def curve(steps: int, seed: int) -> np.ndarray:
    """A clean, noisy, decaying training loss."""
    rng = np.random.default_rng(seed)
    x = np.arange(steps)
    return 2.0 * np.exp(-x / 60) + 0.2 + rng.normal(0, 0.01, steps)


def metrics(
    identity: Identity,
    run_id: str,
    first: int,
    values: np.ndarray,
    *,
    tenant: str | None = None,
    experiment: str = EXPERIMENT,
) -> bytes:
    steps = np.arange(first, first + len(values), dtype=np.int64)
    payload = metric_columns(
        [KEY], np.zeros(len(values), dtype=np.int32), values, steps, 1_700_000_000_000 + steps
    )
    return event(
        identity, EventType.METRICS_LOGGED, payload, run_id=run_id, experiment_id=experiment, tenant=tenant
    )


def send(world: World, raws: list[bytes], key: str) -> None:
    for raw in raws:
        world.producer.send(world.settings.events_topic, key=key.encode(), value=raw)
    world.producer.flush()


def reported(world: World, type_: EventType = EventType.ANOMALY_DETECTED) -> list[dict[str, Any]]:
    """Every event of `type_` on the topic so far (duplicates included)."""
    consumer = KafkaConsumer(
        bootstrap_servers=world.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1500,
    )
    consumer.subscribe([world.settings.events_topic])
    found = [orjson.loads(r.value) for r in consumer if f'"{type_.value}"'.encode() in r.value]
    consumer.close()
    return found


async def until(check: Callable[[], Any], limit_s: float = 30) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


def kinds_of(findings: list[dict[str, Any]], run_id: str) -> list[tuple[str, int]]:
    return sorted((f["payload"]["kind"], f["payload"]["step"]) for f in findings if f["run_id"] == run_id)


async def analysed_through(world: World, service: AnalysisService, points: int) -> None:
    """Wait until the service analysed `points` points and stored its checkpoint."""
    for _ in range(300):
        if service.analysed_points >= points:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the batch's state and offsets commit right after its analysis


def planted(seed: int) -> np.ndarray:
    """400 steps: a NaN at 150, a spike at 200, a divergence from 300."""
    values = curve(400, seed)
    values[150] = np.nan
    values[200] += 3.0
    values[300:] = values[299] * 1.08 ** np.arange(1, 101)
    return values


async def test_findings_of_verified_events_only_once_each(world: World) -> None:
    run, forged_run, unsigned_run = (f"run-{uuid.uuid4().hex[:12]}" for _ in range(3))
    values = planted(1)
    intruder = await provision(world.dsn, "intruders", Role.ENGINEER)
    unsigned = encode(
        envelope_dict(
            tenant_id=TENANT,
            type=EventType.METRICS_LOGGED,
            payload=metric_columns(
                [KEY], np.zeros(3, dtype=np.int32), np.full(3, np.nan), np.arange(3), np.arange(3)
            ),
            producer=producer("tests"),
            run_id=unsigned_run,
            experiment_id=EXPERIMENT,
        )
    )
    async with running(world) as service:
        started = time.monotonic()
        for first in range(0, 400, 50):
            send(world, [metrics(world.engineer, run, first, values[first : first + 50])], run)
        # A key of another tenant claiming this tenant's run, and an unsigned event: no finding.
        send(world, [metrics(intruder, forged_run, 0, np.full(40, np.nan), tenant=TENANT)], forged_run)
        send(world, [unsigned], unsigned_run)
        findings = await until(lambda: [f for f in reported(world) if f["payload"]["kind"] == "divergence"])
        delay = time.monotonic() - started
        await analysed_through(world, service, 400)
    everything = reported(world)
    got = kinds_of(everything, run)
    kinds = [k for k, _ in got]
    assert kinds.count("non_finite") == 1 and ("non_finite", 150) in got, got
    # A finding's step is where the incident began, as the detector estimates it.
    assert kinds.count("spike") == 1 and any(k == "spike" and 198 <= s <= 205 for k, s in got), got
    assert kinds.count("divergence") == 1 and any(k == "divergence" and 295 <= s <= 310 for k, s in got), got
    assert not kinds_of(everything, forged_run) and not kinds_of(everything, unsigned_run)
    f = findings[0]
    assert f["tenant_id"] == TENANT and f["experiment_id"] == EXPERIMENT
    assert f["key_id"] == world.platform.key.key_id and f["signature"]
    assert f["payload"]["evidence"]["message"]
    print(f"divergence reported {delay:.2f} s after the first point was sent")


async def test_state_survives_a_restart_without_realerting_or_gaps(world: World) -> None:
    values = planted(2)
    interrupted, straight = f"run-{uuid.uuid4().hex[:12]}", f"run-{uuid.uuid4().hex[:12]}"
    async with running(world) as service:
        send(world, [metrics(world.engineer, interrupted, 0, values[:250])], interrupted)
        await analysed_through(world, service, 250)
    async with running(world) as service:
        # The restarted service resumes after its checkpoint: the first half is not analysed again.
        send(world, [metrics(world.engineer, interrupted, 250, values[250:])], interrupted)
        send(world, [metrics(world.engineer, straight, 0, values)], straight)
        await analysed_through(world, service, 150 + 400)
        await until(lambda: len(kinds_of(reported(world), straight)) >= 3)
    everything = reported(world)
    assert len(everything) == len({f["event_id"] for f in everything})  # nothing re-alerted
    assert kinds_of(everything, interrupted) == kinds_of(everything, straight)  # nor missed


async def test_detectors_evicted_past_the_cap_resume_from_their_stored_state(world: World) -> None:
    """With room for one detector state in memory, three runs logged in turns: each turn's
    detector is reloaded from Postgres, and the findings are those of runs analysed without
    a cap, each once."""
    values = planted(4)
    capped = [f"run-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    straight = f"run-{uuid.uuid4().hex[:12]}"
    settings = world.settings.model_copy(update={"analysis_max_series_cached": 1})
    in_memory = []
    async with running(world, settings) as service:
        for first in range(0, 400, 50):
            for run in capped:
                send(world, [metrics(world.engineer, run, first, values[first : first + 50])], run)
            await analysed_through(world, service, 3 * (first + 50))
            await asyncio.sleep(0.6)  # past the next checkpoint, which evicts
            in_memory.append(REGISTRY.get_sample_value("runledger_analysis_series_in_memory", {"shard": "0"}))
    async with running(world) as service:
        send(world, [metrics(world.engineer, straight, 0, values)], straight)
        await until(lambda: len(kinds_of(reported(world), straight)) >= 3)
    assert in_memory and all(n is not None and n <= 1 for n in in_memory), in_memory
    everything = reported(world)
    assert len(everything) == len({f["event_id"] for f in everything})  # nothing re-alerted
    expected = kinds_of(everything, straight)
    assert [k for k, _ in expected] == ["divergence", "non_finite", "spike"], expected
    for run in capped:
        assert kinds_of(everything, run) == expected


async def test_a_crash_between_publishing_and_checkpointing_repeats_the_same_events(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = f"run-{uuid.uuid4().hex[:12]}"
    values = planted(3)
    real_save = store.save_offsets
    crashes = {"left": 1}

    async def crash_once(*args: Any) -> None:
        if crashes["left"]:
            crashes["left"] -= 1
            raise ConnectionError("simulated crash after the findings were published")
        await real_save(*args)

    monkeypatch.setattr(store, "save_offsets", crash_once)
    async with running(world) as service:
        send(world, [metrics(world.engineer, run, 0, values)], run)
        await until(lambda: len(reported(world)) >= 6)  # each of the 3 findings published twice
        await analysed_through(world, service, 800)
    everything = [f for f in reported(world) if f["run_id"] == run]
    ids = [f["event_id"] for f in everything]
    assert len(ids) == 6 and len(set(ids)) == 3  # the same ids again: the projector keeps one of each
    assert crashes["left"] == 0


async def test_an_outlier_run_starts_an_attribution(world: World) -> None:
    rng = np.random.default_rng(5)
    runs = [f"sib-{i}-{uuid.uuid4().hex[:8]}" for i in range(12)]
    async with running(world):
        for i, run in enumerate(runs):
            values = curve(120, 100 + i)
            if i == len(runs) - 1:
                values = values + 2.5 + rng.normal(0, 0.01, len(values))  # far worse than its siblings
            finished = event(
                world.engineer,
                EventType.STATUS_CHANGED,
                {"status": "FINISHED", "end_time": 1_700_000_500_000},
                run_id=run,
                experiment_id=EXPERIMENT,
            )
            send(world, [metrics(world.engineer, run, 0, values), finished], run)
        requests = await until(lambda: reported(world, EventType.ATTRIBUTION_REQUESTED))
    outliers = [f for f in reported(world) if f["payload"]["kind"] == "outlier_run"]
    assert {f["run_id"] for f in outliers} == {runs[-1]}, outliers
    request = requests[0]
    assert request["experiment_id"] == EXPERIMENT
    assert request["payload"]["candidate_run_ids"] == [runs[-1]]
    assert request["payload"]["metric"] == KEY
    assert request["payload"]["trigger"]["finding_event_id"] in {f["event_id"] for f in outliers}


async def test_an_attribution_that_cannot_run_is_reported_failed_with_the_reason(world: World) -> None:
    attribution_id = str(uuid.uuid4())
    conn = await asyncpg.connect(world.dsn)
    try:
        await conn.execute(
            "INSERT INTO attributions (tenant_id, attribution_id, experiment_id, metric, request, status,"
            " requested_at) VALUES ($1, $2, $3, 'val/loss', $4::jsonb, 'pending', now())",
            TENANT,
            attribution_id,
            EXPERIMENT,
            orjson.dumps(
                {"metric": "val/loss", "candidate_run_ids": ["ghost"], "baseline_run_ids": []}
            ).decode(),
        )
    finally:
        await conn.close()
    async with running(world):
        results = await until(lambda: reported(world, EventType.ATTRIBUTION_COMPUTED))
    payload = results[0]["payload"]
    assert payload["attribution_id"] == attribution_id
    assert payload["status"] == "failed"
    assert "val/loss" in payload["error"]


async def test_tenant_settings_tune_detection_per_experiment_and_metric(world: World) -> None:
    conn = await asyncpg.connect(world.dsn)
    try:
        await conn.execute(
            "INSERT INTO anomaly_settings (tenant_id, experiment_id, key, overrides)"
            " VALUES ($1, $2, 'train/*', $3::jsonb)",
            TENANT,
            EXPERIMENT,
            orjson.dumps({"disabled_kinds": ["spike"]}).decode(),
        )
    finally:
        await conn.close()
    values = curve(300, 9)
    values[200] += 3.0
    tuned, untouched = f"run-{uuid.uuid4().hex[:12]}", f"run-{uuid.uuid4().hex[:12]}"
    async with running(world) as service:
        send(world, [metrics(world.engineer, tuned, 0, values)], tuned)
        send(world, [metrics(world.engineer, untouched, 0, values, experiment="exp-default")], untouched)
        await until(lambda: kinds_of(reported(world), untouched))
        await analysed_through(world, service, 600)
    everything = reported(world)
    assert [k for k, _ in kinds_of(everything, untouched)] == ["spike"]
    assert kinds_of(everything, tuned) == []  # spikes are off for train/* of this experiment


async def test_a_shift_of_the_runs_final_values_starts_an_attribution(world: World) -> None:
    before = [f"old-{i}-{uuid.uuid4().hex[:8]}" for i in range(10)]
    after = [f"new-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    async with running(world):
        for i, run in enumerate(before + after):
            values = curve(120, 300 + i) + (0.5 if run in after else 0.0)  # the last runs end higher
            finished = event(
                world.engineer,
                EventType.STATUS_CHANGED,
                {"status": "FINISHED", "end_time": 1_700_000_500_000},
                run_id=run,
                experiment_id=EXPERIMENT,
            )
            send(world, [metrics(world.engineer, run, 0, values), finished], run)
            await asyncio.sleep(0.3)  # finish order = the order the runs ended
        requests = await until(
            lambda: [
                r
                for r in reported(world, EventType.ATTRIBUTION_REQUESTED)
                if r["payload"]["trigger"]["kind"] == "level_shift"
            ]
        )
    shifts = [
        f
        for f in reported(world)
        if f["payload"]["kind"] == "level_shift" and f["payload"]["evidence"].get("scope") == "runs"
    ]
    assert len(shifts) == 1, shifts
    payload = requests[0]["payload"]
    assert sorted(payload["candidate_run_ids"]) == sorted(after)
    assert set(payload["baseline_run_ids"]) <= set(before) and len(payload["baseline_run_ids"]) >= 8
    assert payload["trigger"]["finding_event_id"] == shifts[0]["event_id"]


async def test_shards_split_the_experiments_and_a_new_layout_resumes_where_the_old_one_stopped(
    world: World,
) -> None:
    shards = [world.settings.model_copy(update={"analysis_shards": 2, "analysis_shard": i}) for i in (0, 1)]
    experiments = [f"exp-shard-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    while len({shard_of(TENANT, e, 2) for e in experiments}) < 2:  # both shards get work
        experiments.append(f"exp-shard-{uuid.uuid4().hex[:8]}")
    runs = {e: f"run-{uuid.uuid4().hex[:12]}" for e in experiments}
    async with running(world, shards[0]) as first, running(world, shards[1]) as second:
        for i, (experiment, run) in enumerate(runs.items()):
            send(world, [metrics(world.engineer, run, 0, planted(10 + i), experiment=experiment)], run)
        await until(
            lambda: (
                {f["run_id"] for f in reported(world) if f["payload"]["kind"] == "divergence"}
                >= set(runs.values())
            )
        )
        for service, shard in ((first, 0), (second, 1)):
            mine = [e for e in experiments if shard_of(TENANT, e, 2) == shard]
            await analysed_through(world, service, 400 * len(mine))
            # Each shard analysed its own experiments' points and no others.
            assert service.analysed_points == 400 * len(mine)
    everything = reported(world)
    assert len(everything) == len({f["event_id"] for f in everything})
    for run in runs.values():
        assert [k for k, _ in kinds_of(everything, run)] == ["divergence", "non_finite", "spike"]
    # One shard again: it takes over the two shards' offsets instead of starting over.
    later = f"run-{uuid.uuid4().hex[:12]}"
    async with running(world) as single:
        send(world, [metrics(world.engineer, later, 0, planted(3), experiment=experiments[0])], later)
        await until(lambda: len(kinds_of(reported(world), later)) >= 3)
        await analysed_through(world, single, 400)
        assert single.analysed_points == 400
    everything = reported(world)
    assert len(everything) == len({f["event_id"] for f in everything})
    assert [k for k, _ in kinds_of(everything, later)] == ["divergence", "non_finite", "spike"]
