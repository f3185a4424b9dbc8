"""Applies a projection's metadata operations to Postgres (idempotently, in event order)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import orjson

from runledger.events.codec import DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, DecodedEvent
from runledger.events.models import (
    AnomalyDetectedPayload,
    ArtifactLoggedPayload,
    AttributionComputedPayload,
    AttributionRequestedPayload,
    CodeStateCapturedPayload,
    EnvironmentCapturedPayload,
    EventType,
    ExperimentCreatedPayload,
    ExperimentRenamedPayload,
    ExperimentTagDeletedPayload,
    ExperimentTagSetPayload,
    InputsLoggedPayload,
    LineageLinkedPayload,
    LoggedModelCreatedPayload,
    LoggedModelDeletedPayload,
    LoggedModelUpdatedPayload,
    ModelVersionRegisteredPayload,
    OutputsLoggedPayload,
    ParamsLoggedPayload,
    RunStartedPayload,
    StatusChangedPayload,
    TagsDeletedPayload,
    TagsSetPayload,
)
from runledger.stores.postgres import PgConnection
from services.ingest.latest_writer import upsert_latest
from services.ingest.projection import Projection
from services.ingest.retention_writer import RETENTION_HANDLERS

# What the metadata store refuses because of one event's data: a constraint or value error
# of PostgreSQL, an integer outside int8 (asyncpg's client-side DataError), JSON nested deeper
# than orjson writes. The batch is then written event by event and such events dead-lettered.
REFUSED: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.exceptions._base.DataError,
    orjson.JSONEncodeError,
)


def _ms(event: DecodedEvent) -> int:
    return int(event.envelope.occurred_at.timestamp() * 1000)


async def _experiment_created(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ExperimentCreatedPayload)
    env = ev.envelope
    # A second creation of the same id or name is a no-op: creation is idempotent.
    await conn.execute(
        "INSERT INTO experiments (tenant_id, experiment_id, name, artifact_location, creation_time,"
        " last_update_time) VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
        env.tenant_id,
        env.experiment_id,
        p.name,
        p.artifact_location or "",
        _ms(ev),
    )
    if p.tags:
        await _upsert_pairs(
            conn, "experiment_tags", "experiment_id", env.tenant_id, env.experiment_id, p.tags
        )


async def _experiment_renamed(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ExperimentRenamedPayload)
    env = ev.envelope
    await conn.execute(
        "UPDATE experiments SET name = $3, last_update_time = $4 WHERE tenant_id = $1 AND experiment_id = $2"
        " AND NOT EXISTS (SELECT 1 FROM experiments WHERE tenant_id = $1 AND name = $3)",
        env.tenant_id,
        env.experiment_id,
        p.name,
        _ms(ev),
    )


async def _experiment_stage(conn: PgConnection, ev: DecodedEvent) -> None:
    stage = "deleted" if ev.envelope.type is EventType.EXPERIMENT_DELETED else "active"
    await conn.execute(
        "UPDATE experiments SET lifecycle_stage = $3, last_update_time = $4"
        " WHERE tenant_id = $1 AND experiment_id = $2",
        ev.envelope.tenant_id,
        ev.envelope.experiment_id,
        stage,
        _ms(ev),
    )


async def _experiment_tag(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ExperimentTagSetPayload)
    env = ev.envelope
    await _upsert_pairs(
        conn, "experiment_tags", "experiment_id", env.tenant_id, env.experiment_id, {p.key: p.value}
    )


async def _experiment_tag_deleted(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ExperimentTagDeletedPayload)
    await conn.execute(
        "DELETE FROM experiment_tags WHERE tenant_id = $1 AND experiment_id = $2 AND key = $3",
        ev.envelope.tenant_id,
        ev.envelope.experiment_id,
        p.key,
    )


async def _upsert_pairs(
    conn: PgConnection, table: str, owner: str, tenant_id: str, owner_id: Any, pairs: dict[str, str]
) -> None:
    await conn.execute(
        f"INSERT INTO {table} (tenant_id, {owner}, key, value)"
        " SELECT $1, $2, k, v FROM unnest($3::text[], $4::text[]) AS t(k, v)"
        " ON CONFLICT (tenant_id, " + owner + ", key) DO UPDATE SET value = excluded.value",
        tenant_id,
        owner_id,
        list(pairs.keys()),
        list(pairs.values()),
    )


async def _run_started(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, RunStartedPayload)
    env = ev.envelope
    await conn.execute(
        "INSERT INTO runs (tenant_id, run_id, experiment_id, parent_run_id, name, user_id, status, start_time)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, run_id) DO NOTHING",
        env.tenant_id,
        env.run_id,
        env.experiment_id,
        p.parent_run_id,
        p.name,
        p.user_id,
        p.status.value,
        p.start_time,
    )
    if p.tags:
        await _upsert_pairs(conn, "tags", "run_id", env.tenant_id, env.run_id, p.tags)


async def _params(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ParamsLoggedPayload)
    # Params are immutable: the first value wins (the API rejects changes up front).
    await conn.execute(
        "INSERT INTO params (tenant_id, run_id, key, value)"
        " SELECT $1, $2, k, v FROM unnest($3::text[], $4::text[]) AS t(k, v) ON CONFLICT DO NOTHING",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        list(p.params.keys()),
        list(p.params.values()),
    )


# MLflow keeps a run's name in this tag too; setting it renames the run (searches and
# lists read runs.name).
RUN_NAME_TAG = "mlflow.runName"


async def _tags_set(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, TagsSetPayload)
    await _upsert_pairs(conn, "tags", "run_id", ev.envelope.tenant_id, ev.envelope.run_id, p.tags)
    if RUN_NAME_TAG in p.tags:
        await conn.execute(
            "UPDATE runs SET name = $3 WHERE tenant_id = $1 AND run_id = $2",
            ev.envelope.tenant_id,
            ev.envelope.run_id,
            p.tags[RUN_NAME_TAG],
        )


async def _tags_deleted(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, TagsDeletedPayload)
    await conn.execute(
        "DELETE FROM tags WHERE tenant_id = $1 AND run_id = $2 AND key = ANY($3::text[])",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        p.keys,
    )


async def _status(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, StatusChangedPayload)
    await conn.execute(
        "UPDATE runs SET status = $3, end_time = COALESCE($4, end_time) WHERE tenant_id = $1 AND run_id = $2",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        p.status.value,
        p.end_time,
    )


async def _run_stage(conn: PgConnection, ev: DecodedEvent) -> None:
    stage = "deleted" if ev.envelope.type is EventType.RUN_DELETED else "active"
    await conn.execute(
        "UPDATE runs SET lifecycle_stage = $3 WHERE tenant_id = $1 AND run_id = $2",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        stage,
    )


async def _artifact(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ArtifactLoggedPayload)
    await conn.execute(
        "INSERT INTO artifacts (tenant_id, run_id, path, size, digest, media_type) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (tenant_id, run_id, path) DO UPDATE SET size = excluded.size, digest = excluded.digest,"
        " media_type = excluded.media_type",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        p.path,
        p.size,
        p.digest,
        p.media_type,
    )


async def _inputs(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, InputsLoggedPayload)
    for ds in p.datasets:
        await conn.execute(
            "INSERT INTO dataset_inputs (tenant_id, run_id, name, digest, body) VALUES ($1, $2, $3, $4, $5::jsonb)"
            " ON CONFLICT DO NOTHING",
            ev.envelope.tenant_id,
            ev.envelope.run_id,
            ds.name,
            ds.digest,
            orjson.dumps(ds.model_dump(by_alias=True)).decode(),
        )


async def _outputs(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, OutputsLoggedPayload)
    await conn.execute(
        "INSERT INTO run_model_outputs (tenant_id, run_id, model_id, step)"
        " SELECT $1, $2, m, s FROM unnest($3::text[], $4::int8[]) AS t(m, s)"
        " ON CONFLICT (tenant_id, run_id, model_id) DO UPDATE SET step = excluded.step",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        [m.model_id for m in p.models],
        [m.step for m in p.models],
    )


async def _logged_model_created(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, LoggedModelCreatedPayload)
    env = ev.envelope
    # A second creation of the same id (a retried or promoted model) is a no-op.
    inserted = await conn.execute(
        "INSERT INTO logged_models (tenant_id, model_id, experiment_id, name, artifact_location,"
        " creation_timestamp_ms, last_updated_timestamp_ms, status, model_type, source_run_id, creator_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        env.tenant_id,
        p.model_id,
        env.experiment_id,
        p.name,
        p.artifact_location,
        p.creation_timestamp_ms,
        p.creation_timestamp_ms,
        p.status,
        p.model_type,
        p.source_run_id,
        p.creator_id,
    )
    if not inserted.endswith(" 1"):
        return
    for table, pairs in (("logged_model_tags", p.tags), ("logged_model_params", p.params)):
        if pairs:
            await _upsert_pairs(conn, table, "model_id", env.tenant_id, p.model_id, pairs)


async def _logged_model_updated(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, LoggedModelUpdatedPayload)
    tenant = ev.envelope.tenant_id
    # Only a model that exists (in its tenant) changes: the API checks before it writes.
    touched = await conn.execute(
        "UPDATE logged_models SET status = COALESCE($3, status),"
        " last_updated_timestamp_ms = GREATEST(last_updated_timestamp_ms, $4) WHERE tenant_id = $1 AND model_id = $2",
        tenant,
        p.model_id,
        p.status,
        _ms(ev),
    )
    if not touched.endswith(" 1"):
        return
    if p.tags:
        await _upsert_pairs(conn, "logged_model_tags", "model_id", tenant, p.model_id, p.tags)
    if p.deleted_tags:
        await conn.execute(
            "DELETE FROM logged_model_tags WHERE tenant_id = $1 AND model_id = $2 AND key = ANY($3::text[])",
            tenant,
            p.model_id,
            p.deleted_tags,
        )
    if p.params:
        # Like a run's params, the first value wins (MLflow's store keeps one row per key too).
        await conn.execute(
            "INSERT INTO logged_model_params (tenant_id, model_id, key, value)"
            " SELECT $1, $2, k, v FROM unnest($3::text[], $4::text[]) AS t(k, v) ON CONFLICT DO NOTHING",
            tenant,
            p.model_id,
            list(p.params.keys()),
            list(p.params.values()),
        )
    if p.metrics:
        await conn.execute(
            "INSERT INTO logged_model_metrics (tenant_id, model_id, key, value, timestamp, step, run_id,"
            " dataset_name, dataset_digest) SELECT $1, $2, * FROM unnest($3::text[], $4::float8[], $5::int8[],"
            " $6::int8[], $7::text[], $8::text[], $9::text[]) ON CONFLICT DO NOTHING",
            tenant,
            p.model_id,
            [m.key for m in p.metrics],
            [float(m.value) for m in p.metrics],  # "NaN" / "Infinity" / "-Infinity" parse too
            [m.timestamp for m in p.metrics],
            [m.step for m in p.metrics],
            [m.run_id or "" for m in p.metrics],
            [m.dataset_name for m in p.metrics],
            [m.dataset_digest for m in p.metrics],
        )


async def _logged_model_deleted(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, LoggedModelDeletedPayload)
    await conn.execute(
        "UPDATE logged_models SET lifecycle_stage = 'deleted',"
        " last_updated_timestamp_ms = GREATEST(last_updated_timestamp_ms, $3) WHERE tenant_id = $1 AND model_id = $2",
        ev.envelope.tenant_id,
        p.model_id,
        _ms(ev),
    )


async def _document(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, CodeStateCapturedPayload | EnvironmentCapturedPayload)
    kind = "code_state" if ev.envelope.type is EventType.CODE_STATE_CAPTURED else "environment"
    await conn.execute(
        "INSERT INTO run_documents (tenant_id, run_id, kind, body) VALUES ($1, $2, $3, $4::jsonb)"
        " ON CONFLICT (tenant_id, run_id, kind) DO UPDATE SET body = excluded.body",
        ev.envelope.tenant_id,
        ev.envelope.run_id,
        kind,
        orjson.dumps(p.model_dump()).decode(),
    )


async def _model_version(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, ModelVersionRegisteredPayload)
    await conn.execute(
        "INSERT INTO model_versions (tenant_id, model_name, version, run_id, source, stage, ever_production)"
        " VALUES ($1, $2, $3, $4, $5, $6, lower($6) = 'production') ON CONFLICT (tenant_id, model_name, version)"
        " DO UPDATE SET stage = excluded.stage, source = excluded.source,"
        # Once in Production, always protected from retention (never cleared).
        " ever_production = model_versions.ever_production OR excluded.ever_production",
        ev.envelope.tenant_id,
        p.model_name,
        p.version,
        ev.envelope.run_id,
        p.source,
        p.stage,
    )


async def _lineage(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, LineageLinkedPayload)
    await conn.execute(
        "INSERT INTO lineage_edges (tenant_id, source_kind, source_id, target_kind, target_id, relation)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        ev.envelope.tenant_id,
        p.source_kind,
        p.source_id,
        p.target_kind,
        p.target_id,
        p.relation,
    )


async def _finding(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, AnomalyDetectedPayload | AttributionComputedPayload)
    kind = p.kind if isinstance(p, AnomalyDetectedPayload) else "attribution"
    env = ev.envelope
    inserted = await conn.execute(
        "INSERT INTO findings (tenant_id, event_id, run_id, experiment_id, kind, body, occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT DO NOTHING",
        env.tenant_id,
        env.event_id,
        env.run_id,
        env.experiment_id,
        kind,
        orjson.dumps(p.model_dump()).decode(),
        env.occurred_at,
    )
    if inserted.endswith(" 1"):
        # Alert routing: one delivery per matching webhook, in this transaction. The primary key
        # makes a replayed finding a no-op; webhooks registered after the finding (less a clock
        # skew grace) get none, so `runledger replay` (which re-inserts every finding) sends no backlog.
        await conn.execute(
            "INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id)"
            " SELECT tenant_id, webhook_id, $2 FROM webhooks WHERE tenant_id = $1 AND enabled"
            " AND (cardinality(kinds) = 0 OR $3 = ANY(kinds))"
            " AND created_at <= $4::timestamptz + interval '5 minutes'"
            " ON CONFLICT DO NOTHING",
            env.tenant_id,
            env.event_id,
            kind,
            env.occurred_at,
        )


async def _attribution_requested(conn: PgConnection, ev: DecodedEvent) -> None:
    p = ev.payload
    assert isinstance(p, AttributionRequestedPayload)
    env = ev.envelope
    await conn.execute(
        "INSERT INTO attributions (tenant_id, attribution_id, experiment_id, metric, request, status,"
        " requested_at) VALUES ($1, $2, $3, $4, $5::jsonb, 'pending', $6) ON CONFLICT DO NOTHING",
        env.tenant_id,
        p.attribution_id,
        env.experiment_id,
        p.metric,
        orjson.dumps(p.model_dump()).decode(),
        env.occurred_at,
    )


async def _attribution_computed(conn: PgConnection, ev: DecodedEvent) -> None:
    await _finding(conn, ev)
    p = ev.payload
    assert isinstance(p, AttributionComputedPayload)
    await conn.execute(
        "UPDATE attributions SET status = $3, result = $4::jsonb, error = $5, finished_at = $6,"
        " claimed_until = NULL WHERE tenant_id = $1 AND attribution_id = $2",
        ev.envelope.tenant_id,
        p.attribution_id,
        p.status,
        orjson.dumps(p.result).decode(),
        p.error,
        ev.envelope.occurred_at,
    )


_Handler = Callable[[PgConnection, DecodedEvent], Awaitable[None]]

_HANDLERS: dict[EventType, _Handler] = {
    EventType.EXPERIMENT_CREATED: _experiment_created,
    EventType.EXPERIMENT_RENAMED: _experiment_renamed,
    EventType.EXPERIMENT_DELETED: _experiment_stage,
    EventType.EXPERIMENT_RESTORED: _experiment_stage,
    EventType.EXPERIMENT_TAG_SET: _experiment_tag,
    EventType.EXPERIMENT_TAG_DELETED: _experiment_tag_deleted,
    EventType.RUN_STARTED: _run_started,
    EventType.PARAMS_LOGGED: _params,
    EventType.TAGS_SET: _tags_set,
    EventType.TAGS_DELETED: _tags_deleted,
    EventType.STATUS_CHANGED: _status,
    EventType.RUN_DELETED: _run_stage,
    EventType.RUN_RESTORED: _run_stage,
    EventType.ARTIFACT_LOGGED: _artifact,
    EventType.INPUTS_LOGGED: _inputs,
    EventType.OUTPUTS_LOGGED: _outputs,
    EventType.CODE_STATE_CAPTURED: _document,
    EventType.ENVIRONMENT_CAPTURED: _document,
    EventType.MODEL_VERSION_REGISTERED: _model_version,
    EventType.LOGGED_MODEL_CREATED: _logged_model_created,
    EventType.LOGGED_MODEL_UPDATED: _logged_model_updated,
    EventType.LOGGED_MODEL_DELETED: _logged_model_deleted,
    EventType.LINEAGE_LINKED: _lineage,
    EventType.ANOMALY_DETECTED: _finding,
    EventType.ATTRIBUTION_REQUESTED: _attribution_requested,
    EventType.ATTRIBUTION_COMPUTED: _attribution_computed,
    **RETENTION_HANDLERS,
}


async def ensure_tenants(conn: PgConnection, tenant_ids: set[str]) -> None:
    """Every tenant seen gets its row and the "Default" experiment (id "0") MLflow expects."""
    if not tenant_ids:
        return
    ids = sorted(tenant_ids)
    await conn.execute(
        "INSERT INTO tenants (tenant_id, name) SELECT t, t FROM unnest($1::text[]) AS t ON CONFLICT DO NOTHING",
        ids,
    )
    # Dated from the tenant row, not now(), so a replay rebuilds it identically.
    await conn.execute(
        "INSERT INTO experiments (tenant_id, experiment_id, name, creation_time, last_update_time)"
        " SELECT tenant_id, $2, $3, (extract(epoch from created_at) * 1000)::bigint,"
        " (extract(epoch from created_at) * 1000)::bigint"
        " FROM tenants WHERE tenant_id = ANY($1::text[]) ON CONFLICT DO NOTHING",
        ids,
        DEFAULT_EXPERIMENT_ID,
        DEFAULT_EXPERIMENT_NAME,
    )


RejectEvent = Callable[[DecodedEvent, str], None]


async def apply_projection(
    conn: PgConnection, projection: Projection, reject: RejectEvent | None = None
) -> None:
    """Write the batch's metadata (call inside the batch's transaction).

    With `reject`, each event runs in its own savepoint and one the database refuses
    is handed to `reject` instead of failing the batch (the slow path after a failure).
    """
    await ensure_tenants(conn, projection.tenants)
    for event in projection.metadata_events:
        handler = _HANDLERS[event.envelope.type]
        if reject is None:
            await handler(conn, event)
            continue
        try:
            async with conn.transaction():
                await handler(conn, event)
        except REFUSED as exc:
            reject(event, f"rejected by metadata store: {exc}")
    if projection.latest is not None:
        await upsert_latest(conn, projection.latest)


async def already_applied(conn: PgConnection, event_ids: list[str]) -> set[str]:
    """The subset of these event ids a previous batch already projected."""
    rows = await conn.fetch(
        "SELECT event_id::text FROM applied_events WHERE event_id = ANY($1::uuid[])", event_ids
    )
    return {r[0] for r in rows}


async def record_applied(conn: PgConnection, event_ids: list[str]) -> None:
    """Remember these event ids as projected (same transaction as their effects)."""
    if event_ids:
        await conn.execute(
            "INSERT INTO applied_events (event_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING",
            event_ids,
        )


async def count_dead_letters(conn: PgConnection, counts: Mapping[tuple[str, str], int]) -> None:
    """Add a batch's dead letters to the per-(tenant, reason) counters (same transaction)."""
    if not counts:
        return
    await conn.execute(
        "INSERT INTO dead_letters_count (tenant_id, reason, count)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])"
        " ON CONFLICT (tenant_id, reason) DO UPDATE SET count = dead_letters_count.count + excluded.count",
        [tenant for tenant, _ in counts],
        [reason for _, reason in counts],
        list(counts.values()),
    )
