"""`runledger replay`: rebuild every projection from the event archive.

The archive holds each projected event once, with the (source, offset) it came
from, so re-applying it in (ingested_at, source, offset) order reproduces the
projections exactly. The projector must not write meanwhile: callers hold its
write lock (embedded mode) or have scaled it to zero (distributed mode).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pyarrow as pa

from runledger.events.codec import DecodedEvent, InvalidEvent, decode
from runledger.events.models import EventType
from runledger.stores.clickhouse import ClickHouse
from services.ingest.metadata_writer import REFUSED, apply_projection, record_applied
from services.ingest.projection import ArchivedEvent, build_projection
from services.ingest.retention_cache import RetentionDays, with_ingested_at, with_retention

log = logging.getLogger(__name__)

# Projection tables rebuilt from events (tenants and projector checkpoints are not).
PROJECTION_TABLES = (
    "experiments",
    "experiment_tags",
    "runs",
    "params",
    "tags",
    "latest_metrics",
    "artifacts",
    "dataset_inputs",
    "run_documents",
    "model_versions",
    "lineage_edges",
    "findings",
    "attributions",
    "logged_models",
    "logged_model_params",
    "logged_model_tags",
    "logged_model_metrics",
    "run_model_outputs",
    "applied_events",
)
CLICKHOUSE_PROJECTIONS = ("metric_points", "metric_rollup")
PAGE_SIZE = 2000


@dataclass
class ReplayStats:
    """What a replay re-applied."""

    events: int = 0
    points: int = 0
    skipped: int = 0


# engine_full of a Distributed table: Distributed(cluster, database, local_table[, key...]),
# each name bare or quoted.
_DISTRIBUTED = re.compile(r"^Distributed\(\s*'?([\w.-]+)'?\s*,\s*'?(\w+)'?\s*,\s*'?(\w+)'?")


def truncate_statements(catalog: Iterable[tuple[str, str, str]], database: str) -> list[str]:
    """TRUNCATE statements that empty each ClickHouse projection, single node or cluster.

    `catalog` holds (name, engine, engine_full) rows of system.tables. On a cluster the
    projection names are Distributed tables: truncating one would leave every shard's
    rows in place, so the statement goes to the local table it fronts, ON CLUSTER.
    """
    engines = {name: (engine, engine_full) for name, engine, engine_full in catalog}
    statements = []
    for table in CLICKHOUSE_PROJECTIONS:
        engine, engine_full = engines.get(table, ("", ""))
        match = _DISTRIBUTED.match(engine_full) if engine == "Distributed" else None
        if match is None:
            statements.append(f"TRUNCATE TABLE IF EXISTS {database}.{table}")
        else:
            cluster, local_database, local_table = match.groups()
            statements.append(
                f"TRUNCATE TABLE IF EXISTS {local_database}.{local_table} ON CLUSTER {cluster} SYNC"
            )
    return statements


def _catalog(clickhouse: ClickHouse) -> list[tuple[str, str, str]]:
    table = clickhouse.query_arrow(
        "SELECT name, engine, engine_full FROM system.tables WHERE database = {db:String}",
        {"db": clickhouse.database},
    )
    return list(
        zip(
            table.column("name").to_pylist(),
            table.column("engine").to_pylist(),
            table.column("engine_full").to_pylist(),
            strict=True,
        )
    )


def _page(clickhouse: ClickHouse, after: tuple[int, str, int] | None) -> list[tuple[int, str, int, str]]:
    """The next archived events in projection order, after the keyset position `after`."""
    where = ""
    params: dict[str, object] = {"limit": PAGE_SIZE}
    if after is not None:
        where = "WHERE (at_ms, source, offset) > ({at:Int64}, {src:String}, {off:UInt64})"
        params.update(at=after[0], src=after[1], off=after[2])
    table = clickhouse.query_arrow(
        "SELECT toUnixTimestamp64Milli(ingested_at) AS at_ms, source, offset, body"
        f" FROM {clickhouse.table('events_archive')} {where}"
        " ORDER BY at_ms, source, offset LIMIT 1 BY event_id LIMIT {limit:UInt32}",
        params,
    )
    return list(
        zip(
            table.column("at_ms").to_pylist(),
            table.column("source").to_pylist(),
            table.column("offset").to_pylist(),
            table.column("body").to_pylist(),
            strict=True,
        )
    )


def _stamped_points(
    events: list[ArchivedEvent], received: list[int], points: pa.Table, days: Mapping[str, int]
) -> pa.Table:
    """The page's points, each with its tenant's retention and the time its event was first
    received (the archive's ingested_at), so a replayed point keeps its age.

    Events archived together (one projector batch) share that time, and the page comes in
    that order: a page of one batch reuses its projection's points; otherwise each batch's
    points are built on their own (one insert still: many small parts would cost merges)."""
    groups: list[tuple[int, list[DecodedEvent]]] = []
    for archived, at_ms in zip(events, received, strict=True):
        if archived.event.envelope.type is not EventType.METRICS_LOGGED:
            continue
        if not groups or groups[-1][0] != at_ms:
            groups.append((at_ms, []))
        groups[-1][1].append(archived.event)
    parts = []
    for at_ms, group in groups:
        built = (
            points
            if len(groups) == 1
            else build_projection([ArchivedEvent(e, "", 0) for e in group], None, with_archive=False).points
        )
        if built is not None:
            at = datetime.fromtimestamp(at_ms / 1000, UTC)
            parts.append(with_ingested_at(with_retention(built, days), at))
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


async def replay(
    clickhouse: ClickHouse, pool: asyncpg.Pool, progress: Callable[[ReplayStats], None] | None = None
) -> ReplayStats:
    """Wipe the projections and re-apply the whole archive."""
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {', '.join(PROJECTION_TABLES)}")
    catalog = await asyncio.to_thread(_catalog, clickhouse)
    for statement in truncate_statements(catalog, clickhouse.database):
        await asyncio.to_thread(clickhouse.command, statement)
    stats = ReplayStats()
    # retention_policies is not wiped (its events re-apply idempotently): re-inserted points
    # are stamped with their tenant's policy, so a "keep forever" tenant's old points are not
    # taken by the TTL's default before a sweep re-stamps them; and with the time they were
    # first received (their events' archive time), so their age does not restart: points a
    # sweep deleted, and recorded, come back already expired and the TTL removes them again.
    retention = RetentionDays(pool)
    after: tuple[int, str, int] | None = None
    while True:
        rows = await asyncio.to_thread(_page, clickhouse, after)
        if not rows:
            break
        after = rows[-1][:3]
        events: list[ArchivedEvent] = []
        received: list[int] = []  # archive time (ms) of each event
        for at_ms, source, offset, body in rows:
            try:
                events.append(ArchivedEvent(decode(body.encode()), source, offset))
                received.append(at_ms)
            except InvalidEvent as exc:  # archived under an older, laxer contract
                log.warning("replay skips %s@%d: %s", source, offset, exc.reason)
                stats.skipped += 1
        projection = build_projection(events, None, with_archive=False)
        if projection.points is not None:
            days = await retention.days(projection.tenants)
            points = _stamped_points(events, received, projection.points, days)
            await asyncio.to_thread(clickhouse.insert_arrow, "metric_points", points)
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await apply_projection(conn, projection)
                    await record_applied(conn, [a.event.envelope.event_id for a in events])
            except REFUSED:
                # The live projector dead-lettered these events one by one (their points and
                # archive rows went to ClickHouse first): skip the same ones here.
                def skip(event: DecodedEvent, reason: str) -> None:
                    log.warning("replay skips %s: %s", event.envelope.event_id, reason)
                    stats.skipped += 1

                async with conn.transaction():
                    await apply_projection(conn, projection, skip)
                    await record_applied(conn, [a.event.envelope.event_id for a in events])
        stats.events += len(events)
        stats.points += projection.point_count
        if progress is not None:
            progress(stats)
    return stats
