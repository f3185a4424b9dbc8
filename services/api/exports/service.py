"""The export tables as streams of Arrow record batches, page by page (never the whole table).

Rows come from the caller's tenant (and experiments shared with it, when the request names
them); a grant narrowed to some experiments narrows the export. Runs are selected with
the MLflow run search grammar (`filter`) and its keyset SQL (search_run_ids).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from runledger.stores.clickhouse import ClickHouse
from services.api.access import Access
from services.api.business.schemas import BusinessReport
from services.api.errors import InvalidParameter
from services.api.exports import repository as repo
from services.api.findings.repository import FindingFilters, FindingRepository
from services.api.mlflow import experiment_filter
from services.api.mlflow.search import Condition, parse_filter
from services.api.mlflow.search_repository import search_run_ids

RUN_FIRST_PAGE = 1000  # runs in the wide table's first page: the response starts after it
RUN_PAGE = 2500  # runs per later page: 5,000 took as much CPU and twice the memory (~100 MB)
RUN_ID_PAGE = 50_000  # run ids per search after the first page (the search's maximum)
POINT_RUN_PAGE = 500  # runs per ClickHouse query of metric points
POINT_CHUNK = 200_000  # points per ClickHouse query (and per record batch)
EXPERIMENT_PAGE = 5000
# Params of the wide table from each run's document (runs.params_doc, one row per run) rather
# than from the params rows (one per param); False reads the rows (bench/bi.py compares both).
PARAMS_FROM_DOCUMENTS = True
FINDING_PAGE = 1000
VIEW_TYPES = {"ACTIVE_ONLY": "active", "DELETED_ONLY": "deleted", "ALL": None}
_TS = pa.timestamp("ms", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RUN_ATTRIBUTES: list[tuple[str, pa.DataType]] = [
    ("run_id", pa.string()),
    ("experiment_id", pa.string()),
    ("name", pa.string()),
    ("status", pa.string()),
    ("start_time", _TS),
    ("end_time", _TS),
    ("user_id", pa.string()),
    ("parent_run_id", pa.string()),
    ("lifecycle_stage", pa.string()),
]
EXPERIMENT_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("experiment_id", pa.string()),
    ("name", pa.string()),
    ("artifact_location", pa.string()),
    ("lifecycle_stage", pa.string()),
    ("creation_time", _TS),
    ("last_update_time", _TS),
]
POINT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("experiment_id", pa.string()),
        ("key", pa.string()),
        ("step", pa.int64()),
        ("timestamp", _TS),
        ("value", pa.float64()),
    ]
)
FINDING_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("run_id", pa.string()),
        ("experiment_id", pa.string()),
        ("kind", pa.string()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("severity", pa.float64()),
        ("metric_key", pa.string()),
        ("message", pa.string()),
        ("body", pa.string()),
    ]
)

# Arrow types of the stakeholder report's columns (services/api/business/repository.py names
# them, every level); a column not listed is text. `timestamp` is ms since the epoch there.
BUSINESS_TYPES: dict[str, pa.DataType] = {
    "version": pa.int64(),
    "step": pa.int64(),
    "timestamp": _TS,
    "value": pa.float64(),
    "versions": pa.int64(),
    "latest_version": pa.int64(),
    "latest_value": pa.float64(),
    "mean": pa.float64(),
    "min": pa.float64(),
    "max": pa.float64(),
    "best_version": pa.int64(),
    "best_value": pa.float64(),
}


@dataclass(frozen=True)
class ExportRequest:
    """What an export selects (all AND-ed)."""

    experiment_ids: list[str] = field(default_factory=list)
    filter: str | None = None
    view_type: str = "ACTIVE_ONLY"
    metric_keys: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    since: int | None = None


@dataclass(frozen=True)
class Export:
    """A table: its schema (known before the first row) and its batches."""

    name: str
    schema: pa.Schema
    batches: AsyncIterator[pa.RecordBatch]


def _lifecycle(view_type: str) -> str | None:
    if view_type not in VIEW_TYPES:
        raise InvalidParameter(f"invalid view_type {view_type!r}: ACTIVE_ONLY, DELETED_ONLY or ALL")
    return VIEW_TYPES[view_type]


def _ms_array(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(_TS)


class ExportService:
    """Builds the export tables for one caller."""

    def __init__(self, pool: asyncpg.Pool[Any], clickhouse: ClickHouse, access: Access) -> None:
        self._pool = pool
        self._ch = clickhouse
        self._access = access

    async def scopes(self, experiment_ids: list[str]) -> list[tuple[str, list[str]]]:
        """(tenant, experiment ids) the caller may read among those asked (all of its own if none)."""
        self._access.require_listing()
        own = self._access.tenant_id
        readable = self._access.readable()
        mine = await repo.experiment_ids(self._pool, own)
        if experiment_ids:
            wanted = set(experiment_ids)
            ids = [e for e in mine if e in wanted]
        else:
            ids = mine
        if readable is not None:
            ids = [e for e in ids if e in readable]
        scopes: list[tuple[str, list[str]]] = [(own, sorted(ids))] if ids else []
        shared: dict[str, list[str]] = {}
        for experiment_id, owner in self._access.shared().items():
            if experiment_id in experiment_ids and experiment_id not in mine:
                shared.setdefault(owner, []).append(experiment_id)
        scopes += [(owner, sorted(ids)) for owner, ids in sorted(shared.items())]
        return scopes

    async def _run_pages(
        self, tenant: str, experiments: list[str], conditions: list[Condition], view_type: str, size: int
    ) -> AsyncIterator[list[str]]:
        token: str | None = None
        while True:
            ids, token = await search_run_ids(
                self._pool, tenant, experiments, conditions, [], view_type, size, token
            )
            if ids:
                yield ids
            if token is None:
                return

    # experiments --------------------------------------------------------------------------

    async def experiments(self, request: ExportRequest) -> Export:
        lifecycle = _lifecycle(request.view_type)
        clauses = experiment_filter.parse_filter(request.filter)
        scopes = await self.scopes(request.experiment_ids)
        tag_keys = sorted(
            {k for t, ids in scopes for k in await repo.experiment_tag_keys(self._pool, t, ids)}
        )
        schema = pa.schema(EXPERIMENT_COLUMNS + [(f"tags.{k}", pa.string()) for k in tag_keys])

        async def batches() -> AsyncIterator[pa.RecordBatch]:
            for tenant, ids in scopes:
                where, args = _experiment_where(clauses, lifecycle)
                after: str | None = None
                while True:
                    rows = await repo.experiments_page(
                        self._pool, tenant, ids, where, args, after, EXPERIMENT_PAGE
                    )
                    if not rows:
                        break
                    after = rows[-1]["experiment_id"]
                    yield _experiment_batch(schema, rows, tag_keys)
                    if len(rows) < EXPERIMENT_PAGE:
                        break

        return Export("experiments", schema, batches())

    # runs (wide) -----------------------------------------------------------------------------

    async def runs(self, request: ExportRequest) -> Export:
        lifecycle = _lifecycle(request.view_type)
        conditions = parse_filter(request.filter)
        scopes = await self.scopes(request.experiment_ids)
        keys: dict[str, list[str]] = {}
        for kind in ("params", "tags", "metrics"):
            found: set[str] = set()
            for tenant, ids in scopes:
                found.update(await repo.keys_in(self._pool, kind, tenant, ids, lifecycle))
            keys[kind] = sorted(found)
        fields = [pa.field(n, t) for n, t in RUN_ATTRIBUTES]
        fields += [pa.field(f"params.{k}", pa.string()) for k in keys["params"]]
        fields += [pa.field(f"tags.{k}", pa.string()) for k in keys["tags"]]
        for k in keys["metrics"]:
            fields += [pa.field(f"metrics.{k}.{s}", pa.float64()) for s in ("latest", "min", "max")]
        schema = pa.schema(fields)

        async def pages() -> AsyncIterator[pa.RecordBatch]:
            for tenant, ids in scopes:
                async for run_ids in self._run_pages_growing(tenant, ids, conditions, request.view_type):
                    yield await self._wide_batch(schema, tenant, run_ids, keys)

        # The next page is read (Postgres, ClickHouse, pivot in a thread) while this one is written.
        return Export("runs", schema, read_ahead(pages()))

    async def _run_pages_growing(
        self, tenant: str, experiments: list[str], conditions: list[Condition], view_type: str
    ) -> AsyncIterator[list[str]]:
        """Pages of run ids: a small first one (the response starts soon), then RUN_PAGE each.

        Ids are searched RUN_ID_PAGE at a time: each search sorts the remaining runs of the
        experiments, so one search per wide page cost a sort per 2,500 runs.
        """
        token: str | None = None
        size = RUN_FIRST_PAGE
        while True:
            ids, token = await search_run_ids(
                self._pool, tenant, experiments, conditions, [], view_type, size, token
            )
            for start in range(0, len(ids), RUN_PAGE):
                yield ids[start : start + RUN_PAGE]
            if token is None:
                return
            size = RUN_ID_PAGE

    async def _wide_batch(
        self, schema: pa.Schema, tenant: str, run_ids: list[str], keys: dict[str, list[str]]
    ) -> pa.RecordBatch:
        """One page of the wide table: five queries at once, then a columnar pivot in a thread."""
        pool = self._pool
        page = await repo.page_literals(pool, tenant, run_ids)
        documents = PARAMS_FROM_DOCUMENTS and bool(keys["params"])
        queries: list[Any] = [
            repo.run_attributes_csv(pool, page),
            repo.run_params_ndjson(pool, page) if documents else _no_csv(),
            *(
                repo.run_values_csv(pool, kind, page)
                if keys[kind] and not (documents and kind == "params")
                else _no_csv()
                for kind in ("params", "tags", "metrics")
            ),
        ]
        if keys["metrics"]:
            queries.append(repo.metric_ranges(self._ch, tenant, run_ids))
        attributes, docs, params, tags, latest, *ranges = await asyncio.gather(*queries)
        return await asyncio.to_thread(
            _assemble_wide,
            schema,
            len(run_ids),
            {kind: pa.array(names, pa.string()) for kind, names in keys.items()},
            attributes,
            {"params": params, "tags": tags, "metrics": latest},
            ranges[0] if ranges else None,
            docs if documents else None,
        )

    # metric points (long) ------------------------------------------------------------------------

    async def metric_points(self, request: ExportRequest) -> Export:
        conditions = parse_filter(request.filter)
        _lifecycle(request.view_type)
        scopes = await self.scopes(request.experiment_ids)

        async def batches() -> AsyncIterator[pa.RecordBatch]:
            for tenant, ids in scopes:
                async for run_ids in self._run_pages(
                    tenant, ids, conditions, request.view_type, POINT_RUN_PAGE
                ):
                    position: list[Any] | None = None
                    while True:
                        table = await repo.points_chunk(
                            self._ch, tenant, run_ids, request.metric_keys, position, POINT_CHUNK
                        )
                        if table.num_rows == 0:
                            break
                        yield _points_batch(table)
                        if table.num_rows < POINT_CHUNK:
                            break
                        position = repo.point_position(table)

        return Export("metric_points", POINT_SCHEMA, batches())

    # findings ------------------------------------------------------------------------------------------

    async def findings(self, request: ExportRequest) -> Export:
        conditions = parse_filter(request.filter)
        _lifecycle(request.view_type)
        scopes = await self.scopes(request.experiment_ids)

        async def pages(
            findings: FindingRepository, experiments: list[str], run_ids: list[str]
        ) -> AsyncIterator[pa.RecordBatch]:
            filters = FindingFilters(
                run_ids=run_ids, experiment_ids=experiments, kinds=request.kinds, since=request.since
            )
            position: tuple[int, str] | None = None
            while True:
                rows = await findings.page(filters, position, FINDING_PAGE)
                if not rows:
                    return
                yield _findings_batch(rows)
                if len(rows) < FINDING_PAGE:
                    return
                position = (rows[-1].micros, rows[-1].finding.event_id)

        async def batches() -> AsyncIterator[pa.RecordBatch]:
            for tenant, ids in scopes:
                findings = FindingRepository(self._pool, self._access.principal).bound_to(tenant)
                if not conditions and request.view_type == "ALL":
                    async for batch in pages(findings, ids, []):
                        yield batch
                    continue
                async for run_ids in self._run_pages(
                    tenant, ids, conditions, request.view_type, FINDING_PAGE
                ):
                    async for batch in pages(findings, ids, run_ids):
                        yield batch

        return Export("findings", FINDING_SCHEMA, batches())


def business_metrics(report: BusinessReport) -> Export:
    """The stakeholder report (GET /reports/business: its rows, columns and order) as a table.

    The rows come from the report's own roll-up, already read (one row per model version and
    business metric at most: small), so there is one batch and nothing to page.
    """
    schema = pa.schema([(name, BUSINESS_TYPES.get(name, pa.string())) for name in report.columns])

    async def batches() -> AsyncIterator[pa.RecordBatch]:
        if report.rows:
            yield pa.RecordBatch.from_pylist(report.rows, schema=schema)

    return Export("business_metrics", schema, batches())


_T = TypeVar("_T")
_END: Any = object()


async def read_ahead(items: AsyncIterator[_T]) -> AsyncIterator[_T]:
    """`items`, the next one read (in a task) while the consumer handles the current one.

    At most two items exist at a time, the one handed out and the one being read, so memory
    stays at two pages. Errors come out where their item would have; closing this iterator
    (a client gone) cancels the read under way.
    """
    pending = asyncio.ensure_future(anext(items, _END))
    try:
        while True:
            item = await pending
            if item is _END:
                return
            pending = asyncio.ensure_future(anext(items, _END))
            yield item
    finally:
        if not pending.done():
            pending.cancel()
            with suppress(asyncio.CancelledError):
                await pending
        close = getattr(items, "aclose", None)
        if close is not None:  # a generator left mid-way: run its cleanup now, not at collection
            await close()


async def _no_csv() -> bytes:
    return b""


_ATTRIBUTE_CSV = ["i", *(name for name, _ in RUN_ATTRIBUTES)]
_ATTRIBUTE_TYPES = {"i": pa.int64(), "start_time": pa.int64(), "end_time": pa.int64()} | {
    name: type_ for name, type_ in RUN_ATTRIBUTES if type_ != _TS
}


def _read_csv(data: bytes, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    """COPY's CSV as Arrow: unquoted empty = NULL, "" = empty string, NaN/Infinity are numbers."""
    if not data:
        return pa.table({n: pa.array([], types[n]) for n in names})
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def _positions(found: pa.Array) -> np.ndarray[Any, np.dtype[np.int64]]:
    """index_in's result as int64, -1 where absent."""
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _cells(rows: np.ndarray[Any, Any], keys: np.ndarray[Any, Any], n: int) -> tuple[Any, Any]:
    """(which long rows have a cell, their cell index key * n + row), dropping unknown rows/keys."""
    valid = (rows >= 0) & (keys >= 0)
    return np.flatnonzero(valid), keys[valid] * n + rows[valid]


def _assemble_wide(
    schema: pa.Schema,
    asked: int,
    keys: dict[str, pa.Array],
    attributes_csv: bytes,
    values_csv: dict[str, bytes],
    ranges: pa.Table | None,
    params_ndjson: bytes | None = None,
) -> pa.RecordBatch:
    """A wide page from the long rows, column by column with numpy and Arrow kernels.

    Each kind's cells are scattered into one (keys x runs) grid: a `take` for strings (null
    where no value), float arrays with a validity mask for metrics; each column is a slice.
    With `params_ndjson` (run_params_ndjson's lines), params come from the runs' documents:
    one struct column, its rows put in the page's order by one `take`.
    """
    attributes = _read_csv(attributes_csv, _ATTRIBUTE_CSV, _ATTRIBUTE_TYPES)
    n = attributes.num_rows
    # position in the asked ids (from 1) -> row of this page; -1 for a run gone meanwhile
    row_of = np.full(asked + 1, -1, dtype=np.int64)
    row_of[attributes.column("i").to_numpy()] = np.arange(n)
    arrays: list[pa.Array] = []
    for name, type_ in RUN_ATTRIBUTES:
        column = attributes.column(name).combine_chunks()
        arrays.append(column.cast(_TS) if type_ == _TS else column)
    long: dict[str, tuple[pa.Table, Any, Any]] = {}
    for kind, names in keys.items():
        if len(names) and not (kind == "params" and params_ndjson is not None):
            table = _read_csv(values_csv[kind], ["i", "key", "value"], _LONG_TYPES[kind])
            rows = row_of[table.column("i").to_numpy()]
            # a key logged since the columns were chosen has no column: index_in leaves it null
            long[kind] = (table, *_cells(rows, _positions(pc.index_in(table.column("key"), names)), n))
    for kind in ("params", "tags"):
        m = len(keys[kind])
        if not m:
            continue
        if kind == "params" and params_ndjson is not None:
            arrays += _params_from_documents(params_ndjson, keys["params"], row_of, n)
            continue
        table, source, cells = long[kind]
        take = np.full(m * n, -1, dtype=np.int64)
        take[cells] = source
        grid = table.column("value").combine_chunks().take(pa.array(take, mask=take < 0))
        arrays += [grid.slice(j * n, n) for j in range(m)]
    m = len(keys["metrics"])
    if m:
        table, source, cells = long["metrics"]
        latest, has_latest = np.full(m * n, np.nan), np.zeros(m * n, dtype=bool)
        latest[cells] = table.column("value").to_numpy()[source]
        has_latest[cells] = True
        low, high = np.full(m * n, np.nan), np.full(m * n, np.nan)
        has_range = np.zeros(m * n, dtype=bool)
        if ranges is not None and ranges.num_rows:
            source, cells = _cells(
                _positions(pc.index_in(ranges.column("run_id"), value_set=attributes.column("run_id"))),
                _positions(pc.index_in(ranges.column("key"), value_set=keys["metrics"])),
                n,
            )
            low[cells] = ranges.column("lo").to_numpy()[source]
            high[cells] = ranges.column("hi").to_numpy()[source]
            has_range[cells] = True
        for j in range(m):
            cut = slice(j * n, (j + 1) * n)
            arrays.append(pa.array(latest[cut], pa.float64(), mask=~has_latest[cut]))
            arrays.append(pa.array(low[cut], pa.float64(), mask=~has_range[cut]))
            arrays.append(pa.array(high[cut], pa.float64(), mask=~has_range[cut]))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _params_from_documents(
    data: bytes, names: pa.Array, row_of: np.ndarray[Any, Any], n: int
) -> list[pa.Array]:
    """The params columns of a page (in `names` order) from its NDJSON documents.

    pyarrow's JSON reader, with every key a string field of the schema, builds the columns
    directly; keys logged since the columns were chosen are ignored, missing ones are null.
    """
    fields = [pa.field(name, pa.string()) for name in names.to_pylist()]
    struct = pa.struct(fields)
    if data:
        table = pajson.read_json(
            io.BytesIO(data),
            # one block: a line (one run's params) may be larger than the default 1 MB block
            read_options=pajson.ReadOptions(use_threads=False, block_size=len(data) + 1),
            parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema([("i", pa.int64()), ("p", struct)]),
                unexpected_field_behavior="ignore",
            ),
        )
        rows = row_of[table.column("i").to_numpy()]
        take = np.full(n, -1, dtype=np.int64)  # page row -> document line, -1 for none
        valid = rows >= 0
        take[rows[valid]] = np.flatnonzero(valid)
        docs = table.column("p").combine_chunks().take(pa.array(take, mask=take < 0))
    else:  # no run of the page left
        docs = pa.nulls(n, struct)
    # One (keys x runs) grid, each column a slice of it, as the long rows give: Arrow IPC
    # writes the buffers as laid out, so this keeps that format's bytes too.
    grid = pa.concat_arrays(docs.flatten())
    return [grid.slice(j * n, n) for j in range(len(fields))]


_LONG_TYPES = {
    "params": {"i": pa.int64(), "key": pa.string(), "value": pa.string()},
    "tags": {"i": pa.int64(), "key": pa.string(), "value": pa.string()},
    "metrics": {"i": pa.int64(), "key": pa.string(), "value": pa.float64()},
}


_SQL_OPS = {
    "=": "=",
    "!=": "<>",
    "<": "<",
    ">": ">",
    "<=": "<=",
    ">=": ">=",
    "LIKE": "LIKE",
    "ILIKE": "ILIKE",
}


def _experiment_where(
    clauses: list[experiment_filter.Clause], lifecycle: str | None
) -> tuple[str, list[Any]]:
    """SQL over experiments e (parameters from $5: the page query binds $1-$4)."""
    args: list[Any] = []
    parts: list[str] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args) + 4}"

    if lifecycle is not None:
        parts.append(f"e.lifecycle_stage = {param(lifecycle)}::text")
    for clause in clauses:
        op = _SQL_OPS[clause.op]
        value = param(clause.value)
        if clause.column is not None:  # a fixed column name from the grammar, never user text
            parts.append(f"e.{clause.column} {op} {value}")
        else:
            parts.append(
                "EXISTS (SELECT 1 FROM experiment_tags t WHERE t.tenant_id = e.tenant_id"
                f" AND t.experiment_id = e.experiment_id AND t.key = {param(clause.tag)}::text"
                f" AND t.value {op} {value})"
            )
    return " AND ".join(parts) or "TRUE", args


def _experiment_batch(schema: pa.Schema, rows: list[asyncpg.Record], tag_keys: list[str]) -> pa.RecordBatch:
    arrays: list[pa.Array] = []
    for name, type_ in EXPERIMENT_COLUMNS:
        values = [r[name] for r in rows]
        arrays.append(_ms_array(values) if type_ == _TS else pa.array(values, type_))
    tags = [dict(zip(r["tag_keys"], r["tag_values"], strict=True)) for r in rows]
    arrays += [pa.array([t.get(k) for t in tags], pa.string()) for k in tag_keys]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _points_batch(table: pa.Table) -> pa.RecordBatch:
    columns = [table.column(name).cast(POINT_SCHEMA.field(name).type) for name in POINT_SCHEMA.names]
    return pa.Table.from_arrays(columns, schema=POINT_SCHEMA).combine_chunks().to_batches()[0]


def _findings_batch(rows: list[Any]) -> pa.RecordBatch:
    findings = [r.finding for r in rows]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f.event_id for f in findings], pa.string()),
            pa.array([f.run_id for f in findings], pa.string()),
            pa.array([f.experiment_id for f in findings], pa.string()),
            pa.array([f.kind for f in findings], pa.string()),
            pa.array([_EPOCH + timedelta(microseconds=r.micros) for r in rows], pa.timestamp("us", tz="UTC")),
            pa.array([f.severity for f in findings], pa.float64()),
            pa.array(
                [f.body.get("key") if isinstance(f.body.get("key"), str) else None for f in findings],
                pa.string(),
            ),
            pa.array([f.message for f in findings], pa.string()),
            pa.array([orjson.dumps(f.body).decode() for f in findings], pa.string()),
        ],
        schema=FINDING_SCHEMA,
    )
