"""Projection of the retention events into Postgres (docs/retention.md).

- tenant.retention_policy_set: the tenant's row of retention_policies, when the key that
  signed it belongs to an admin of the tenant or a platform superadmin (the gate lets any
  principal who may write the tenant through; a tenant setting needs more). A refused one
  changes nothing and is logged. Policies apply in the order they occurred.
- run.artifacts_expired: the run's artifact rows go (each only while it still has the
  digest the event names: a path logged again since keeps its new file), and the tenant's
  storage usage is refunded for every blob it no longer references (artifact_blobs).
- run.metrics_expired: a record only; the sweeper deletes the points in ClickHouse after
  the event is projected, and the TTL removes whatever a replay brings back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from runledger.events.codec import DecodedEvent
from runledger.events.models import ArtifactsExpiredPayload, EventType, RetentionPolicySetPayload
from runledger.stores.postgres import PgConnection

log = logging.getLogger(__name__)

_MAY_SET_POLICY = """
SELECT EXISTS (
    SELECT 1 FROM api_keys k JOIN principals p ON p.principal_id = k.principal_id
    WHERE k.key_id = $1 AND (p.is_superadmin OR EXISTS (
        SELECT 1 FROM role_grants g
        WHERE g.principal_id = p.principal_id AND g.tenant_id = $2 AND g.role = 'admin'
          AND g.experiment_id = '')))
"""


async def _policy_set(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, RetentionPolicySetPayload)
    env = ev.envelope
    if not await conn.fetchval(_MAY_SET_POLICY, env.key_id or "", env.tenant_id):
        log.warning(
            "tenant.retention_policy_set %s of tenant %s ignored: key %s is not a tenant admin's",
            env.event_id,
            env.tenant_id,
            env.key_id,
        )
        return
    await conn.execute(
        "INSERT INTO retention_policies (tenant_id, metric_points_days, artifacts_days, keep_production_models,"
        " updated_at, updated_by, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (tenant_id) DO UPDATE SET metric_points_days = excluded.metric_points_days,"
        " artifacts_days = excluded.artifacts_days, keep_production_models = excluded.keep_production_models,"
        " updated_at = excluded.updated_at, updated_by = excluded.updated_by, event_id = excluded.event_id"
        " WHERE retention_policies.updated_at <= excluded.updated_at",
        env.tenant_id,
        p.metric_points_days,
        p.artifacts_days,
        p.keep_production_models,
        env.occurred_at,
        env.key_id or "",
        env.event_id,
    )


async def _artifacts_expired(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ArtifactsExpiredPayload)
    env = ev.envelope
    digests = sorted({a.digest for a in p.artifacts})
    await conn.execute(
        "DELETE FROM artifacts a USING unnest($3::text[], $4::text[]) AS e(path, digest)"
        " WHERE a.tenant_id = $1 AND a.run_id = $2 AND a.path = e.path AND a.digest = e.digest",
        env.tenant_id,
        env.run_id,
        [a.path for a in p.artifacts],
        [a.digest for a in p.artifacts],
    )
    # Blobs the tenant no longer references stop counting against its storage quota.
    freed = await conn.fetchval(
        "WITH gone AS (DELETE FROM artifact_blobs b WHERE b.tenant_id = $1 AND b.digest = ANY($2::text[])"
        " AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.tenant_id = $1 AND a.digest = b.digest)"
        " RETURNING b.size) SELECT coalesce(sum(size), 0)::bigint FROM gone",
        env.tenant_id,
        digests,
    )
    if freed:
        await conn.execute(
            "UPDATE tenant_usage SET artifact_bytes = greatest(artifact_bytes - $2, 0) WHERE tenant_id = $1",
            env.tenant_id,
            freed,
        )


async def _metrics_expired(conn: PgConnection, ev: DecodedEvent) -> None:
    """Nothing in Postgres: latest_metrics keeps each series' latest value (a summary)."""


RETENTION_HANDLERS: dict[EventType, Callable[[PgConnection, DecodedEvent], Awaitable[None]]] = {
    EventType.RETENTION_POLICY_SET: _policy_set,
    EventType.ARTIFACTS_EXPIRED: _artifacts_expired,
    EventType.METRICS_EXPIRED: _metrics_expired,
}
