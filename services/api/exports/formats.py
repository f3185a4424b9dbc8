"""Incremental writers: Arrow record batches in, bytes out, one batch at a time.

Each writer returns the bytes produced so far after every batch (and the trailer at the
end), so a response streams while the next page is read and memory stays flat whatever
the size of the export: CSV (header once, RFC 4180 quoting), NDJSON (one JSON object per
line), Parquet (one row group per batch) and the Arrow IPC stream format.
"""

from __future__ import annotations

import io
import math
from datetime import datetime
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

Format = Literal["csv", "ndjson", "parquet", "arrow"]
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
EXTENSIONS = {"csv": "csv", "ndjson": "ndjson", "parquet": "parquet", "arrow": "arrows"}


class _Drain(io.RawIOBase):
    """A write-only sink whose bytes are taken out after each batch."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class BatchWriter:
    """Writes batches of one schema in one format; `write` and `close` return new bytes."""

    def __init__(self, fmt: Format, schema: pa.Schema) -> None:
        self._fmt = fmt
        self._schema = schema
        self._sink = _Drain()
        self._writer: Any = None
        if fmt == "csv":
            self._writer = pacsv.CSVWriter(self._sink, schema)
        elif fmt == "parquet":
            self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd")
        elif fmt == "arrow":
            self._writer = pa.ipc.new_stream(self._sink, schema)

    def write(self, batch: pa.RecordBatch) -> bytes:
        if self._fmt == "ndjson":
            return _ndjson(batch)
        if batch.num_rows:
            if self._fmt == "parquet":
                self._writer.write_table(pa.Table.from_batches([batch], self._schema))
            else:
                self._writer.write_batch(batch)
        return self._sink.take()

    def close(self) -> bytes:
        if self._writer is not None:
            self._writer.close()
        return self._sink.take()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _ndjson(batch: pa.RecordBatch) -> bytes:
    names = batch.schema.names
    columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
    out = bytearray()
    for row in zip(*columns, strict=True):
        out += orjson.dumps({n: _json_value(v) for n, v in zip(names, row, strict=True)})
        out += b"\n"
    return bytes(out)
