"""The event contract: JSON Schema files in sync, forward compatibility, codec round trips."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pytest

from runledger.events.codec import (
    InvalidEvent,
    decode,
    encode,
    envelope_dict,
    experiment_id_for,
    metric_arrays,
    metric_columns,
    new_run_id,
    producer,
)
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import SCHEMA_VERSION, EventType, RunStartedPayload
from runledger.events.schema_export import render_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / f"v{SCHEMA_VERSION}"


def test_checked_in_schemas_match_the_models() -> None:
    rendered = render_schemas()
    on_disk = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    assert set(on_disk) == set(rendered), "run `runledger schemas` to regenerate schemas/"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"schemas/v{SCHEMA_VERSION}/{name} drifted; run `runledger schemas`"


def _metrics_event(values: list[float]) -> dict[str, object]:
    n = len(values)
    return envelope_dict(
        tenant_id="t1",
        type=EventType.METRICS_LOGGED,
        run_id=new_run_id(),
        experiment_id="0",
        producer=producer("test"),
        payload=metric_columns(
            ["loss", "acc"],
            np.arange(n, dtype=np.int32) % 2,
            np.asarray(values, dtype=np.float64),
            np.arange(n, dtype=np.int64),
            np.full(n, 1_700_000_000_000, dtype=np.int64),
        ),
    )


def test_metric_batch_round_trip_keeps_non_finite_values() -> None:
    values = [0.5, math.nan, math.inf, -math.inf, 1e-300]
    decoded = decode(encode(_metrics_event(values)))
    assert isinstance(decoded.payload, MetricColumns)
    key_index, got, steps, _ = metric_arrays(decoded.payload)
    assert key_index.tolist() == [0, 1, 0, 1, 0]
    assert got[0] == 0.5 and math.isnan(got[1]) and got[2] == math.inf and got[3] == -math.inf
    assert steps.tolist() == [0, 1, 2, 3, 4]


def test_metric_columns_also_arrive_as_json_arrays_with_nan_strings() -> None:
    event = _metrics_event([0.0])
    event["payload"] = {
        "keys": ["loss"],
        "key_index": [0, 0, 0],
        "values": [1.5, "NaN", "-Infinity"],
        "steps": [1, 2, 3],
        "timestamps": [10, 20, 30],
    }
    decoded = decode(orjson.dumps(event))
    assert isinstance(decoded.payload, MetricColumns)
    assert decoded.payload.values[0] == 1.5 and math.isnan(decoded.payload.values[1])
    assert decoded.payload.values[2] == -math.inf
    assert decoded.payload.steps.dtype == np.int64 and decoded.payload.steps.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("column", "bad", "reason"),
    [
        ("values", [1.0, "nan?", 2.0], "NaN"),
        ("values", [True, False, True], "numbers only"),
        ("steps", [1.5, 2.0, 3.0], "integers only"),
        ("steps", "not base64!", "base64"),
        ("steps", "AAAA", "whole number"),
        ("key_index", [0, 5, 0], "outside keys"),
        ("timestamps", [1, 2], "same length"),
    ],
)
def test_bad_metric_columns_are_rejected_with_a_reason(column: str, bad: object, reason: str) -> None:
    event = _metrics_event([0.0])
    event["payload"] = {
        "keys": ["loss"],
        "key_index": [0, 0, 0],
        "values": [1.0, 2.0, 3.0],
        "steps": [1, 2, 3],
        "timestamps": [10, 20, 30],
        column: bad,
    }
    with pytest.raises(InvalidEvent, match=reason):
        decode(orjson.dumps(event))


def test_consumer_of_version_n_reads_an_additive_version_n_plus_1_event() -> None:
    event = envelope_dict(
        tenant_id="t1",
        type=EventType.RUN_STARTED,
        run_id=new_run_id(),
        experiment_id="0",
        producer=producer("test"),
        payload={"name": "r", "start_time": 1, "gpu_topology": {"nvlink": True}},
    )
    event["schema_version"] = SCHEMA_VERSION + 1
    event["trace_id"] = "abc"  # a new envelope field
    decoded = decode(orjson.dumps(event))
    assert decoded.envelope.schema_version == SCHEMA_VERSION + 1
    assert isinstance(decoded.payload, RunStartedPayload) and decoded.payload.name == "r"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"event_id": "x"}', "bad envelope"),
    ],
)
def test_malformed_bytes_raise_invalid_event_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        decode(raw)


def test_bad_payloads_are_rejected_with_the_field_named() -> None:
    event = _metrics_event([1.0, 2.0])
    event = _metrics_event([1.0])
    event["payload"]["keys"] = ["../etc"]  # type: ignore[index]
    with pytest.raises(InvalidEvent, match="keys"):
        decode(encode(event))
    event = _metrics_event([1.0])
    event["run_id"] = None
    with pytest.raises(InvalidEvent, match="needs run_id"):
        decode(encode(event))


def test_unknown_event_type_is_rejected() -> None:
    event = _metrics_event([1.0])
    event["type"] = "run.teleported"
    with pytest.raises(InvalidEvent, match="type"):
        decode(encode(event))


def test_experiment_ids_derive_from_the_name_per_tenant() -> None:
    assert experiment_id_for("a", "Default") == "0"
    assert experiment_id_for("a", "x") == experiment_id_for("a", "x")
    assert experiment_id_for("a", "x") != experiment_id_for("b", "x")


@pytest.mark.parametrize("key", ["loss\n", "loss\nval", "a/\n", "\n"])
def test_a_key_with_a_newline_is_refused(key: str) -> None:
    from runledger.events.models import _check_key

    with pytest.raises(ValueError, match="may only contain"):
        _check_key(key)
    assert _check_key("train/loss: top-1.x") == "train/loss: top-1.x"


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        ("runledger.auth.keys:_KEY_ID_RE", "0123456789abcdef\n"),
        ("runledger.artifacts.base:_DIGEST", "sha256:" + "a" * 64 + "\n"),
        ("services.api.mlflow.service:_ID", "run1\n"),
    ],
)
def test_anchored_identifiers_refuse_a_trailing_newline(pattern: str, value: str) -> None:
    import importlib

    module, name = pattern.split(":")
    regex = getattr(importlib.import_module(module), name)
    assert regex.match(value) is None and regex.match(value.rstrip("\n")) is not None


def test_encoded_events_hold_about_their_length_in_memory() -> None:
    small = {"type": "run.status_changed", "payload": {"status": "FINISHED"}}
    large = {"type": "run.metrics_logged", "payload": {"values": "A" * 40_000}}
    for event in (small, large):
        encode(event)  # warm any caches outside the measurement
        tracemalloc.start()
        try:
            kept = [encode(event) for _ in range(50)]
            held = tracemalloc.get_traced_memory()[0] / len(kept)
        finally:
            tracemalloc.stop()
        assert orjson.loads(kept[0]) == event
        # orjson's own result holds 4 KiB for the small event and ~520 kB for the large one
        assert held < len(kept[0]) + 200, (len(kept[0]), held)
