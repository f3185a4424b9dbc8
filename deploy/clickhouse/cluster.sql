-- RunLedger schema for a ClickHouse cluster (Replicated* + Distributed tables).
-- Generated from libs/runledger/stores/clickhouse/tables.py; do not edit by hand:
--   python -c "from pathlib import Path; from runledger.stores.clickhouse.tables import write_cluster_schema; write_cluster_schema(Path('deploy/clickhouse/cluster.sql'))"
-- Apply it once per cluster, before the services first start (they would otherwise
-- create single-node tables under the same names):
--   clickhouse-client --host <any node> --multiquery --queries-file deploy/clickhouse/cluster.sql
-- Needs <remote_servers> defining the cluster, <macros> with {shard} and {replica}
-- on every node, and Keeper (see deploy/compose/clickhouse/).

CREATE DATABASE IF NOT EXISTS runledger ON CLUSTER runledger;

CREATE TABLE IF NOT EXISTS runledger.metric_points_local ON CLUSTER runledger (
  `tenant_id` LowCardinality(String),
  `experiment_id` LowCardinality(String),
  `run_id` String,
  `key` LowCardinality(String),
  `step` Int64 CODEC(Delta, ZSTD(1)),
  `timestamp` DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
  `value` Float64 CODEC(Gorilla),
  `retention_days` UInt16 DEFAULT 365,
  `ingested_at` DateTime DEFAULT now() CODEC(Delta, ZSTD(1))
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant_id, run_id, key, step, timestamp, value)
TTL ingested_at + toIntervalDay(retention_days + 1) WHERE retention_days > 0
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800, merge_selector_base = 20;

CREATE TABLE IF NOT EXISTS runledger.metric_points ON CLUSTER runledger (
  `tenant_id` LowCardinality(String),
  `experiment_id` LowCardinality(String),
  `run_id` String,
  `key` LowCardinality(String),
  `step` Int64,
  `timestamp` DateTime64(3, 'UTC'),
  `value` Float64,
  `retention_days` UInt16 DEFAULT 365,
  `ingested_at` DateTime DEFAULT now()
)
ENGINE = Distributed(runledger, runledger, metric_points_local, cityHash64(tenant_id, run_id));

CREATE TABLE IF NOT EXISTS runledger.events_archive_local ON CLUSTER runledger (
  `tenant_id` LowCardinality(String),
  `event_id` UUID,
  `type` LowCardinality(String),
  `schema_version` UInt16,
  `occurred_at` DateTime64(3, 'UTC'),
  `experiment_id` String,
  `run_id` String,
  `ingested_at` DateTime64(3, 'UTC'),
  `source` LowCardinality(String),
  `offset` UInt64,
  `body` String CODEC(ZSTD(1))
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant_id, event_id)
SETTINGS replicated_deduplication_window = 10000, replicated_deduplication_window_seconds = 604800, merge_selector_base = 20;

CREATE TABLE IF NOT EXISTS runledger.events_archive ON CLUSTER runledger (
  `tenant_id` LowCardinality(String),
  `event_id` UUID,
  `type` LowCardinality(String),
  `schema_version` UInt16,
  `occurred_at` DateTime64(3, 'UTC'),
  `experiment_id` String,
  `run_id` String,
  `ingested_at` DateTime64(3, 'UTC'),
  `source` LowCardinality(String),
  `offset` UInt64,
  `body` String
)
ENGINE = Distributed(runledger, runledger, events_archive_local, cityHash64(tenant_id, event_id));

CREATE TABLE IF NOT EXISTS runledger.metric_rollup_local ON CLUSTER runledger (
  `tenant_id` LowCardinality(String),
  `run_id` String,
  `key` LowCardinality(String),
  `bucket` Int64,
  `min_value` SimpleAggregateFunction(min, Float64),
  `max_value` SimpleAggregateFunction(max, Float64),
  `min_at` AggregateFunction(argMin, Int64, Float64),
  `max_at` AggregateFunction(argMax, Int64, Float64),
  `first_step` SimpleAggregateFunction(min, Int64),
  `last_step` SimpleAggregateFunction(max, Int64)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')
ORDER BY (tenant_id, run_id, key, bucket)
SETTINGS merge_selector_base = 20;

CREATE TABLE IF NOT EXISTS runledger.metric_rollup ON CLUSTER runledger (
  `tenant_id` LowCardinality(String),
  `run_id` String,
  `key` LowCardinality(String),
  `bucket` Int64,
  `min_value` SimpleAggregateFunction(min, Float64),
  `max_value` SimpleAggregateFunction(max, Float64),
  `min_at` AggregateFunction(argMin, Int64, Float64),
  `max_at` AggregateFunction(argMax, Int64, Float64),
  `first_step` SimpleAggregateFunction(min, Int64),
  `last_step` SimpleAggregateFunction(max, Int64)
)
ENGINE = Distributed(runledger, runledger, metric_rollup_local, cityHash64(tenant_id, run_id));

CREATE MATERIALIZED VIEW IF NOT EXISTS runledger.metric_rollup_mv ON CLUSTER runledger TO runledger.metric_rollup_local AS SELECT tenant_id, run_id, key, intDiv(step, 64) AS bucket, min(value) AS min_value, max(value) AS max_value, argMinState(step, value) AS min_at, argMaxState(step, value) AS max_at, min(step) AS first_step, max(step) AS last_step FROM runledger.metric_points_local WHERE isFinite(value) GROUP BY tenant_id, run_id, key, bucket;
