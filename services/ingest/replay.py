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
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg

from runledger.events.codec import InvalidEvent, decode
from runledger.stores.clickhouse import ClickHouse
from services.ingest.metadata_writer import apply_projection, record_applied
from services.ingest.projection import ArchivedEvent, build_projection

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
    after: tuple[int, str, int] | None = None
    while True:
        rows = await asyncio.to_thread(_page, clickhouse, after)
        if not rows:
            break
        after = rows[-1][:3]
        events = []
        for _, source, offset, body in rows:
            try:
                events.append(ArchivedEvent(decode(body.encode()), source, offset))
            except InvalidEvent as exc:  # archived under an older, laxer contract
                log.warning("replay skips %s@%d: %s", source, offset, exc.reason)
                stats.skipped += 1
        projection = build_projection(events, None, with_archive=False)
        if projection.points is not None:
            await asyncio.to_thread(clickhouse.insert_arrow, "metric_points", projection.points)
        async with pool.acquire() as conn, conn.transaction():
            await apply_projection(conn, projection)
            await record_applied(conn, [a.event.envelope.event_id for a in events])
        stats.events += len(events)
        stats.points += projection.point_count
        if progress is not None:
            progress(stats)
    return stats
