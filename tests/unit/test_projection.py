"""build_projection: columnar points, latest-per-series rule, archive rows, metadata order."""

from __future__ import annotations

import numpy as np

from runledger.events.codec import decode, encode, envelope_dict, metric_columns, producer
from runledger.events.models import EventType, utc_now
from services.ingest.projection import ArchivedEvent, build_projection


def _event(
    run_id: str, keys: list[str], idx: list[int], values: list[float], steps: list[int], ts: list[int]
) -> ArchivedEvent:
    raw = encode(
        envelope_dict(
            tenant_id="t1",
            type=EventType.METRICS_LOGGED,
            run_id=run_id,
            experiment_id="e1",
            producer=producer("test"),
            payload=metric_columns(
                keys,
                np.asarray(idx, dtype=np.int32),
                np.asarray(values, dtype=np.float64),
                np.asarray(steps, dtype=np.int64),
                np.asarray(ts, dtype=np.int64),
            ),
        )
    )
    return ArchivedEvent(decode(raw), "inc.topic.0", 0)


def test_points_from_several_events_share_one_key_dictionary() -> None:
    a = _event("r1", ["loss", "acc"], [0, 1, 0], [1.0, 0.5, 0.9], [0, 0, 1], [10, 10, 20])
    b = _event("r2", ["acc"], [0], [0.7], [3], [30])
    projection = build_projection([a, b], utc_now())
    points = projection.points
    assert points is not None and points.num_rows == 4
    rows = points.to_pylist()
    # Rows come sorted as ClickHouse orders them: (tenant, run, key, step).
    assert [(r["run_id"], r["key"], r["step"], r["value"]) for r in rows] == [
        ("r1", "acc", 0, 0.5),
        ("r1", "loss", 0, 1.0),
        ("r1", "loss", 1, 0.9),
        ("r2", "acc", 3, 0.7),
    ]
    assert projection.archive is not None and projection.archive.num_rows == 2
    assert projection.metadata_events == []


def test_latest_is_max_by_step_then_timestamp_then_value() -> None:
    ev = _event(
        "r1",
        ["loss"],
        [0, 0, 0, 0],
        [5.0, 3.0, 4.0, 1.0],
        [2, 2, 2, 1],
        [100, 200, 200, 999],
    )
    latest = build_projection([ev], utc_now()).latest
    assert latest is not None
    assert latest.keys == ["loss"] and latest.steps.tolist() == [2]
    assert latest.timestamps.tolist() == [200] and latest.values.tolist() == [4.0]
    assert latest.first_steps.tolist() == [1]  # the series' extent starts at its smallest step


def test_metadata_events_keep_topic_order() -> None:
    tags = envelope_dict(
        tenant_id="t1",
        type=EventType.TAGS_SET,
        run_id="r1",
        experiment_id="e1",
        producer=producer("test"),
        payload={"tags": {"a": "1"}},
    )
    deleted = {
        **tags,
        "event_id": "0190a2b4-0000-7000-8000-000000000001",
        "type": "run.tags_deleted",
        "payload": {"keys": ["a"]},
    }
    events = [ArchivedEvent(decode(encode(e)), "s", i) for i, e in enumerate([tags, deleted])]
    projection = build_projection(events, utc_now())
    assert [e.envelope.type for e in projection.metadata_events] == [
        EventType.TAGS_SET,
        EventType.TAGS_DELETED,
    ]
    assert projection.points is None and projection.tenants == {"t1"}
