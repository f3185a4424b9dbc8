"""The cluster DDL agrees with the single-node DDL, as the ClickHouse engine itself reads them.

Every statement is parsed and re-formatted by chdb (`formatQuery`), which fails on a
syntax error; columns, sort keys, partitioning and TTLs are then read back out of the
*formatted* text, never from the declarations, so a rendering bug cannot hide
behind the code that produced it. The checked-in deploy/clickhouse/cluster.sql must
equal the rendering (drift test). Finally the cluster DDL is executed by chdb configured
with the cluster, macros and an in-memory Keeper, and the engine's own catalog
(system.tables / columns / replicas) is compared with the single-node tables.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runledger.stores.clickhouse.tables import (
    ALL_TABLES,
    ALL_VIEWS,
    CLUSTER,
    DEDUP_WINDOW_SECONDS,
    METRIC_POINTS,
    METRIC_ROLLUP,
    METRIC_ROLLUP_MV,
    Column,
    MaterializedView,
    Table,
    cluster_schema_sql,
    render_cluster_schema,
    replicated_engine,
)
from services.ingest.replay import CLICKHOUSE_PROJECTIONS, truncate_statements

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SQL = REPO / "deploy" / "clickhouse" / "cluster.sql"
DB = "runledger"


class Formatter:
    """chdb's formatQuery: ClickHouse's own parser and formatter, nothing executed."""

    def __init__(self, path: Path) -> None:
        from chdb import session

        self._session = session.Session(str(path))

    def format(self, statement: str) -> str:
        """The canonical multi-line form of statement; raises on a syntax error."""
        # Query parameter values are read in the escaped (TSV) form: a raw newline
        # would end the value.
        escaped = statement.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
        result = self._session.query(
            "SELECT formatQuery({q:String})", "TabSeparatedRaw", params={"q": escaped}
        )
        # TabSeparatedRaw escapes nothing; a formatted query never contains a tab.
        return str(result.bytes().decode()).rstrip("\n")

    def close(self) -> None:
        self._session.close()


@pytest.fixture(scope="module")
def fmt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Formatter]:
    formatter = Formatter(tmp_path_factory.mktemp("chdb-format"))
    yield formatter
    formatter.close()


@dataclass(frozen=True)
class ParsedTable:
    """What a formatted CREATE TABLE defines, read from its text."""

    name: str
    on_cluster: str | None
    columns: tuple[tuple[str, str, str], ...]  # (name, type, codec or "")
    engine: str
    order_by: str | None
    partition_by: str | None
    ttl: str | None
    settings: str | None


_HEADER = re.compile(r"^CREATE TABLE IF NOT EXISTS (?P<name>\S+)(?: ON CLUSTER (?P<cluster>\S+))?$")
_COLUMN = re.compile(r"^`(?P<name>[^`]+)` (?P<rest>.+?),?$")
_CLAUSES = ("ENGINE = ", "ORDER BY ", "PARTITION BY ", "TTL ", "SETTINGS ")


def _split_codec(rest: str) -> tuple[str, str]:
    """`Type CODEC(a, b)` -> (Type, `a, b`); the codec is the last top-level clause."""
    idx = rest.rfind(" CODEC(")
    if idx < 0:
        return rest, ""
    assert rest.endswith(")"), rest
    return rest[:idx], rest[idx + len(" CODEC(") : -1]


def parse_create_table(formatted: str) -> ParsedTable:
    """Read a formatQuery'd CREATE TABLE: header line, `(`, one column per line, `)`, clauses."""
    lines = formatted.split("\n")
    header = _HEADER.match(lines[0])
    assert header is not None, lines[0]
    assert lines[1] == "(", formatted
    end = lines.index(")")
    columns = []
    for line in lines[2:end]:
        col = _COLUMN.match(line.strip())
        assert col is not None, line
        type_, codec = _split_codec(col["rest"])
        columns.append((col["name"], type_, codec))
    clauses: dict[str, str] = {}
    for line in lines[end + 1 :]:
        prefix = next((p for p in _CLAUSES if line.startswith(p)), None)
        assert prefix is not None, f"unexpected clause line {line!r} in\n{formatted}"
        clauses[prefix.strip(" =")] = line[len(prefix) :]
    return ParsedTable(
        name=header["name"],
        on_cluster=header["cluster"],
        columns=tuple(columns),
        engine=clauses["ENGINE"],
        order_by=clauses.get("ORDER BY"),
        partition_by=clauses.get("PARTITION BY"),
        ttl=clauses.get("TTL"),
        settings=clauses.get("SETTINGS"),
    )


def _settings(clause: str | None) -> dict[str, str]:
    """`a = 1, b = 'x'` -> {a: 1, b: 'x'} (the values RunLedger uses hold no commas)."""
    settings: dict[str, str] = {}
    for item in (clause or "").split(", "):
        if item:
            key, _, value = item.partition(" = ")
            settings[key] = value
    return settings


def _engine_parts(engine: str) -> tuple[str, list[str]]:
    """`Name(a, 'b', f(c, d))` -> (Name, [a, 'b', f(c, d)]), splitting on top-level commas."""
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", engine)
    assert match is not None, engine
    args: list[str] = []
    depth, current = 0, ""
    for ch in match[2] or "":
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        depth += ch in "("
        depth -= ch in ")"
        current += ch
    if current.strip():
        args.append(current.strip())
    return match[1], args


# A table using every clause the renderers support, so that partitioning, TTLs and
# engine arguments are compared too (the shipped tables use none of them today).
_FULL = Table(
    name="probe",
    columns=(
        Column("tenant_id", "LowCardinality(String)"),
        Column("run_id", "String"),
        Column("at", "DateTime64(3, 'UTC')", "Delta, ZSTD(1)"),
        Column("value", "Float64", "Gorilla"),
        Column("version", "UInt64"),
    ),
    engine="ReplacingMergeTree(version)",
    order_by=("tenant_id", "run_id", "at"),
    partition_by="toYYYYMM(at)",
    ttl="toDateTime(at) + INTERVAL 90 DAY DELETE",
    settings={"non_replicated_deduplication_window": 100, "index_granularity": 8192},
    sharding_key="cityHash64(tenant_id, run_id)",
)
TABLES = (*ALL_TABLES, _FULL)


def test_every_rendered_statement_parses(fmt: Formatter) -> None:
    statements = [t.render_single_node(DB) for t in ALL_TABLES]
    statements += [v.render_single_node(DB) for v in ALL_VIEWS]
    statements += render_cluster_schema(DB, CLUSTER)
    statements += [*_FULL.render_cluster(DB, CLUSTER), _FULL.render_single_node(DB)]
    for statement in statements:
        assert fmt.format(statement).startswith("CREATE ")


def test_formatter_rejects_bad_sql(fmt: Formatter) -> None:
    # The checks above mean something only if a syntax error does fail.
    with pytest.raises(Exception, match=r"SYNTAX_ERROR|Syntax error"):
        fmt.format("CREATE TABLE x (a Int) ENGIN = MergeTree ORDER BY a")


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_local_table_matches_single_node(fmt: Formatter, table: Table) -> None:
    single = parse_create_table(fmt.format(table.render_single_node(DB)))
    local_stmt, _ = table.render_cluster(DB, CLUSTER)
    local = parse_create_table(fmt.format(local_stmt))

    assert single.name == f"{DB}.{table.name}" and single.on_cluster is None
    assert local.name == f"{DB}.{table.name}_local" and local.on_cluster == CLUSTER
    assert local.columns == single.columns  # names, types and codecs, in order
    assert local.order_by == single.order_by
    assert local.partition_by == single.partition_by
    assert local.ttl == single.ttl

    single_engine, single_args = _engine_parts(single.engine)
    local_engine, local_args = _engine_parts(local.engine)
    assert single_engine.endswith("MergeTree")
    assert local_engine == "Replicated" + single_engine
    assert local_args == ["'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'", *single_args]

    # The single-node dedup window becomes the replicated one: same size, and kept
    # for a week (a replicated window also expires by age, 1 hour by default).
    single_settings, local_settings = _settings(single.settings), _settings(local.settings)
    window = single_settings.pop("non_replicated_deduplication_window", None)
    if window is not None:
        single_settings["replicated_deduplication_window"] = window
        single_settings["replicated_deduplication_window_seconds"] = str(DEDUP_WINDOW_SECONDS)
    assert local_settings == single_settings


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_distributed_table_fronts_the_local_table(fmt: Formatter, table: Table) -> None:
    single = parse_create_table(fmt.format(table.render_single_node(DB)))
    _, dist_stmt = table.render_cluster(DB, CLUSTER)
    dist = parse_create_table(fmt.format(dist_stmt))

    assert dist.name == f"{DB}.{table.name}" and dist.on_cluster == CLUSTER
    # Same names and types as the storage; no codecs (a Distributed table stores nothing).
    assert [(n, t) for n, t, _ in dist.columns] == [(n, t) for n, t, _ in single.columns]
    assert all(codec == "" for _, _, codec in dist.columns)
    assert dist.order_by is None and dist.ttl is None

    engine, args = _engine_parts(dist.engine)
    assert engine == "Distributed"
    assert args[:3] == [CLUSTER, DB, f"{table.name}_local"]
    # The sharding key hashes columns of the table (and nothing else).
    sharding_key = args[3]
    assert sharding_key.startswith("cityHash64(") or sharding_key == "rand()"
    used = set(re.findall(r"\b([a-z_]+)\b(?!\()", sharding_key))
    assert used <= {name for name, _, _ in single.columns}, sharding_key


def test_series_tables_are_sharded_by_tenant_and_run(fmt: Formatter) -> None:
    # One series on one shard: run-scoped reads touch one shard, and the rollup of a
    # run's points is written on the shard that holds them.
    for table in (METRIC_POINTS, METRIC_ROLLUP):
        _, dist_stmt = table.render_cluster(DB, CLUSTER)
        _, args = _engine_parts(parse_create_table(fmt.format(dist_stmt)).engine)
        assert args[3] == "cityHash64(tenant_id, run_id)"


def _view_parts(formatted: str) -> tuple[str, str | None, str, str]:
    """(view name, cluster, target, `AS SELECT ...` body) of a formatted CREATE MATERIALIZED VIEW."""
    header, _, body = formatted.partition("\n")
    match = re.fullmatch(
        r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\S+)(?: ON CLUSTER (\S+))? TO (\S+)", header
    )
    assert match is not None, header
    return match[1], match[2], match[3], body


@pytest.mark.parametrize("view", ALL_VIEWS, ids=lambda v: v.name)
def test_view_reads_and_writes_local_tables_on_each_shard(fmt: Formatter, view: MaterializedView) -> None:
    s_name, s_cluster, s_target, s_body = _view_parts(fmt.format(view.render_single_node(DB)))
    c_name, c_cluster, c_target, c_body = _view_parts(fmt.format(view.render_cluster(DB, CLUSTER)))

    assert c_name == s_name == f"{DB}.{view.name}"
    assert s_cluster is None and c_cluster == CLUSTER
    assert s_target == f"{DB}.{view.target.name}"
    assert c_target == f"{DB}.{view.target.name}_local"
    source, local_source = f"FROM {DB}.{view.source.name}\n", f"FROM {DB}.{view.source.name}_local\n"
    assert source in s_body and local_source in c_body
    # Otherwise the same query, as the engine formats it.
    assert c_body == s_body.replace(source, local_source)


def test_view_refuses_unlike_sharding() -> None:
    target = Table(
        name="t", columns=METRIC_ROLLUP.columns, engine="AggregatingMergeTree", order_by=("tenant_id",)
    )
    view = MaterializedView(name="mv", source=METRIC_POINTS, target=target, select=METRIC_ROLLUP_MV.select)
    with pytest.raises(ValueError, match="sharded alike"):
        view.render_cluster(DB, CLUSTER)


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        ("MergeTree", "ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')"),
        (
            "ReplacingMergeTree(version, is_deleted)",
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}',"
            " version, is_deleted)",
        ),
        (
            "AggregatingMergeTree()",
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')",
        ),
    ],
)
def test_replicated_engine_keeps_arguments(engine: str, expected: str) -> None:
    assert replicated_engine(engine) == expected


@pytest.mark.parametrize("engine", ["Memory", "Log", "ReplicatedMergeTree('/p', '{replica}')", "MergeTree(("])
def test_replicated_engine_rejects_what_cannot_be_replicated(engine: str) -> None:
    with pytest.raises(ValueError):
        replicated_engine(engine)


def test_cluster_schema_order_and_names() -> None:
    statements = render_cluster_schema(DB, CLUSTER)
    assert statements[0] == f"CREATE DATABASE IF NOT EXISTS {DB} ON CLUSTER {CLUSTER}"
    assert all("IF NOT EXISTS" in s and f"ON CLUSTER {CLUSTER}" in s for s in statements)
    # Views last: they need their local source and target to exist.
    assert all("MATERIALIZED VIEW" in s for s in statements[-len(ALL_VIEWS) :])
    # The application's names are the Distributed tables, as in the single-node schema.
    for table in ALL_TABLES:
        created = [s.split("\n")[0] for s in statements if f"{DB}.{table.name} ON CLUSTER" in s]
        assert len(created) == 1


def test_checked_in_cluster_sql_matches_the_declarations() -> None:
    expected = cluster_schema_sql(DB, CLUSTER)
    assert CLUSTER_SQL.read_text() == expected, (
        "deploy/clickhouse/cluster.sql is stale; regenerate it with:\n"
        'python -c "from pathlib import Path; from runledger.stores.clickhouse.tables import '
        "write_cluster_schema; write_cluster_schema(Path('deploy/clickhouse/cluster.sql'))\""
    )


def test_checked_in_cluster_sql_splits_into_the_statements(fmt: Formatter) -> None:
    # clickhouse-client --multiquery splits on `;`: the file must yield exactly the
    # rendered statements, each parseable (comments before the first are skipped).
    body = "\n".join(line for line in CLUSTER_SQL.read_text().splitlines() if not line.startswith("--"))
    parts = [p.strip() for p in body.split(";") if p.strip()]
    assert parts == render_cluster_schema(DB, CLUSTER)
    for part in parts:
        fmt.format(part)


# Runs in a child process: chdb with a config defining the cluster, the macros and an
# in-memory Keeper ("testkeeper") executes the cluster DDL for real. ON CLUSTER is
# dropped (no distributed DDL queue in an embedded engine), everything else runs as
# written. The child leaves through os._exit: closing a chdb session that has used
# testkeeper hangs.
_EXECUTE = """
import json, os, sys
from chdb import session
from runledger.stores.clickhouse.tables import ALL_TABLES, ALL_VIEWS, render_cluster_schema
s = session.Session(sys.argv[1] + "?config-file=" + sys.argv[2])
def rows(sql):
    return [line.split("\\t") for line in str(s.query(sql, "TabSeparatedRaw")).splitlines() if line]
for stmt in render_cluster_schema("runledger", "runledger"):
    s.query(stmt.replace(" ON CLUSTER runledger", ""))
# The services' own start-up migration (single-node DDL) must leave the cluster tables alone.
for table in ALL_TABLES:
    s.query(table.render_single_node("runledger"))
for view in ALL_VIEWS:
    s.query(view.render_single_node("runledger"))
# The same declarations on one node, to compare what the engine made of both.
s.query("CREATE DATABASE single")
for table in ALL_TABLES:
    s.query(table.render_single_node("single"))
for view in ALL_VIEWS:
    s.query(view.render_single_node("single"))
out = {
    "tables": rows("SELECT database, name, engine, sorting_key, engine_full FROM system.tables"
                   " WHERE database IN ('runledger', 'single') ORDER BY database, name"),
    "columns": rows("SELECT database, table, name, type, compression_codec FROM system.columns"
                    " WHERE database IN ('runledger', 'single') ORDER BY database, table, position"),
    "replicas": rows("SELECT table, zookeeper_path, replica_name FROM system.replicas ORDER BY table"),
    "views": rows("SELECT name, replaceAll(create_table_query, '\\n', ' ') FROM system.tables"
                  " WHERE database = 'runledger' AND engine = 'MaterializedView'"),
}
print(json.dumps(out), flush=True)
os._exit(0)
"""

_CONFIG = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><runledger><shard><internal_replication>true</internal_replication>
    <replica><host>127.0.0.1</host><port>9000</port></replica>
  </shard></runledger></remote_servers>
  <macros><shard>01</shard><replica>node-a</replica></macros>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
</clickhouse>
"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[str]]]:
    """What the ClickHouse engine created from the cluster DDL (see _EXECUTE)."""
    root = tmp_path_factory.mktemp("chdb-cluster")
    config = root / "config.xml"
    config.write_text(_CONFIG)
    result = subprocess.run(
        [sys.executable, "-c", _EXECUTE, str(root / "data"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out: dict[str, list[list[str]]] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_cluster_ddl_executes_in_the_engine(executed: dict[str, list[list[str]]]) -> None:
    engines = {(db, name): engine for db, name, engine, _, _ in executed["tables"]}
    for table in ALL_TABLES:
        single = engines["single", table.name]
        assert engines["runledger", f"{table.name}_local"] == "Replicated" + single
        # Still Distributed after the single-node migration ran over it.
        assert engines["runledger", table.name] == "Distributed"
    for view in ALL_VIEWS:
        assert engines["runledger", view.name] == "MaterializedView"
    # Macros expanded per node: one Keeper path per shard and table.
    assert executed["replicas"] == [
        [f"{t.name}_local", f"/clickhouse/tables/01/runledger/{t.name}_local", "node-a"]
        for t in sorted(ALL_TABLES, key=lambda t: t.name)
    ]


def test_engine_sees_the_same_columns_and_keys(executed: dict[str, list[list[str]]]) -> None:
    columns: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for db, table_name, name, type_, codec in executed["columns"]:
        columns.setdefault((db, table_name), []).append((name, type_, codec))
    keys = {(db, name): key for db, name, _, key, _ in executed["tables"]}
    for table in ALL_TABLES:
        single = columns["single", table.name]
        assert columns["runledger", f"{table.name}_local"] == single
        assert [(n, t) for n, t, _ in columns["runledger", table.name]] == [(n, t) for n, t, _ in single]
        assert keys["runledger", f"{table.name}_local"] == keys["single", table.name]


def test_engine_view_reads_and_writes_local_tables(executed: dict[str, list[list[str]]]) -> None:
    views = {name: query for name, query in executed["views"]}
    for view in ALL_VIEWS:
        query = views[view.name]
        assert f"TO runledger.{view.target.name}_local " in query, query
        assert f"FROM runledger.{view.source.name}_local " in query, query


def test_replay_truncates_the_shards_local_tables_on_the_cluster(
    executed: dict[str, list[list[str]]], fmt: Formatter
) -> None:
    # The engine's own catalog of the cluster schema: the Distributed names are fronts.
    catalog = [(name, engine, full) for db, name, engine, _, full in executed["tables"] if db == DB]
    statements = truncate_statements(catalog, DB)
    assert statements == [
        f"TRUNCATE TABLE IF EXISTS {DB}.{table}_local ON CLUSTER {CLUSTER} SYNC"
        for table in CLICKHOUSE_PROJECTIONS
    ]
    for statement in statements:
        fmt.format(statement)
    # One node: the tables themselves.
    single = [(name, engine, full) for db, name, engine, _, full in executed["tables"] if db == "single"]
    assert truncate_statements(single, "single") == [
        f"TRUNCATE TABLE IF EXISTS single.{table}" for table in CLICKHOUSE_PROJECTIONS
    ]
