"""Applying retention plans: record every deletion as an event first, then delete.

One sweep (a tenant admin's POST /retention/sweep, `runledger retention apply`, or the
periodic sweep every RUNLEDGER_RETENTION_SWEEP_INTERVAL_S in each API process) holds a
Postgres advisory lock, so API replicas never sweep at the same time. Per tenant:

1. plan (runledger.retention.plan_for, the same code as the plan command; points go by
   when they were received, metric_points.ingested_at, like the TTL);
2. queue the blobs the plan frees (retention_pending_blobs);
3. emit run.metrics_expired / run.artifacts_expired and wait until they are projected
   (the projector deletes the artifact rows and refunds the tenant's storage);
4. delete the planned points in ClickHouse, then every queued blob that no artifact row
   and no tenant's stored-blob record references any more;
5. reconcile metric_points.retention_days with the policy (a changed policy re-applies to
   the tenant's stored points; the mutation re-evaluates their TTL). It comes last, so
   the points a shorter policy expires were deleted, and recorded, by this sweep first.

A sweep that stops between 2 and 4 leaves its blobs queued for the next one; points the
sweep did not delete are removed by the TTL one grace day later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from runledger.artifacts import ArtifactStore, open_store
from runledger.auth.keys import InvalidKey, parse_key
from runledger.auth.signing import signed_bytes
from runledger.events.codec import envelope_dict, producer
from runledger.events.models import EventType
from runledger.retention import ExpiryEvent, SweepReport, expiry_events, plan_for
from services.api.consistency import ConsistencyToken
from services.api.deps import Runtime
from services.api.retention.store import RetentionStore, SweepBusy
from services.api.writes import EventWriter, checked_event

log = logging.getLogger(__name__)

RETENTION_PRODUCER = producer("retention")

# (tenant, events) -> whether all of them are projected.
Emit = Callable[[str, Sequence[ExpiryEvent]], Awaitable[bool]]


def signed_emitter(writer: EventWriter, key_id: str, signing_key: bytes, timeout_s: float) -> Emit:
    """Emit through the API's publisher, signed with this key, and wait for the projection.

    A tenant admin's key signs its own tenant's events; the platform superadmin's key may
    sign them for any tenant (they are platform-reported, like findings)."""

    async def emit(tenant_id: str, events: Sequence[ExpiryEvent]) -> bool:
        outgoing = [
            checked_event(
                signed_bytes(
                    envelope_dict(
                        tenant_id=tenant_id,
                        type=EventType(e.type),
                        payload=e.payload,
                        producer=RETENTION_PRODUCER,
                        run_id=e.run_id,
                        experiment_id=e.experiment_id,
                    ),
                    key_id,
                    signing_key,
                )
            )
            for e in events
        ]
        result = await writer.publisher.publish(outgoing)
        token = ConsistencyToken.from_positions(result.incarnation, result.topic, result.positions)
        return await writer.waiter.wait(token, timeout_s)

    return emit


async def sweep(
    store: RetentionStore, artifacts: ArtifactStore, tenants: Sequence[str], as_of: datetime, emit: Emit
) -> list[SweepReport]:
    """Apply the plans of `tenants` at `as_of`; SweepBusy when another sweep runs."""
    reports = []
    async with store.sweep_lock() as conn:
        for tenant_id in tenants:
            leftover = await store.pending_blobs(conn)
            plan = await plan_for(store, tenant_id, as_of)
            await store.queue_blobs(conn, [b.digest for b in plan.blobs])
            events = expiry_events(plan)
            if events and not await emit(tenant_id, events):
                log.warning("retention sweep of %s: events not projected in time; deletions wait", tenant_id)
                reports.append(SweepReport(tenant_id, events=len(events), projected=False))
                continue
            if plan.metric_cutoff_ms is not None and plan.series:
                await store.delete_points(tenant_id, sorted(plan.series_by_run()), plan.metric_cutoff_ms)
            deleted, kept = await store.delete_blobs(
                conn, artifacts, sorted({*leftover, *(b.digest for b in plan.blobs)})
            )
            # Last: points the policy expires are deleted (recorded) above before the TTL sees them.
            await store.reconcile(tenant_id, plan.policy)
            reports.append(
                SweepReport(
                    tenant_id,
                    runs_with_metrics_expired=len(plan.series_by_run()),
                    points=plan.points,
                    artifacts=len(plan.artifacts),
                    artifact_bytes=plan.artifact_bytes,
                    blobs_deleted=deleted,
                    blobs_kept=kept,
                    events=len(events),
                )
            )
            if events or deleted:
                log.info("retention sweep of %s: %s", tenant_id, reports[-1].to_dict())
    return reports


async def _periodic(app: FastAPI, interval_s: float) -> None:
    """Sweep every tenant every interval_s, signed with the platform key."""
    while True:
        await asyncio.sleep(interval_s)
        runtime: Runtime | None = app.state.runtime
        if runtime is None:
            continue
        settings = runtime.settings
        token = settings.analysis_api_key or settings.bootstrap_api_key
        try:
            key = parse_key(token)
        except InvalidKey:
            log.warning("periodic retention sweep skipped: no platform key (RUNLEDGER_BOOTSTRAP_API_KEY)")
            continue
        try:
            store = RetentionStore(runtime.pool, runtime.clickhouse)
            artifacts: ArtifactStore | None = getattr(app.state, "artifact_store", None)
            if artifacts is None:
                artifacts = await asyncio.to_thread(open_store, settings)
                app.state.artifact_store = artifacts
            emit = signed_emitter(runtime.writer, key.key_id, key.signing_key, settings.write_wait_timeout_s)
            await sweep(store, artifacts, await store.tenants(), datetime.now(UTC), emit)
        except SweepBusy:
            log.info("periodic retention sweep skipped: another process is sweeping")
        except Exception:
            log.exception("periodic retention sweep failed; next try in %.0f s", interval_s)


@asynccontextmanager
async def periodic_sweeps(app: FastAPI) -> AsyncIterator[None]:
    """The retention router's lifespan: the periodic sweep while the app runs (0 = none)."""
    interval = float(app.state.settings.retention_sweep_interval_s)
    task = asyncio.create_task(_periodic(app, interval), name="retention-sweeps") if interval > 0 else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
