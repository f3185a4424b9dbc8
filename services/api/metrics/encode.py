"""Rendering a series for the wire without a Python step per point.

columnar JSON: orjson dumps the numpy columns in C (non-finite values patched to
MLflow's strings only where they occur). points JSON: ClickHouse renders the
rows (see repository.json_rows_sql). Arrow: the IPC stream of the table itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from services.api.serialization import json_floats

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _header(key: str, method: str, downsampled: bool) -> dict[str, Any]:
    return {"key": key, "method": method, "downsampled": downsampled}


def columnar_json(key: str, method: str, downsampled: bool, table: pa.Table) -> bytes:
    """`{key, method, downsampled, steps, timestamps, values}` from an Arrow series table."""
    timestamps = table.column("timestamp")
    ts: Any
    if table.num_rows and timestamps.null_count == table.num_rows:
        ts = None  # rollup answers carry no timestamps at all
    elif timestamps.null_count:
        ts = timestamps.to_pylist()
    else:
        ts = timestamps.to_numpy()
    values = table.column("value").to_numpy().astype(np.float64, copy=False)
    body = {
        **_header(key, method, downsampled),
        "steps": table.column("step").to_numpy(),
        "timestamps": ts,
        "values": json_floats(values),
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def points_json(key: str, method: str, downsampled: bool, rows: bytes) -> bytes:
    """`{key, method, downsampled, points: [...]}` around a pre-rendered array body."""
    head = orjson.dumps(_header(key, method, downsampled))
    return head[:-1] + b',"points":[' + rows + b"]}"


def arrow_stream(key: str, method: str, downsampled: bool, table: pa.Table) -> bytes:
    """Arrow IPC stream bytes of (step int64, timestamp int64 ms, value float64), header in metadata."""
    meta = {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in _header(key, method, downsampled).items()
    }
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())
