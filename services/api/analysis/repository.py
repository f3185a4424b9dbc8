"""Attribution rows and detector settings of one tenant, in Postgres."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from runledger.stores.postgres import PgConnection
from services.api.analysis.schemas import AnomalySetting


class AnalysisRepository:
    """Reads and writes of one tenant; a route cannot reach another tenant's rows."""

    def __init__(self, pool: asyncpg.Pool[Any], tenant_id: str) -> None:
        self.pool = pool
        self._tenant_id = tenant_id

    async def attribution(self, attribution_id: str) -> asyncpg.Record | None:
        """One attribution row."""
        return await self.pool.fetchrow(
            "SELECT attribution_id, experiment_id, metric, status, request::text AS request,"
            " result::text AS result, error, requested_at, finished_at FROM attributions"
            " WHERE tenant_id = $1 AND attribution_id = $2",
            self._tenant_id,
            attribution_id,
        )

    async def attributions(self, experiment_ids: list[str] | None, limit: int) -> list[asyncpg.Record]:
        """The newest attributions (of `experiment_ids` unless None)."""
        return await self.pool.fetch(
            "SELECT attribution_id, experiment_id, metric, status, request::text AS request,"
            " NULL::text AS result, error, requested_at, finished_at FROM attributions"
            " WHERE tenant_id = $1 AND ($2::text[] IS NULL OR experiment_id = ANY($2::text[]))"
            " ORDER BY requested_at DESC, attribution_id LIMIT $3",
            self._tenant_id,
            experiment_ids,
            limit,
        )

    async def experiment_run_ids(self, experiment_id: str, run_ids: list[str]) -> set[str]:
        """Which of `run_ids` are active runs of the experiment."""
        rows = await self.pool.fetch(
            "SELECT run_id FROM runs WHERE tenant_id = $1 AND experiment_id = $2"
            " AND run_id = ANY($3::text[]) AND lifecycle_stage = 'active'",
            self._tenant_id,
            experiment_id,
            run_ids,
        )
        return {r["run_id"] for r in rows}

    async def experiment_exists(self, experiment_id: str) -> bool:
        """Whether the tenant has this experiment."""
        found = await self.pool.fetchval(
            "SELECT 1 FROM experiments WHERE tenant_id = $1 AND experiment_id = $2",
            self._tenant_id,
            experiment_id,
        )
        return found is not None

    async def settings(self) -> list[AnomalySetting]:
        """The tenant's detector settings."""
        rows = await self.pool.fetch(
            "SELECT experiment_id, key, overrides::text AS overrides FROM anomaly_settings"
            " WHERE tenant_id = $1 ORDER BY experiment_id, key",
            self._tenant_id,
        )
        return [
            AnomalySetting(
                experiment_id=r["experiment_id"], key=r["key"], overrides=orjson.loads(r["overrides"])
            )
            for r in rows
        ]

    async def put_setting(self, conn: PgConnection, setting: AnomalySetting) -> None:
        """Create or replace one settings row."""
        await conn.execute(
            "INSERT INTO anomaly_settings (tenant_id, experiment_id, key, overrides, updated_at)"
            " VALUES ($1, $2, $3, $4::jsonb, now()) ON CONFLICT (tenant_id, experiment_id, key)"
            " DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
            self._tenant_id,
            setting.experiment_id,
            setting.key,
            orjson.dumps(setting.overrides).decode(),
        )

    async def delete_setting(self, conn: PgConnection, experiment_id: str, key: str) -> bool:
        """Remove one settings row; False when there was none."""
        status = await conn.execute(
            "DELETE FROM anomaly_settings WHERE tenant_id = $1 AND experiment_id = $2 AND key = $3",
            self._tenant_id,
            experiment_id,
            key,
        )
        return bool(status == "DELETE 1")
