"""ClickHouse tables, each declared once; the DDL is rendered from the declaration.

The single-node rendering serves chdb (embedded) and a lone ClickHouse server. The
cluster rendering (Replicated* local tables + Distributed tables over them, all
`ON CLUSTER`) comes from the same declarations, so no SQL is written twice; it is
checked in as deploy/clickhouse/cluster.sql (`write_cluster_schema`), and a test
fails when that file drifts from the declarations.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runledger.retention import DEFAULT_METRIC_POINTS_DAYS, TTL_GRACE_DAYS

# Name of the cluster in the servers' <remote_servers> (deploy/compose/clickhouse/).
CLUSTER = "runledger"

# Keeper path of each replicated table: one znode tree per shard and table. The
# {shard}/{replica} macros come from each server's <macros>; {database}/{table} are
# ClickHouse's built-in macros, expanded when the table is created.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"

# Suffix of the per-shard storage tables; the Distributed table over them keeps the
# declared name, so application SQL reads and writes the same names in both modes.
LOCAL_SUFFIX = "_local"

# `Name` or `Name(args)`; args keep their own parentheses (e.g. a version column).
_ENGINE = re.compile(r"^\s*(?P<name>[A-Za-z]+)\s*(?:\((?P<args>.*)\))?\s*$", re.DOTALL)

# Deduplication of non-replicated tables is opt-in per table; replicated tables
# keep a window of block hashes (and insert tokens) in Keeper instead.
_NON_REPLICATED_DEDUP = "non_replicated_deduplication_window"
_REPLICATED_DEDUP = "replicated_deduplication_window"
# A replicated window also expires by age (1 hour by default), which a count-bounded
# non-replicated one never does; a batch left pending by a crashed projector may be
# re-sent after a longer outage than that, so tokens are kept for the events
# topic's retention (7 days).
_REPLICATED_DEDUP_SECONDS = "replicated_deduplication_window_seconds"
DEDUP_WINDOW_SECONDS = 7 * 24 * 3600


def replicated_engine(engine: str) -> str:
    """`XMergeTree(args)` -> `ReplicatedXMergeTree('<path>', '{replica}', args)`.

    Raises ValueError for an engine outside the MergeTree family (it cannot be
    replicated) or one already replicated (its path would be given twice).
    """
    match = _ENGINE.match(engine)
    if match is None or not match["name"].endswith("MergeTree"):
        raise ValueError(f"not a MergeTree-family engine: {engine!r}")
    name = match["name"]
    if name.startswith("Replicated"):
        raise ValueError(f"engine is already replicated: {engine!r}")
    args = [f"'{REPLICA_PATH}'", f"'{REPLICA_NAME}'"]
    if match["args"] and match["args"].strip():
        args.append(match["args"].strip())
    return f"Replicated{name}({', '.join(args)})"


@dataclass(frozen=True)
class Column:
    """One column: name, ClickHouse type, optional DEFAULT expression and codec."""

    name: str
    type: str
    codec: str = ""
    # A column added after its table first shipped needs one: existing rows (and inserts
    # that do not name it) read the default.
    default: str = ""
    # The DEFAULT is not a constant (now()): the rows that exist when the column is added
    # must store the value of that moment (MATERIALIZE COLUMN), or they would read a new
    # one at every query and merge (a TTL on the column would then never fire).
    materialize: bool = False

    def render(self) -> str:
        """`name Type [DEFAULT expr] [CODEC(...)]`."""
        default = f" DEFAULT {self.default}" if self.default else ""
        codec = f" CODEC({self.codec})" if self.codec else ""
        return f"`{self.name}` {self.type}{default}{codec}"


@dataclass(frozen=True)
class Table:
    """A table declaration: enough to render its DDL for any deployment."""

    name: str
    columns: tuple[Column, ...]
    engine: str
    order_by: tuple[str, ...]
    partition_by: str = ""
    ttl: str = ""
    settings: Mapping[str, str | int] = field(default_factory=dict)
    # Which shard a row goes to in a cluster. rand() spreads rows evenly but scatters
    # a run over every shard; the declared tables shard by (tenant, run) instead, so
    # one series lives on one shard and a tenant/run-scoped read can skip the others.
    sharding_key: str = "rand()"

    @property
    def column_names(self) -> list[str]:
        """Names of the columns in declaration order."""
        return [c.name for c in self.columns]

    @property
    def local_name(self) -> str:
        """Name of the per-shard storage table in a cluster."""
        return self.name + LOCAL_SUFFIX

    def _storage_clauses(self, engine: str, settings: Mapping[str, str | int]) -> list[str]:
        """ENGINE, PARTITION BY, ORDER BY, TTL and SETTINGS lines, in that order."""
        parts = [f"ENGINE = {engine}"]
        if self.partition_by:
            parts.append(f"PARTITION BY {self.partition_by}")
        parts.append(f"ORDER BY ({', '.join(self.order_by)})")
        if self.ttl:
            parts.append(f"TTL {self.ttl}")
        if settings:
            parts.append("SETTINGS " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
        return parts

    def _cluster_settings(self) -> dict[str, str | int]:
        # The single-node dedup window becomes the replicated one (same size, and
        # kept as long), so a re-sent batch with the same insert token stays a no-op
        # on the cluster.
        settings: dict[str, str | int] = {}
        for key, value in self.settings.items():
            if key == _NON_REPLICATED_DEDUP:
                settings[_REPLICATED_DEDUP] = value
                settings[_REPLICATED_DEDUP_SECONDS] = DEDUP_WINDOW_SECONDS
            else:
                settings[key] = value
        return settings

    def render_cluster(self, database: str, cluster: str) -> list[str]:
        """CREATE TABLE statements for a cluster: the replicated local table, then the Distributed one.

        `<name>_local` (Replicated<engine>, same columns, keys and TTL) stores each
        shard's rows; `<name>` is a Distributed table over it, sharded by
        `sharding_key`, which is what the application reads and inserts into.
        """
        cols = ",\n  ".join(c.render() for c in self.columns)
        local = "\n".join(
            [
                f"CREATE TABLE IF NOT EXISTS {database}.{self.local_name} ON CLUSTER {cluster} (\n  {cols}\n)",
                *self._storage_clauses(replicated_engine(self.engine), self._cluster_settings()),
            ]
        )
        # The Distributed table stores nothing: its columns carry no codecs (defaults, yes:
        # an insert that omits a column gets it filled there).
        dist_cols = ",\n  ".join(Column(c.name, c.type, default=c.default).render() for c in self.columns)
        distributed = (
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name} ON CLUSTER {cluster} (\n  {dist_cols}\n)\n"
            f"ENGINE = Distributed({cluster}, {database}, {self.local_name}, {self.sharding_key})"
        )
        return [local, distributed]

    def render_upgrade(
        self,
        database: str,
        existing_columns: Collection[str],
        existing_ttl: str,
        unmaterialized: Collection[str] = (),
        existing_settings: Mapping[str, str] | None = None,
    ) -> list[str]:
        """ALTER statements that bring an existing single-node table to this declaration.

        There is no migration framework: CREATE TABLE IF NOT EXISTS leaves a table created by
        an older version as it was, so columns declared since are added (each has a DEFAULT),
        those with `materialize` are then written into the existing rows, and a changed TTL
        is set, in that order (the TTL may read the added columns). `existing_ttl` is the
        table's TTL as ClickHouse formats it (system.tables), compared with the declaration
        after removing whitespace. `unmaterialized` names the existing columns some active
        part lacks (an upgrade interrupted between ADD and MATERIALIZE): they are
        materialized again, which fills only those parts. `existing_settings` (the table's
        SETTINGS clause; None: not compared) gets the declared settings it lacks or differs in.
        """
        added: list[str] = []
        materialized: list[str] = []
        previous = ""
        for column in self.columns:
            if column.name not in existing_columns:
                after = f" AFTER `{previous}`" if previous else " FIRST"
                added.append(
                    f"ALTER TABLE {database}.{self.name} ADD COLUMN IF NOT EXISTS {column.render()}{after}"
                )
            if column.materialize and (column.name not in existing_columns or column.name in unmaterialized):
                # Synchronous: the TTL set next must see the stored values, not now().
                materialized.append(
                    f"ALTER TABLE {database}.{self.name} MATERIALIZE COLUMN `{column.name}`"
                    " SETTINGS mutations_sync = 2"
                )
            previous = column.name
        statements = added + materialized
        if self.ttl and _squash(existing_ttl) != _squash(self.ttl):
            # Materialized at once on every part (materialize_ttl_after_modify): a one-time
            # rewrite, after which expired rows are gone.
            statements.append(f"ALTER TABLE {database}.{self.name} MODIFY TTL {self.ttl}")
        if existing_settings is not None:
            changed = {k: v for k, v in self.settings.items() if existing_settings.get(k) != str(v)}
            if changed:
                assignments = ", ".join(f"{k} = {v}" for k, v in changed.items())
                statements.append(f"ALTER TABLE {database}.{self.name} MODIFY SETTING {assignments}")
        return statements

    def render_single_node(self, database: str) -> str:
        """CREATE TABLE for one node (chdb or a single server)."""
        cols = ",\n  ".join(c.render() for c in self.columns)
        parts = [
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name} (\n  {cols}\n)",
            *self._storage_clauses(self.engine, self.settings),
        ]
        return "\n".join(parts)


def _squash(sql: str) -> str:
    return re.sub(r"\s+", "", sql)


# Insert dedup tokens make a re-sent batch (same token) a no-op; the window must
# cover the inserts that can happen between a crash and its recovery.
_DEDUP: Mapping[str, str | int] = {_NON_REPLICATED_DEDUP: 10000}
# The projector writes a part per table several times a second, into one partition. With the
# merge selector's default base (5) ClickHouse keeps that partition at 2-8 parts by merging each
# few new small parts into the big one, rewriting it every time: in chdb at 16,000 points/s the
# merge threads took 0.55 cores, more as the table grew, and the merges of one tenant's flood
# went on taking the embedded stack's cores after it stopped. A base of 20 waits for parts of
# similar size: 5-18 parts, 0.15 cores of merging, flat, inserts as fast, one series' read
# 2-3 ms slower (bench/clickhouse_merges.py; bench/RESULTS.md, "Merges").
_MERGES: Mapping[str, str | int] = {"merge_selector_base": 20}

# A series (tenant, run, key) lives on one shard: every read of the API is scoped to
# one tenant and run, so with optimize_skip_unused_shards it touches one shard, and
# the rollup view finds a run's points on the shard that holds its rollup. Hashing
# the run id as well as the tenant keeps one large tenant from filling one shard.
_BY_RUN = "cityHash64(tenant_id, run_id)"

# Raw metric points expire by their age in RunLedger: the time they were received
# (ingested_at), never their client timestamp, so a run synced from offline mode or a history
# imported from MLflow is not deleted on arrival. They go after the retention of their tenant
# plus TTL_GRACE_DAYS: the retention sweeper records (run.metrics_expired) and deletes what
# the policy removes first, by the same rule; the TTL is the backstop that enforces the policy
# even when no sweeper runs. retention_days = 0 keeps a point forever.
METRIC_POINTS_TTL = f"ingested_at + toIntervalDay(retention_days + {TTL_GRACE_DAYS}) WHERE retention_days > 0"

METRIC_POINTS = Table(
    name="metric_points",
    columns=(
        Column("tenant_id", "LowCardinality(String)"),
        Column("experiment_id", "LowCardinality(String)"),
        Column("run_id", "String"),
        Column("key", "LowCardinality(String)"),
        Column("step", "Int64", "Delta, ZSTD(1)"),
        Column("timestamp", "DateTime64(3, 'UTC')", "Delta, ZSTD(1)"),
        Column("value", "Float64", "Gorilla"),
        # The tenant's retention of raw points in days when the point was inserted (0 = kept
        # forever), filled by the projector from the tenant's retention policy and rewritten
        # for the tenant's rows when the policy changes (runledger.retention, ADR 0012).
        Column("retention_days", "UInt16", default=str(DEFAULT_METRIC_POINTS_DAYS)),
        # When RunLedger received the point (second precision): what its age, and so its
        # expiry, is measured from. The projector stamps the time its batch was projected
        # (the batch's events_archive.ingested_at), which replay stamps again, so a replayed
        # point keeps its age; the DEFAULT serves other writers, and the rows that existed
        # when the column was added (materialized then: their age starts at the upgrade).
        # Constant within a batch, so it compresses to almost nothing.
        Column("ingested_at", "DateTime", "Delta, ZSTD(1)", default="now()", materialize=True),
    ),
    # Replacing on the full point identity gives MLflow's dedup rule
    # (run, key, timestamp, step, value) on merge; exact reads never depend on it
    # because the projector never inserts a point twice.
    engine="ReplacingMergeTree",
    order_by=("tenant_id", "run_id", "key", "step", "timestamp", "value"),
    ttl=METRIC_POINTS_TTL,
    settings={**_DEDUP, **_MERGES},
    sharding_key=_BY_RUN,
)

EVENTS_ARCHIVE = Table(
    name="events_archive",
    columns=(
        Column("tenant_id", "LowCardinality(String)"),
        Column("event_id", "UUID"),
        Column("type", "LowCardinality(String)"),
        Column("schema_version", "UInt16"),
        Column("occurred_at", "DateTime64(3, 'UTC')"),
        Column("experiment_id", "String"),
        Column("run_id", "String"),
        Column("ingested_at", "DateTime64(3, 'UTC')"),
        Column("source", "LowCardinality(String)"),
        Column("offset", "UInt64"),
        Column("body", "String", "ZSTD(1)"),
    ),
    engine="ReplacingMergeTree",
    order_by=("tenant_id", "event_id"),
    settings={**_DEDUP, **_MERGES},
    # The archive is read whole (replay, in sort-key pages) and never per run, so
    # hashing the (unique) event id spreads it evenly over the shards, whatever
    # the mix of tenants and run sizes; the key is the sort key, (tenant, event).
    sharding_key="cityHash64(tenant_id, event_id)",
)

# Step buckets of the rollup: a downsampled read of a long series touches
# len/ROLLUP_STEPS rows instead of every point.
ROLLUP_STEPS = 64

METRIC_ROLLUP = Table(
    name="metric_rollup",
    columns=(
        Column("tenant_id", "LowCardinality(String)"),
        Column("run_id", "String"),
        Column("key", "LowCardinality(String)"),
        Column("bucket", "Int64"),
        # min/max are idempotent, so a point seen twice never changes the rollup.
        Column("min_value", "SimpleAggregateFunction(min, Float64)"),
        Column("max_value", "SimpleAggregateFunction(max, Float64)"),
        Column("min_at", "AggregateFunction(argMin, Int64, Float64)"),
        Column("max_at", "AggregateFunction(argMax, Int64, Float64)"),
        Column("first_step", "SimpleAggregateFunction(min, Int64)"),
        Column("last_step", "SimpleAggregateFunction(max, Int64)"),
    ),
    engine="AggregatingMergeTree",
    order_by=("tenant_id", "run_id", "key", "bucket"),
    settings=_MERGES,
    # Must equal metric_points' key: the view writes a shard's rollup from that
    # shard's points (MaterializedView.render_cluster checks it).
    sharding_key=_BY_RUN,
)


@dataclass(frozen=True)
class MaterializedView:
    """A view that feeds `target` from every insert into `source`."""

    name: str
    source: Table
    target: Table
    select: str

    def render_single_node(self, database: str) -> str:
        """CREATE MATERIALIZED VIEW for one node."""
        select = self.select.format(db=database, source=self.source.name)
        return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{self.name} TO {database}.{self.target.name} AS {select}"

    def render_cluster(self, database: str, cluster: str) -> str:
        """CREATE MATERIALIZED VIEW on every node, from the local source into the local target.

        A view fires on the node an insert lands on, and replication copies parts
        without firing views; so each shard's view must read the local source table
        and write the local (replicated) target, never the Distributed tables, or
        rows would be counted once per replica or sent across shards.
        """
        if self.source.sharding_key != self.target.sharding_key:
            raise ValueError(
                f"{self.name}: source and target must be sharded alike "
                f"({self.source.sharding_key!r} != {self.target.sharding_key!r})"
            )
        select = self.select.format(db=database, source=self.source.local_name)
        return (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{self.name} ON CLUSTER {cluster} "
            f"TO {database}.{self.target.local_name} AS {select}"
        )


METRIC_ROLLUP_MV = MaterializedView(
    name="metric_rollup_mv",
    source=METRIC_POINTS,
    target=METRIC_ROLLUP,
    select=(
        "SELECT tenant_id, run_id, key, intDiv(step, " + str(ROLLUP_STEPS) + ") AS bucket, "
        "min(value) AS min_value, max(value) AS max_value, "
        "argMinState(step, value) AS min_at, argMaxState(step, value) AS max_at, "
        "min(step) AS first_step, max(step) AS last_step "
        # Non-finite points stay out: a bucket of only NaN must not yield a 0 that
        # later wins against real values.
        "FROM {db}.{source} WHERE isFinite(value) GROUP BY tenant_id, run_id, key, bucket"
    ),
)

ALL_TABLES: tuple[Table, ...] = (METRIC_POINTS, EVENTS_ARCHIVE, METRIC_ROLLUP)
ALL_VIEWS: tuple[MaterializedView, ...] = (METRIC_ROLLUP_MV,)


def render_cluster_schema(database: str, cluster: str = CLUSTER) -> list[str]:
    """Every statement that creates the schema on a cluster, in execution order.

    The database first, each table's local table before its Distributed table, the
    views last (they need their local source and target). Every statement is
    `IF NOT EXISTS`, so re-running it is harmless; the services' own single-node
    migration then finds every name taken and creates nothing.
    """
    statements = [f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}"]
    for table in ALL_TABLES:
        statements.extend(table.render_cluster(database, cluster))
    statements.extend(view.render_cluster(database, cluster) for view in ALL_VIEWS)
    return statements


CLUSTER_SQL_HEADER = """\
-- RunLedger schema for a ClickHouse cluster (Replicated* + Distributed tables).
-- Generated from libs/runledger/stores/clickhouse/tables.py; do not edit by hand:
--   python -c "from pathlib import Path; from runledger.stores.clickhouse.tables import write_cluster_schema; write_cluster_schema(Path('deploy/clickhouse/cluster.sql'))"
-- Apply it once per cluster, before the services first start (they would otherwise
-- create single-node tables under the same names):
--   clickhouse-client --host <any node> --multiquery --queries-file deploy/clickhouse/cluster.sql
-- Needs <remote_servers> defining the cluster, <macros> with {shard} and {replica}
-- on every node, and Keeper (see deploy/compose/clickhouse/).
"""


def cluster_schema_sql(database: str = "runledger", cluster: str = CLUSTER) -> str:
    """The cluster schema as one script: header comment, then `;`-terminated statements."""
    return CLUSTER_SQL_HEADER + "".join(f"\n{stmt};\n" for stmt in render_cluster_schema(database, cluster))


def write_cluster_schema(path: Path, database: str = "runledger", cluster: str = CLUSTER) -> Path:
    """Write `cluster_schema_sql(...)` to path (deploy/clickhouse/cluster.sql in the repo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cluster_schema_sql(database, cluster))
    return path
