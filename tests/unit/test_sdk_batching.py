"""SDK batching: what the background thread turns logged points into (columnar events)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runledger_sdk as rl
from runledger.events.codec import decode, experiment_id_for, metric_arrays
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType
from tests.support.sdk import memory_sdk


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    # These tests count every event: nothing recorded by the SDK itself.
    with memory_sdk(tmp_path, batch_max_points=1000) as memory:
        yield memory


def events(transport: rl.InMemoryTransport, type: EventType | None = None) -> list[Any]:
    """Decoded (validated) events in arrival order."""
    decoded = [decode(r.value) for r in transport.records]
    return [d for d in decoded if type is None or d.envelope.type is type]


def points(transport: rl.InMemoryTransport, run_id: str) -> list[tuple[str, float, int, int]]:
    """Every metric point of a run as (key, value, step, timestamp), in arrival order."""
    out: list[tuple[str, float, int, int]] = []
    for event in events(transport, EventType.METRICS_LOGGED):
        if event.envelope.run_id != run_id:
            continue
        payload = event.payload
        assert isinstance(payload, MetricColumns)
        kidx, values, steps, stamps = metric_arrays(payload)
        out.extend(
            (payload.keys[k], v, s, t)
            for k, v, s, t in zip(
                kidx.tolist(), values.tolist(), steps.tolist(), stamps.tolist(), strict=True
            )
        )
    return out


def test_run_lifecycle_events_in_order(transport: rl.InMemoryTransport) -> None:
    with rl.start_run(experiment="exp-a", name="first", tags={"team": "vision"}) as run:
        rl.log_params({"lr": 0.001, "layers": 4})
        rl.set_tag("phase", "warmup")
        rl.log_metric("loss", 1.5)
    assert rl.flush(5)

    decoded = events(transport)
    types = [d.envelope.type for d in decoded]
    assert types[:2] == [EventType.EXPERIMENT_CREATED, EventType.RUN_STARTED]
    assert types[-1] is EventType.STATUS_CHANGED
    assert Counter(types) == Counter(
        {
            EventType.EXPERIMENT_CREATED: 1,
            EventType.RUN_STARTED: 1,
            EventType.PARAMS_LOGGED: 1,
            EventType.TAGS_SET: 1,
            EventType.METRICS_LOGGED: 1,
            EventType.STATUS_CHANGED: 1,
        }
    )
    created, started = decoded[0], decoded[1]
    assert created.envelope.experiment_id == experiment_id_for("default", "exp-a")
    assert created.payload.name == "exp-a"
    assert started.envelope.run_id == run.run_id
    assert started.payload.name == "first"
    assert started.payload.tags == {"team": "vision"}
    assert started.payload.parent_run_id is None
    params = events(transport, EventType.PARAMS_LOGGED)[0].payload
    assert params.params == {"lr": "0.001", "layers": "4"}  # str()-ed
    status = decoded[-1].payload
    assert status.status.value == "FINISHED"
    assert status.end_time == run.end_time
    for d in decoded:
        assert d.envelope.producer.sdk == "python-sdk"
        assert d.envelope.producer.version == rl.__version__
        # Every record is keyed by the run id: the run's events share a partition.
    assert {r.key for r in transport.records} == {run.run_id.encode()}


def test_default_experiment_and_created_once(transport: rl.InMemoryTransport) -> None:
    for _ in range(3):
        with rl.start_run():
            pass
    with rl.start_run(experiment="other"):
        pass
    rl.flush(5)
    created = events(transport, EventType.EXPERIMENT_CREATED)
    assert [(c.envelope.experiment_id, c.payload.name) for c in created] == [
        ("0", "Default"),
        (experiment_id_for("default", "other"), "other"),
    ]
    names = [e.payload.name for e in events(transport, EventType.RUN_STARTED)]
    assert len(names) == 4
    assert all(n.count("-") == 2 for n in names)  # generated, readable: "brave-otter-417"


def test_columns_are_correct_and_split_at_max_points(transport: rl.InMemoryTransport) -> None:
    rng = np.random.default_rng(7)
    expected: list[tuple[str, float, int, int]] = []
    with rl.start_run() as run:
        for step in range(250):
            batch = {f"layer{i}/grad_norm": float(rng.normal()) for i in range(10)}
            run.log_metrics(batch, step=step, timestamp=1_700_000_000_000 + step)
            expected.extend((k, v, step, 1_700_000_000_000 + step) for k, v in batch.items())
    rl.flush(5)

    metric_events = events(transport, EventType.METRICS_LOGGED)
    assert len(metric_events) >= 3  # 2,500 points at 1,000 per event
    for event in metric_events:
        payload = event.payload
        assert len(payload.values) <= 1000
        assert len(set(payload.keys)) == len(payload.keys)  # distinct
        assert sorted(set(payload.key_index)) == list(range(len(payload.keys)))  # only used keys
    assert points(transport, run.run_id) == expected


def test_auto_step_per_key_and_explicit_steps_advance_it(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        run.log_metric("a", 1.0)
        run.log_metric("a", 2.0)
        run.log_metric("b", 3.0)
        run.log_metrics({"a": 4.0, "b": 5.0})
        run.log_metric("a", 6.0, step=10)
        run.log_metric("a", 7.0)
        run.log_metric("b", 8.0, step=np.int64(3))
        run.log_metric("b", 9.0)
    rl.flush(5)
    got = [(k, v, s) for k, v, s, _ in points(transport, run.run_id)]
    assert got == [
        ("a", 1.0, 0),
        ("a", 2.0, 1),
        ("b", 3.0, 0),
        ("a", 4.0, 2),
        ("b", 5.0, 1),
        ("a", 6.0, 10),
        ("a", 7.0, 11),
        ("b", 8.0, 3),
        ("b", 9.0, 4),
    ]


def test_default_timestamp_is_now_in_ms(transport: rl.InMemoryTransport) -> None:
    before = int(time.time() * 1000)
    with rl.start_run() as run:
        run.log_metric("x", 1.0)
    after = int(time.time() * 1000)
    rl.flush(5)
    [(_, _, _, ts)] = points(transport, run.run_id)
    assert before <= ts <= after


def test_non_finite_values_and_numpy_scalars(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        run.log_metrics({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "f32": np.float32(0.5)})
        run.log_metric("int", 3)
        run.log_metric("bool", True)
    rl.flush(5)
    got = {k: v for k, v, _, _ in points(transport, run.run_id)}
    assert math.isnan(got["nan"]) and got["inf"] == math.inf and got["ninf"] == -math.inf
    assert got["f32"] == 0.5 and got["int"] == 3.0 and got["bool"] == 1.0


def test_bad_value_fails_fast_and_leaves_buffer_consistent(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        run.log_metric("ok", 1.0)
        with pytest.raises(TypeError):
            run.log_metrics({"ok": 2.0, "bad": "not a number"})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            run.log_metric("ok", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            run.log_metric("ok", 1.0, step=1.5)  # type: ignore[arg-type]
        with pytest.raises(OverflowError):
            run.log_metrics({"ok": 2.0}, step=2**70)
        run.log_metric("ok", 3.0)
    rl.flush(5)
    assert [(k, v) for k, v, _, _ in points(transport, run.run_id)] == [("ok", 1.0), ("ok", 3.0)]


def test_params_and_tags_coalesce(transport: rl.InMemoryTransport) -> None:
    with rl.start_run() as run:
        for i in range(250):
            run.log_param(f"p{i}", i)
        run.set_tags({"a": 1, "b": 2})
        run.set_tag("a", 3)  # the last value wins within a batch
    rl.flush(5)
    params: dict[str, str] = {}
    for event in events(transport, EventType.PARAMS_LOGGED):
        assert len(event.payload.params) <= 100
        params.update(event.payload.params)
    assert params == {f"p{i}": str(i) for i in range(250)}
    tags = [e.payload.tags for e in events(transport, EventType.TAGS_SET)]
    assert tags == [{"a": "3", "b": "2"}]


def test_events_grouped_per_run(transport: rl.InMemoryTransport) -> None:
    parent = rl.start_run(experiment="sweep")
    child = rl.start_run(nested=True)
    # Interleaved logging to two runs: every event carries exactly one run's points.
    for i in range(100):
        parent.log_metric("best", float(i))
        child.log_metrics({"score": float(i), "loss": -float(i)})
    rl.end_run()
    rl.end_run()
    rl.flush(5)
    for event in events(transport, EventType.METRICS_LOGGED):
        keys = set(event.payload.keys)
        assert keys == ({"best"} if event.envelope.run_id == parent.run_id else {"score", "loss"})
    assert [v for _, v, _, _ in points(transport, parent.run_id)] == [float(i) for i in range(100)]
    assert len(points(transport, child.run_id)) == 200
    for record in transport.records:
        if b"metrics_logged" in record.value:
            assert decode(record.value).envelope.run_id.encode() == record.key


def test_buffer_cut_by_size_before_interval(tmp_path: Path) -> None:
    memory = rl.InMemoryTransport()
    # A long interval: only the size trigger can cut within the test.
    rl.init(transport=memory, spool_dir=tmp_path / "spool", batch_max_points=500, batch_interval_ms=60_000)
    try:
        with rl.start_run() as run:
            for i in range(600):
                run.log_metric("x", float(i))
            deadline = time.monotonic() + 5
            while (
                not any(b"metrics_logged" in r.value for r in memory.records) and time.monotonic() < deadline
            ):
                time.sleep(0.01)
            assert any(b"metrics_logged" in r.value for r in memory.records)
    finally:
        rl.shutdown(5)
