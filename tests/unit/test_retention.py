"""Retention's domain rules (runledger.retention), the projector's retention column, the
single-node upgrade of an older ClickHouse table, and the CLI's parsing and rendering."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from runledger.cli import build_parser
from runledger.retention import (
    ARTIFACTS_PER_EVENT,
    TTL_GRACE_DAYS,
    ArtifactFact,
    ProductionVersion,
    RetentionPolicy,
    SeriesFact,
    build_plan,
    expiry_events,
    model_path,
    ms,
    protects,
    source_run,
)
from runledger.retention_cli import parse_as_of, parse_days, plan_text
from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.clickhouse.tables import METRIC_POINTS
from services.ingest.retention_cache import with_ingested_at, with_retention

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def _art(run: str, path: str, digest: str, size: int, ended_days_ago: int) -> ArtifactFact:
    return ArtifactFact(run, "e", path, digest, size, ms(AS_OF - ended_days_ago * DAY))


def test_policy_defaults_bounds_and_cutoffs() -> None:
    policy = RetentionPolicy()
    assert (policy.metric_points_days, policy.artifacts_days, policy.keep_production_models) == (
        365,
        183,
        True,
    )
    assert policy.metric_cutoff(AS_OF) == AS_OF - 365 * DAY
    assert policy.artifact_cutoff(AS_OF) == AS_OF - 183 * DAY
    forever = RetentionPolicy(None, None)
    assert forever.metric_cutoff(AS_OF) is None and forever.clickhouse_days == 0
    for bad in (0, -1, 36_501):
        with pytest.raises(ValueError):
            RetentionPolicy(metric_points_days=bad)
    assert TTL_GRACE_DAYS >= 1


def test_model_sources_name_the_protected_paths() -> None:
    assert model_path("runs:/abc/model") == "model"
    assert model_path("runs:/abc/") == ""
    assert model_path("mlflow-artifacts:/1/abc/artifacts/models/clf/") == "models/clf"
    assert model_path("s3://bucket/model") == "" and model_path("/abs/model") == ""
    assert model_path("weights") == "weights"
    assert (
        source_run("runs:/abc/model") == "abc" and source_run("mlflow-artifacts:/1/abc/artifacts/x") == "abc"
    )
    version = ProductionVersion("clf", 1, "", "runs:/r1/model")
    assert protects(version, _art("r1", "model/w.bin", D1, 1, 400))
    assert protects(version, _art("r1", "model", D1, 1, 400))
    assert not protects(version, _art("r1", "model2/w.bin", D1, 1, 400))
    assert not protects(version, _art("r2", "model/w.bin", D1, 1, 400))
    pathless = ProductionVersion("clf", 2, "r1", "")
    assert protects(pathless, _art("r1", "models/a/b", D1, 1, 400))
    assert not protects(pathless, _art("r1", "data/x", D1, 1, 400))


def test_plan_by_hand() -> None:
    """Points go by when they were received, not by their client timestamp: r1/loss was
    logged and received long ago (goes); r1/acc was logged two years ago but arrived
    yesterday (an offline run synced late: stays); r2/loss has recent client timestamps but
    was received 366 days ago (a clock-skewed client: goes, reported with its timestamps)."""
    series = [
        SeriesFact("r1", "e", "loss", 3, ms(AS_OF - 400 * DAY), ms(AS_OF - 370 * DAY), ms(AS_OF - 399 * DAY)),
        SeriesFact("r1", "e", "acc", 2, ms(AS_OF - 730 * DAY), ms(AS_OF - 700 * DAY), ms(AS_OF - 1 * DAY)),
        SeriesFact("r2", "e", "loss", 1, ms(AS_OF - 5 * DAY), ms(AS_OF - 5 * DAY), ms(AS_OF - 366 * DAY)),
        SeriesFact("r1", "e", "empty", 0, 0, 0, 0),
    ]
    artifacts = [
        _art("r1", "model/w.bin", D1, 10, 400),  # production: kept
        _art("r1", "a.txt", D2, 20, 400),  # D2 also referenced by a retained row: blob stays
        _art("r2", "b.txt", D3, 30, 200),
        _art("r2", "c.txt", D3, 30, 200),  # D3: both rows go: blob goes, once
        _art("r3", "young.txt", D3, 30, 100),  # ended too recently: ignored
    ]
    production = [ProductionVersion("clf", 1, "r1", "runs:/r1/model")]
    plan = build_plan("t", RetentionPolicy(), AS_OF, series, artifacts, production, {D1: 1, D2: 2, D3: 2})
    assert [(s.run_id, s.key, s.points) for s in plan.series] == [("r1", "loss", 3), ("r2", "loss", 1)]
    assert [(s.first_timestamp_ms, s.last_timestamp_ms) for s in plan.series] == [
        (ms(AS_OF - 400 * DAY), ms(AS_OF - 370 * DAY)),
        (ms(AS_OF - 5 * DAY), ms(AS_OF - 5 * DAY)),
    ]
    assert [(a.run_id, a.path) for a in plan.artifacts] == [("r1", "a.txt"), ("r2", "b.txt"), ("r2", "c.txt")]
    assert [(k.path, k.reason) for k in plan.kept] == [
        ("model/w.bin", "binary of model version clf/1, ever in Production")
    ]
    assert [(b.digest, b.size) for b in plan.blobs] == [(D3, 30)]
    assert (plan.points, plan.artifact_bytes, plan.freed_bytes) == (4, 80, 30)
    totals = plan.to_dict()["totals"]
    assert totals == {
        "series": 2,
        "points": 4,
        "artifacts": 3,
        "artifact_bytes": 80,
        "blobs": 1,
        "freed_bytes": 30,
        "kept_production_artifacts": 1,
    }
    text = plan_text(plan.to_dict())
    assert "4 points in 2 series" in text and "clf/1" in text

    unprotected = build_plan(
        "t",
        RetentionPolicy(keep_production_models=False),
        AS_OF,
        [],
        artifacts,
        production,
        {D1: 1, D2: 2, D3: 2},
    )
    assert ("r1", "model/w.bin") in [
        (a.run_id, a.path) for a in unprotected.artifacts
    ] and not unprotected.kept
    forever = build_plan("t", RetentionPolicy(None, None), AS_OF, series, artifacts, production, {})
    assert forever.empty and forever.metric_cutoff_ms is None


def test_expiry_events_one_per_run_and_chunked() -> None:
    many = [_art("r2", f"f{i:04}", D2, 1, 300) for i in range(ARTIFACTS_PER_EVENT + 1)]
    series = [
        SeriesFact("r1", "e", "loss", 2, ms(AS_OF - 400 * DAY), ms(AS_OF - 390 * DAY), ms(AS_OF - 390 * DAY))
    ]
    plan = build_plan("t", RetentionPolicy(), AS_OF, series, many, [], {D2: len(many)})
    events = expiry_events(plan)
    assert [
        (e.type, e.run_id, len(e.payload.get("artifacts", e.payload.get("series", [])))) for e in events
    ] == [
        ("run.metrics_expired", "r1", 1),
        ("run.artifacts_expired", "r2", ARTIFACTS_PER_EVENT),
        ("run.artifacts_expired", "r2", 1),
    ]
    assert events[0].payload["before"] == ms(AS_OF - 365 * DAY) and events[0].payload["policy_days"] == 365


def test_points_carry_their_tenants_retention() -> None:
    tenants = pa.DictionaryArray.from_arrays(pa.array([0, 1, 1, 0], pa.int32()), pa.array(["a", "b"]))
    points = pa.table({"tenant_id": tenants, "value": pa.array([1.0, 2.0, 3.0, 4.0])})
    stamped = with_retention(points, {"a": 30, "b": 0})
    assert stamped.column("retention_days").to_pylist() == [30, 0, 0, 30]
    assert stamped.column("retention_days").type == pa.uint16()
    plain = pa.table({"tenant_id": pa.array(["b", "c"]), "value": pa.array([1.0, 2.0])})
    assert with_retention(plain, {"b": 7}).column("retention_days").to_pylist() == [7, 365]


def test_points_carry_when_they_were_received() -> None:
    points = pa.table({"tenant_id": pa.array(["a", "b"]), "value": pa.array([1.0, 2.0])})
    at = datetime(2026, 6, 1, 12, 30, 45, 678_000, tzinfo=UTC)
    stamped = with_ingested_at(points, at)
    assert stamped.column("ingested_at").type == pa.timestamp("s", tz="UTC")
    assert stamped.column("ingested_at").to_pylist() == [at.replace(microsecond=0)] * 2
    assert with_ingested_at(stamped, AS_OF).column("ingested_at").to_pylist() == [AS_OF] * 2


def test_upgrade_statements_add_then_materialize_then_set_the_ttl() -> None:
    before = ["tenant_id", "experiment_id", "run_id", "key", "step", "timestamp", "value"]
    head = METRIC_POINTS.render_upgrade("db", before, "")
    assert head == [
        "ALTER TABLE db.metric_points ADD COLUMN IF NOT EXISTS `retention_days` UInt16 DEFAULT 365 AFTER `value`",
        "ALTER TABLE db.metric_points ADD COLUMN IF NOT EXISTS `ingested_at` DateTime DEFAULT now()"
        " CODEC(Delta, ZSTD(1)) AFTER `retention_days`",
        "ALTER TABLE db.metric_points MATERIALIZE COLUMN `ingested_at` SETTINGS mutations_sync = 2",
        "ALTER TABLE db.metric_points MODIFY TTL"
        " ingested_at + toIntervalDay(retention_days + 1) WHERE retention_days > 0",
    ]
    timestamp_ttl = "toDateTime(timestamp) + toIntervalDay(retention_days + 1) WHERE retention_days > 0"
    previous = METRIC_POINTS.render_upgrade("db", [*before, "retention_days"], timestamp_ttl)
    assert previous == head[1:]
    current = [*before, "retention_days", "ingested_at"]
    assert METRIC_POINTS.render_upgrade("db", current, METRIC_POINTS.ttl) == []
    # Interrupted after ADD COLUMN: materialized again (it fills only the parts that lack it).
    assert METRIC_POINTS.render_upgrade("db", current, timestamp_ttl, ["ingested_at"]) == head[2:]
    # Declared settings a table lacks or differs in are set; the ones it has are left alone.
    older = {"index_granularity": "8192", "non_replicated_deduplication_window": "10000"}
    assert METRIC_POINTS.render_upgrade("db", current, METRIC_POINTS.ttl, (), older) == [
        "ALTER TABLE db.metric_points MODIFY SETTING merge_selector_base = 20"
    ]
    assert (
        METRIC_POINTS.render_upgrade(
            "db", current, METRIC_POINTS.ttl, (), older | {"merge_selector_base": "20"}
        )
        == []
    )


_HEAD_COLUMNS = (
    "tenant_id LowCardinality(String), experiment_id LowCardinality(String), run_id String,"
    " key LowCardinality(String), step Int64 CODEC(Delta, ZSTD(1)),"
    " timestamp DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)), value Float64 CODEC(Gorilla)"
)
_STORAGE = " ENGINE = ReplacingMergeTree ORDER BY (tenant_id, run_id, key, step, timestamp, value)"
_SETTINGS = " SETTINGS non_replicated_deduplication_window = 10000"
# Each earlier declaration of metric_points: (columns, TTL clause).
_EARLIER = {
    "head": (_HEAD_COLUMNS, ""),
    "retention_days": (
        _HEAD_COLUMNS + ", retention_days UInt16 DEFAULT 365",
        " TTL toDateTime(timestamp) + toIntervalDay(retention_days + 1) WHERE retention_days > 0",
    ),
}


def _stored_ingested_at(store: ChdbClickHouse) -> list[tuple[int, int]]:
    """(step, ingested_at in seconds since the epoch) of every stored point."""
    rows = store.query_arrow(
        "SELECT step, toInt64(toUnixTimestamp(ingested_at)) AS ingested_at FROM runledger.metric_points ORDER BY step"
    ).to_pylist()
    return [(r["step"], r["ingested_at"]) for r in rows]


@pytest.mark.parametrize("earlier", sorted(_EARLIER))
def test_an_older_metric_points_table_is_upgraded_in_place(tmp_path: Path, earlier: str) -> None:
    """A data dir from before ingestion ages (no retention columns at all, or retention_days with
    a TTL on the client timestamp): the columns are added, ingested_at is materialized for the
    existing rows (their age starts at the upgrade; unmaterialized they would read now() forever
    and never expire), then the TTL on ingested_at is set, so old client timestamps lose
    nothing. A second start changes nothing."""
    import time

    from chdb import session

    columns, ttl = _EARLIER[earlier]
    old = session.Session(str(tmp_path))
    old.query("CREATE DATABASE runledger")
    old.query(f"CREATE TABLE runledger.metric_points ({columns}){_STORAGE}{ttl}{_SETTINGS}")
    old.query(
        "INSERT INTO runledger.metric_points (tenant_id, experiment_id, run_id, key, step, timestamp, value)"
        " VALUES ('t', '0', 'r', 'k', 1, now() - INTERVAL 300 DAY, 1),"
        " ('t', '0', 'r', 'k', 2, now() - INTERVAL 10 DAY, 2)"
    )
    old.close()
    store = ChdbClickHouse(tmp_path)
    try:
        started = int(time.time())
        store.migrate()
        rows = store.query_arrow(
            "SELECT step, retention_days FROM runledger.metric_points ORDER BY step"
        ).to_pylist()
        assert rows == [{"step": 1, "retention_days": 365}, {"step": 2, "retention_days": 365}]
        stored = _stored_ingested_at(store)
        assert [s for s, _ in stored] == [1, 2]
        assert all(started <= at <= time.time() for _, at in stored)
        time.sleep(1.1)  # stored, not computed at read time
        assert _stored_ingested_at(store) == stored
        parts = (
            store.query_arrow(
                "SELECT count() AS n FROM system.parts_columns WHERE database = 'runledger'"
                " AND table = 'metric_points' AND active AND column = 'ingested_at'"
            )
            .column("n")[0]
            .as_py()
        )
        assert parts >= 1
        assert store._upgrades(METRIC_POINTS) == []
        ttl_now = (
            store.query_arrow(
                "SELECT create_table_query FROM system.tables WHERE database = 'runledger' AND name = 'metric_points'"
            )
            .column("create_table_query")[0]
            .as_py()
        )
        assert "TTL ingested_at + toIntervalDay(retention_days + 1) WHERE retention_days > 0" in ttl_now
        assert "merge_selector_base = 20" in ttl_now  # the merge setting declared since
        # The TTL now reads the ingestion time: forcing it keeps both points.
        store.command("OPTIMIZE TABLE runledger.metric_points FINAL")
        assert [s for s, _ in _stored_ingested_at(store)] == [1, 2]
    finally:
        store.close()


_JAN_2 = int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())


def test_an_upgrade_interrupted_before_materializing_is_finished(tmp_path: Path) -> None:
    """The column was added but the process stopped before MATERIALIZE: the next start fills the
    parts that lack it, and leaves alone the values stored by inserts made since."""
    import time

    from chdb import session

    columns, ttl = _EARLIER["retention_days"]
    old = session.Session(str(tmp_path))
    old.query("CREATE DATABASE runledger")
    old.query(f"CREATE TABLE runledger.metric_points ({columns}){_STORAGE}{ttl}{_SETTINGS}")
    old.query(
        "INSERT INTO runledger.metric_points (tenant_id, experiment_id, run_id, key, step, timestamp, value)"
        " VALUES ('t', '0', 'r', 'k', 1, now() - INTERVAL 10 DAY, 1)"
    )
    old.query(
        "ALTER TABLE runledger.metric_points ADD COLUMN ingested_at DateTime DEFAULT now()"
        " CODEC(Delta, ZSTD(1)) AFTER retention_days"
    )
    old.query(
        "INSERT INTO runledger.metric_points (tenant_id, experiment_id, run_id, key, step, timestamp, value,"
        f" ingested_at) VALUES ('t', '0', 'r', 'k', 2, now() - INTERVAL 10 DAY, 2, toDateTime({_JAN_2}))"
    )
    old.close()
    store = ChdbClickHouse(tmp_path)
    try:
        assert any("MATERIALIZE COLUMN `ingested_at`" in s for s in store._upgrades(METRIC_POINTS))
        started = int(time.time())
        store.migrate()
        (_, first), (_, second) = _stored_ingested_at(store)
        assert first >= started and second == _JAN_2
        assert store._upgrades(METRIC_POINTS) == []
    finally:
        store.close()


def test_cli_parsing() -> None:
    assert parse_days("30") == 30 and parse_days("forever") is None
    with pytest.raises(argparse.ArgumentTypeError):
        parse_days("0")
    assert parse_as_of("2026-06-01") == ms(AS_OF)
    args = build_parser().parse_args(
        [
            "retention",
            "plan",
            "--tenant",
            "t",
            "--as-of",
            "2026-06-01",
            "--metric-points-days",
            "forever",
            "--json",
        ]
    )
    assert (args.retention_command, args.tenant, args.as_of, args.metric_points_days, args.json) == (
        "plan",
        "t",
        ms(AS_OF),
        None,
        True,
    )
    setter = build_parser().parse_args(
        ["retention", "set", "--artifacts-days", "90", "--no-keep-production-models"]
    )
    assert (setter.artifacts_days, setter.keep_production_models) == (90, False)
