"""The retention adapters: facts for a plan from Postgres and ClickHouse, and the deletions.

Everything the domain (runledger.retention) decides on comes from here; everything that
deletes goes through here. SQL only; no decisions beyond "is this still referenced".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from runledger.artifacts import ArtifactStore
from runledger.retention import (
    DEFAULT_POLICY,
    ArtifactFact,
    ProductionVersion,
    RetentionPolicy,
    SeriesFact,
    ms,
)
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.clickhouse.tables import METRIC_POINTS
from runledger.stores.postgres import PgConnection
from services.api.artifacts.blob_locks import lock_for_delete

# One sweep at a time, over every API replica and CLI (session-level advisory lock).
SWEEP_LOCK = 0x52554E4C_45444752  # "RUNLEDGR"
# Blobs deleted per transaction: uploads of those blobs wait for the group's deletes.
BLOB_DELETE_GROUP = 100

# engine_full of a Distributed table: Distributed(cluster, database, local_table[, key...]).
_DISTRIBUTED = re.compile(r"^Distributed\(\s*'?([\w.-]+)'?\s*,\s*'?(\w+)'?\s*,\s*'?(\w+)'?")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-.]+\Z")
# A point's age is measured from when RunLedger received it, never from its client timestamp
# (ADR 0012): the plan, the sweeper's DELETE and the table's TTL all read ingested_at.
_RECEIVED_BEFORE = "ingested_at < fromUnixTimestamp64Milli({c:Int64}, 'UTC')"


class SweepBusy(Exception):
    """Another process holds the sweep lock."""


def _array(values: Sequence[str]) -> str:
    """The text form of an Array(String) query parameter."""
    quoted = (v.replace("\\", "\\\\").replace("'", "\\'") for v in values)
    return "[" + ",".join(f"'{v}'" for v in quoted) + "]"


def _literal(tenant_id: str) -> str:
    """A tenant id inlined in an ALTER (ids are [A-Za-z0-9_.-], checked here anyway)."""
    if not _SAFE_ID.match(tenant_id):
        raise ValueError(f"not a tenant id: {tenant_id!r}")
    return f"'{tenant_id}'"


class RetentionStore:
    """Reads and deletions of the retention sweeper and plan, over the three stores."""

    def __init__(self, pool: asyncpg.Pool[Any], clickhouse: ClickHouse) -> None:
        self.pool = pool
        self._ch = clickhouse
        self._points = clickhouse.table(METRIC_POINTS.name)

    # ------------------------------------------------------------------ policies

    async def policy_row(self, tenant_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT metric_points_days, artifacts_days, keep_production_models, updated_at, updated_by"
            " FROM retention_policies WHERE tenant_id = $1",
            tenant_id,
        )

    async def policy(self, tenant_id: str) -> RetentionPolicy:
        """The tenant's policy, the defaults when it never set one."""
        row = await self.policy_row(tenant_id)
        if row is None:
            return DEFAULT_POLICY
        return RetentionPolicy(
            row["metric_points_days"], row["artifacts_days"], row["keep_production_models"]
        )

    async def tenants(self) -> list[str]:
        """Every tenant (the periodic sweep goes through all of them)."""
        return [r[0] for r in await self.pool.fetch("SELECT tenant_id FROM tenants ORDER BY tenant_id")]

    # ------------------------------------------------------------------ facts

    async def series_facts(self, tenant_id: str, cutoff: datetime) -> list[SeriesFact]:
        """Per (run, key): the tenant's points received (ingested_at) before `cutoff`, with the
        span of their client timestamps. The same predicate as delete_points and the TTL."""
        table = await asyncio.to_thread(
            self._ch.query_arrow,
            "SELECT run_id, any(experiment_id) AS experiment_id, key, count() AS points,"
            " toInt64(toUnixTimestamp64Milli(min(timestamp))) AS first_ms,"
            " toInt64(toUnixTimestamp64Milli(max(timestamp))) AS last_ms,"
            " toInt64(toUnixTimestamp(min(ingested_at))) * 1000 AS first_ingested_ms"
            f" FROM {self._points} WHERE tenant_id = {{t:String}}"
            f" AND {_RECEIVED_BEFORE}"
            " GROUP BY run_id, key ORDER BY run_id, key",
            {"t": tenant_id, "c": ms(cutoff)},
        )
        rows = table.to_pylist()
        # Events name the experiment the run is recorded in (the points carry a claim).
        recorded = {
            r["run_id"]: r["experiment_id"]
            for r in await self.pool.fetch(
                "SELECT run_id, experiment_id FROM runs WHERE tenant_id = $1 AND run_id = ANY($2::text[])",
                tenant_id,
                sorted({str(r["run_id"]) for r in rows}),
            )
        }
        return [
            SeriesFact(
                run_id=str(r["run_id"]),
                experiment_id=recorded.get(str(r["run_id"])) or str(r["experiment_id"]),
                key=str(r["key"]),
                points=int(r["points"]),
                first_timestamp_ms=int(r["first_ms"]),
                last_timestamp_ms=int(r["last_ms"]),
                first_ingested_ms=int(r["first_ingested_ms"]),
            )
            for r in rows
        ]

    async def artifact_facts(self, tenant_id: str, cutoff: datetime) -> list[ArtifactFact]:
        """Artifact rows of the tenant's runs that ended (else started) before `cutoff`."""
        rows = await self.pool.fetch(
            "SELECT a.run_id, r.experiment_id, a.path, a.digest, a.size,"
            " coalesce(r.end_time, r.start_time) AS ended FROM artifacts a"
            " JOIN runs r ON r.tenant_id = a.tenant_id AND r.run_id = a.run_id"
            " WHERE a.tenant_id = $1 AND coalesce(r.end_time, r.start_time) < $2"
            " ORDER BY a.run_id, a.path",
            tenant_id,
            ms(cutoff),
        )
        return [
            ArtifactFact(
                r["run_id"], r["experiment_id"], r["path"], r["digest"], int(r["size"]), int(r["ended"])
            )
            for r in rows
        ]

    async def production_versions(self, tenant_id: str) -> list[ProductionVersion]:
        rows = await self.pool.fetch(
            "SELECT model_name, version, coalesce(run_id, '') AS run_id, source FROM model_versions"
            " WHERE tenant_id = $1 AND ever_production ORDER BY model_name, version",
            tenant_id,
        )
        return [ProductionVersion(r["model_name"], r["version"], r["run_id"], r["source"]) for r in rows]

    async def references(self, tenant_id: str, digests: Sequence[str]) -> dict[str, int]:
        """Per digest: artifact rows of any tenant that reference it, plus the other tenants
        that store the blob without any row of theirs referencing it (an upload whose
        event is not projected yet): both keep the blob."""
        rows = await self.pool.fetch(
            "SELECT d.digest,"
            " (SELECT count(*) FROM artifacts a WHERE a.digest = d.digest)"
            " + (SELECT count(*) FROM artifact_blobs b WHERE b.digest = d.digest AND b.tenant_id <> $2"
            "    AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.tenant_id = b.tenant_id AND a.digest = b.digest))"
            " AS refs FROM unnest($1::text[]) AS d(digest)",
            sorted(set(digests)),
            tenant_id,
        )
        return {r["digest"]: int(r["refs"]) for r in rows}

    # ------------------------------------------------------------------ the sweep

    @asynccontextmanager
    async def sweep_lock(self) -> AsyncIterator[PgConnection]:
        """Hold the sweep lock (SweepBusy when another process has it)."""
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK):
                raise SweepBusy("a retention sweep is already running")
            try:
                yield conn
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)

    async def queue_blobs(self, conn: PgConnection, digests: Sequence[str]) -> None:
        """Remember blobs to delete once their rows are gone (before the events go out: a
        crash in between then leaves them queued for the next sweep, never orphaned)."""
        await conn.execute(
            "INSERT INTO retention_pending_blobs (digest) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            list(digests),
        )

    async def pending_blobs(self, conn: PgConnection) -> list[str]:
        return [r[0] for r in await conn.fetch("SELECT digest FROM retention_pending_blobs ORDER BY digest")]

    async def unreferenced(self, conn: PgConnection, digests: Sequence[str]) -> list[str]:
        """The digests no artifact row and no tenant's stored-blob record references."""
        rows = await conn.fetch(
            "SELECT d FROM unnest($1::text[]) AS d WHERE NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.digest = d)"
            " AND NOT EXISTS (SELECT 1 FROM artifact_blobs b WHERE b.digest = d) ORDER BY d",
            list(digests),
        )
        return [r[0] for r in rows]

    async def unqueue_blobs(self, conn: PgConnection, digests: Sequence[str]) -> None:
        await conn.execute(
            "DELETE FROM retention_pending_blobs WHERE digest = ANY($1::text[])", list(digests)
        )

    async def delete_blobs(
        self, conn: PgConnection, store: ArtifactStore, digests: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Delete the queued blobs nothing references any more: (deleted, kept).

        In groups, each under its blobs' exclusive locks (blob_locks.py): an upload of the same
        bytes either recorded its blob before the check (kept) or stores it again after the
        delete."""
        gone: list[str] = []
        for start in range(0, len(digests), BLOB_DELETE_GROUP):
            group = digests[start : start + BLOB_DELETE_GROUP]
            async with conn.transaction():
                await lock_for_delete(conn, group)
                unreferenced = await self.unreferenced(conn, group)
                for digest in unreferenced:
                    await store.delete(digest)
                await self.unqueue_blobs(conn, group)
            gone += unreferenced
        return gone, sorted(set(digests) - set(gone))

    async def _points_target(self) -> tuple[str, str]:
        """(table, ON CLUSTER clause) for mutations: a cluster's local table behind the Distributed one."""
        found = await asyncio.to_thread(
            self._ch.query_arrow,
            "SELECT engine, engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            {"db": self._ch.database, "t": METRIC_POINTS.name},
        )
        rows = found.to_pylist()
        if rows and rows[0]["engine"] == "Distributed":
            match = _DISTRIBUTED.match(str(rows[0]["engine_full"]))
            if match:
                cluster, database, local = match.groups()
                return f"{database}.{local}", f" ON CLUSTER {cluster}"
        return self._points, ""

    async def delete_points(self, tenant_id: str, run_ids: Sequence[str], cutoff_ms: int) -> None:
        """Delete the tenant's points of these runs received before the cutoff (lightweight DELETE)."""
        if not run_ids:
            return
        table, on_cluster = await self._points_target()
        await asyncio.to_thread(
            self._ch.command,
            f"DELETE FROM {table}{on_cluster} WHERE tenant_id = {{t:String}} AND run_id IN {{runs:Array(String)}}"
            f" AND {_RECEIVED_BEFORE}",
            {"t": tenant_id, "runs": _array(run_ids), "c": cutoff_ms},
        )

    async def reconcile(self, tenant_id: str, policy: RetentionPolicy) -> int:
        """Rewrite retention_days of the tenant's points that differ from its policy; rows rewritten.

        The mutation re-evaluates the TTL of the parts it rewrites, so points the new
        policy expires are gone when it finishes (mutations_sync)."""
        days = policy.clickhouse_days
        counted = await asyncio.to_thread(
            self._ch.query_arrow,
            f"SELECT count() AS n FROM {self._points} WHERE tenant_id = {{t:String}} AND retention_days != {{d:UInt16}}",
            {"t": tenant_id, "d": days},
        )
        stale = int(counted.column("n")[0].as_py())
        if stale:
            table, on_cluster = await self._points_target()
            await asyncio.to_thread(
                self._ch.command,
                f"ALTER TABLE {table}{on_cluster} UPDATE retention_days = {int(days)}"
                f" WHERE tenant_id = {_literal(tenant_id)} AND retention_days != {int(days)}"
                " SETTINGS mutations_sync = 2",
            )
        return stale
