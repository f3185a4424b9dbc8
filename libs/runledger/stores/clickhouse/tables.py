"""ClickHouse tables, each declared once; the DDL is rendered from the declaration.

The single-node rendering serves chdb (embedded) and a lone ClickHouse server; a
cluster rendering (Replicated* + Distributed) will be added from the same
declarations, so no SQL is written twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    """One column: name, ClickHouse type and optional codec."""

    name: str
    type: str
    codec: str = ""

    def render(self) -> str:
        """`name Type [CODEC(...)]`."""
        codec = f" CODEC({self.codec})" if self.codec else ""
        return f"`{self.name}` {self.type}{codec}"


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

    @property
    def column_names(self) -> list[str]:
        """Names of the columns in declaration order."""
        return [c.name for c in self.columns]

    def render_single_node(self, database: str) -> str:
        """CREATE TABLE for one node (chdb or a single server)."""
        cols = ",\n  ".join(c.render() for c in self.columns)
        parts = [
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name} (\n  {cols}\n)",
            f"ENGINE = {self.engine}",
        ]
        if self.partition_by:
            parts.append(f"PARTITION BY {self.partition_by}")
        parts.append(f"ORDER BY ({', '.join(self.order_by)})")
        if self.ttl:
            parts.append(f"TTL {self.ttl}")
        if self.settings:
            parts.append("SETTINGS " + ", ".join(f"{k} = {v}" for k, v in self.settings.items()))
        return "\n".join(parts)


# Insert dedup tokens make a re-sent batch (same token) a no-op; the window must
# cover the inserts that can happen between a crash and its recovery.
_DEDUP: Mapping[str, str | int] = {"non_replicated_deduplication_window": 10000}

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
    ),
    # Replacing on the full point identity gives MLflow's dedup rule
    # (run, key, timestamp, step, value) on merge; exact reads never depend on it
    # because the projector never inserts a point twice.
    engine="ReplacingMergeTree",
    order_by=("tenant_id", "run_id", "key", "step", "timestamp", "value"),
    settings=_DEDUP,
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
    settings=_DEDUP,
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
