"""The SDK against the real tansu broker: events read back exactly; a broker outage is
bridged by the spool with nothing lost and nothing doubled."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.embedded.broker import EmbeddedBroker
from runledger.events.codec import DecodedEvent, decode
from runledger.events.models import EventType

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture(autouse=True)
def _sdk_shutdown() -> Iterator[None]:
    yield
    rl.shutdown(5)


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[DecodedEvent]:
    """Every event on `topic` (all partitions, from the start), once `expected` have arrived.

    Waits a little longer after that, so a surplus (duplicates) would be seen too.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,  # INFRA_NOTES: tansu does not wake a waiting fetch
        consumer_timeout_ms=1000,
    )
    try:
        # Ask the broker: a topic auto-created by a producer on a fresh broker may have a
        # different partition count than the one we asked for.
        deadline = time.monotonic() + timeout
        while (ids := consumer.partitions_for_topic(topic)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ids, f"topic {topic} not found"
        parts = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(parts)  # no group join: no 3-23 s rebalance wait
        consumer.seek_to_beginning(*parts)
        events: list[DecodedEvent] = []
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                events.extend(decode(r.value) for r in records)
            if len(events) >= expected:
                settle_until = settle_until or time.monotonic() + 1.0
                if time.monotonic() >= settle_until:
                    break
        return events
    finally:
        consumer.close()


def sdk_settings(bootstrap: str, topic: str, spool_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "transport": "kafka",
        "kafka_bootstrap": bootstrap,
        "events_topic": topic,
        "spool_dir": spool_dir,
        "tenant": f"sdk-{uuid.uuid4().hex[:6]}",
        "api_key": generate_key().token,  # online clients sign every event
        # These tests count events exactly: no run context (code state, environment,
        # lint findings) or system metrics beside what they log themselves.
        "capture_code_state": False,
        "capture_environment": False,
        "lint_runs": False,
        "system_metrics_interval_s": 0,
        **extra,
    }


def metric_values(events: list[DecodedEvent], run_id: str, key: str) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for e in events:
        if e.envelope.type is EventType.METRICS_LOGGED and e.envelope.run_id == run_id:
            p = e.payload
            out.extend(
                (s, v)
                for k, v, s in zip(p.key_index, p.values, p.steps, strict=True)  # type: ignore[attr-defined]
                if p.keys[k] == key  # type: ignore[attr-defined]
            )
    return out


def test_sdk_run_reads_back_exactly(broker: EmbeddedBroker, topics: dict[str, str], tmp_path: Path) -> None:
    rl.init(**sdk_settings(broker.bootstrap, topics["events"], tmp_path / "spool"))
    with rl.start_run(experiment="kafka-it", name="readback", tags={"suite": "it"}) as run:
        rl.log_params({"lr": 0.01, "optimizer": "adam"})
        rl.set_tag("stage", "train")
        for step in range(3000):
            rl.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 3000}, step=step)
        with rl.start_run(nested=True, name="eval") as child:
            child.log_metric("eval/acc", 0.9)
    assert rl.flush(30)

    expected_types = Counter(
        {
            EventType.EXPERIMENT_CREATED: 1,
            EventType.RUN_STARTED: 2,
            EventType.PARAMS_LOGGED: 1,
            EventType.TAGS_SET: 1,
            EventType.STATUS_CHANGED: 2,
        }
    )
    events = read_all(broker.bootstrap, topics["events"], sum(expected_types.values()) + 1)
    types = Counter(e.envelope.type for e in events)
    assert {t: types[t] for t in expected_types} == dict(expected_types)
    assert len({e.envelope.event_id for e in events}) == len(events)

    mine = [e for e in events if e.envelope.run_id == run.run_id]
    assert mine[0].envelope.type is EventType.RUN_STARTED  # per-run order holds on the topic
    assert mine[-1].envelope.type is EventType.STATUS_CHANGED
    assert mine[-1].payload.status.value == "FINISHED"  # type: ignore[attr-defined]
    assert metric_values(events, run.run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(3000)]
    assert metric_values(events, run.run_id, "acc") == [(s, s / 3000) for s in range(3000)]
    child_started = next(
        e for e in events if e.envelope.type is EventType.RUN_STARTED and e.envelope.run_id == child.run_id
    )
    assert child_started.payload.parent_run_id == run.run_id  # type: ignore[attr-defined]
    assert child_started.envelope.experiment_id == run.experiment_id
    assert metric_values(events, child.run_id, "eval/acc") == [(0, 0.9)]


@pytest.mark.slow
def test_broker_outage_is_bridged_by_the_spool(tmp_path: Path) -> None:
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    topic = "runledger.events.v1"
    try:
        broker.ensure_topics({topic: PARTITIONS})
        rl.init(
            **sdk_settings(
                broker.bootstrap,
                topic,
                tmp_path / "spool",
                send_timeout_s=3,
                resend_backoff_initial_s=0.1,
                resend_backoff_max_s=0.5,
            )
        )
        run = rl.start_run(experiment="outage")
        for step in range(2000):
            run.log_metric("x", float(step), step=step)
        assert rl.flush(30)
        # Memory storage: what this incarnation holds is gone after the restart, so read it now.
        before = read_all(broker.bootstrap, topic, 3)

        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGKILL)
        broker.stop()

        started = time.perf_counter()
        for step in range(2000, 10_000):
            run.log_metric("x", float(step), step=step)
        run.log_params({"phase": "outage"})
        run.end_run()
        with rl.start_run(experiment="outage") as second:
            second.log_metrics({"y": 1.0, "z": 2.0})
        logging_s = time.perf_counter() - started
        assert logging_s < 2.0, "logging blocked on the dead broker"
        assert rl.flush(4) is False  # the broker is down: events wait in the spool
        assert list((tmp_path / "spool").rglob("*.spool"))

        broker.start()  # same port, new empty incarnation
        broker.ensure_topics({topic: PARTITIONS})
        assert rl.flush(60)
        assert list((tmp_path / "spool").rglob("*.spool")) == []
        after = read_all(broker.bootstrap, topic, 5)
    finally:
        rl.shutdown(5)
        broker.stop()

    ids_before = Counter(e.envelope.event_id for e in before)
    ids_after = Counter(e.envelope.event_id for e in after)
    assert max(ids_before.values()) == 1 and max(ids_after.values()) == 1
    # The new incarnation started empty: what the old one had acknowledged is sent to it
    # again (the resend window, runledger_sdk.resend), so it holds the whole run, in order.
    assert set(ids_before) <= set(ids_after), "events the lost broker had acknowledged were not resent"

    points = metric_values(after, run.run_id, "x")
    assert sorted(points) == [(s, float(s)) for s in range(10_000)]
    assert len(points) == 10_000  # none missing, none twice
    mine = [e for e in after if e.envelope.run_id == run.run_id]
    assert mine[0].envelope.type is EventType.RUN_STARTED
    assert mine[-1].envelope.type is EventType.STATUS_CHANGED
    assert [v for _, v in points] == [float(s) for s in range(10_000)]
    assert any(e.envelope.type is EventType.PARAMS_LOGGED for e in after)
    assert metric_values(after, second.run_id, "y") == [(0, 1.0)]
