"""Wire rendering of metric histories and metric write batching (no services)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa

from runledger.events.metric_columns import parse as parse_metric_columns
from services.api.metrics.downsample import LttbPlan, MinMaxRawPlan, Plan, RawPlan, StepRange, rollup_plan
from services.api.metrics.encode import arrow_stream, columnar_json, points_json
from services.api.metrics.repository import SERIES_SCHEMA, concatenated_strings, json_rows_sql, plan_sql
from services.api.runs.schemas import MetricPoint
from services.api.runs.service import METRIC_POINTS_PER_EVENT, metric_payloads
from services.api.serialization import json_float, json_floats


def _series(values: list[float], timestamps: list[int | None] | None = None) -> pa.Table:
    n = len(values)
    ts = timestamps if timestamps is not None else [1000 + i for i in range(n)]
    return pa.Table.from_arrays(
        [pa.array(range(n), pa.int64()), pa.array(ts, pa.int64()), pa.array(values, pa.float64())],
        schema=SERIES_SCHEMA,
    )


def test_columnar_json_writes_non_finite_values_as_strings() -> None:
    body = orjson.loads(columnar_json("loss", "raw", False, _series([1.5, math.nan, math.inf, -math.inf])))
    assert body == {
        "key": "loss",
        "method": "raw",
        "downsampled": False,
        "steps": [0, 1, 2, 3],
        "timestamps": [1000, 1001, 1002, 1003],
        "values": [1.5, "NaN", "Infinity", "-Infinity"],
    }


def test_columnar_json_without_timestamps_says_null() -> None:
    body = orjson.loads(columnar_json("k", "minmax", True, _series([1.0, 2.0], [None, None])))
    assert body["timestamps"] is None
    empty = orjson.loads(columnar_json("k", "raw", False, SERIES_SCHEMA.empty_table()))
    assert empty["steps"] == [] and empty["values"] == [] and empty["timestamps"] == []


def test_points_json_wraps_rendered_rows() -> None:
    rows = b'{"step":1,"timestamp":5,"value":"NaN"},{"step":2,"timestamp":null,"value":0.5}'
    body = orjson.loads(points_json("a/b", "lttb", True, rows))
    assert body["key"] == "a/b" and body["downsampled"] is True
    assert body["points"][0] == {"step": 1, "timestamp": 5, "value": "NaN"}
    assert orjson.loads(points_json("k", "raw", False, b""))["points"] == []


def test_arrow_stream_round_trips_with_metadata() -> None:
    table = pa.ipc.open_stream(arrow_stream("loss", "raw", False, _series([1.0, math.nan]))).read_all()
    assert table.schema.names == ["step", "timestamp", "value"]
    assert table.schema.metadata[b"key"] == b"loss" and table.schema.metadata[b"downsampled"] == b"false"
    assert table.column("value").to_pylist()[0] == 1.0 and math.isnan(table.column("value").to_pylist()[1])


def test_concatenated_strings_reads_sliced_chunks() -> None:
    col = pa.chunked_array(
        [pa.array(["ab", "c", "def"]).slice(1), pa.array([], pa.string()), pa.array(["gh"])]
    )
    assert concatenated_strings(col) == b"cdefgh"
    assert concatenated_strings(pa.chunked_array([pa.array(["x", "yz"], pa.large_string())])) == b"xyz"


def test_json_helpers() -> None:
    assert [json_float(v) for v in (1.0, math.nan, math.inf, -math.inf)] == [
        1.0,
        "NaN",
        "Infinity",
        "-Infinity",
    ]
    finite = np.array([1.0, 2.0])
    assert json_floats(finite) is finite  # the C-level dump path
    assert json_floats(np.array([1.0, math.nan])) == [1.0, "NaN"]


def test_every_plan_renders_parameterised_sql() -> None:
    plans: list[Plan] = [
        RawPlan(StepRange(0, 10)),
        MinMaxRawPlan(StepRange(0, 10), 2),
        rollup_plan(StepRange(5, 100_000), 100),
        LttbPlan(StepRange(0, 10), 100),
    ]
    for plan in plans:
        sql, params = plan_sql(plan, "db.points", "db.rollup")
        assert "{tenant:String}" in sql and "{run:String}" in sql and "{key:String}" in sql
        for name in params:
            assert "{" + name + ":" in sql
        assert json_rows_sql(sql).startswith("SELECT concat(")


def test_metric_payloads_are_columnar_and_chunked() -> None:
    points = [
        MetricPoint(key="a" if i % 3 else "b", value=float(i), step=i, timestamp=None) for i in range(25_001)
    ]
    points[7] = MetricPoint(key="a", value=math.nan, step=7, timestamp=123)
    payloads = metric_payloads(points, default_timestamp=999)
    columns = [parse_metric_columns(p) for p in payloads]
    assert [len(c) for c in columns] == [METRIC_POINTS_PER_EVENT, METRIC_POINTS_PER_EVENT, 5001]
    first = columns[0]
    assert first.keys == ["b", "a"]  # order of first appearance
    assert first.key_index[:3].tolist() == [0, 1, 1]
    assert math.isnan(first.values[7]) and first.timestamps[7] == 123 and first.timestamps[0] == 999
