"""HTTP routes of retention policies (docs/retention.md): read, set, plan, sweep.

- GET /retention-policy: any member of the tenant (what happens to their data is no secret);
- PUT /retention-policy: tenant admin; a tenant.retention_policy_set event, answered once
  projected (read-your-writes) and applied: a sweep deletes what the new policy expires
  (recorded as events), then the tenant's points are re-stamped with the new retention
  (their TTL re-evaluated);
- GET /retention/plan: tenant admin; what a sweep would delete at `as_of` (default now);
- POST /retention/sweep: tenant admin; apply the plan now (or at an earlier `as_of`).

`tenant` (plan, sweep) names another tenant: platform superadmin only.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from runledger.artifacts import ArtifactStore
from runledger.events.models import EventType
from runledger.retention import MAX_DAYS, RetentionPolicy, from_ms, ms, plan_for
from runledger.stores.postgres.directory import AuditEntry, append_audit
from services.api.artifacts.http import artifact_store
from services.api.deps import Auth, RuntimeDep, TenantAdminPrincipal, forbid
from services.api.errors import InvalidParameter, InvalidState, TemporarilyUnavailable
from services.api.principal import Principal
from services.api.retention.store import RetentionStore, SweepBusy
from services.api.retention.sweeper import periodic_sweeps, signed_emitter, sweep
from services.api.schemas import READ_RESPONSES, WRITE_RESPONSES
from services.api.writes import build_event

router = APIRouter(tags=["retention"], lifespan=periodic_sweeps)

Days = Annotated[int | None, Field(ge=1, le=MAX_DAYS)]


class RetentionPolicyBody(BaseModel):
    """A tenant's whole retention policy (a PUT replaces it); null days = kept forever."""

    model_config = ConfigDict(extra="forbid")

    metric_points_days: Days = Field(
        365, description="Days raw metric points are kept after they were received."
    )
    artifacts_days: Days = Field(183, description="Days a run's artifacts are kept after the run ended.")
    keep_production_models: bool = Field(
        True, description="Keep the binaries of model versions ever marked Production forever."
    )


class RetentionPolicyView(RetentionPolicyBody):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str
    is_default: bool = Field(description="True when the tenant never set a policy (the defaults apply).")
    updated_at: int | None = Field(None, description="Milliseconds since the epoch.")
    updated_by: str = Field("", description="Key id that set it.")
    projected: bool = True
    applied: dict[str, Any] | None = Field(
        None, description="What applying the new policy deleted at once (null when not yet applied)."
    )


_SWEEP_RESPONSES: dict[int | str, dict[str, object]] = {
    **WRITE_RESPONSES,
    409: {"description": "INVALID_STATE: another retention sweep is running; retry later."},
}


async def _store(runtime: RuntimeDep) -> RetentionStore:
    return RetentionStore(runtime.pool, runtime.clickhouse)


Store = Annotated[RetentionStore, Depends(_store)]


async def _view(store: RetentionStore, tenant_id: str, projected: bool = True) -> RetentionPolicyView:
    row = await store.policy_row(tenant_id)
    if row is None:
        return RetentionPolicyView(tenant_id=tenant_id, is_default=True, projected=projected)
    return RetentionPolicyView(
        tenant_id=tenant_id,
        metric_points_days=row["metric_points_days"],
        artifacts_days=row["artifacts_days"],
        keep_production_models=row["keep_production_models"],
        is_default=False,
        updated_at=ms(row["updated_at"]),
        updated_by=row["updated_by"],
        projected=projected,
    )


def _target(request: Request, runtime: RuntimeDep, principal: Principal, tenant: str | None) -> str:
    """The tenant acted on: the caller's, or another one for the platform superadmin."""
    if tenant is None or tenant == principal.tenant_id:
        return principal.tenant_id
    if not principal.is_superadmin:
        raise forbid(runtime, request, principal, "another tenant's retention: platform superadmin only")
    return tenant


def _audit(principal: Principal, action: str, tenant_id: str, details: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        tenant_id=tenant_id,
        actor=principal.principal_id,
        action=action,
        outcome="ok",
        target=tenant_id,
        source=principal.source,
        details=details,
    )


def _as_of(value: int | None, *, not_after_now: bool) -> datetime:
    now = datetime.now(UTC)
    if value is None:
        return now
    at = from_ms(value)
    if not_after_now and at > now:
        raise InvalidParameter("as_of: a sweep cannot apply a future date (plan it instead)")
    return at


AsOf = Annotated[
    int | None,
    Query(ge=0, le=9_999_999_999_999, description="Milliseconds since the epoch; default now."),
]
PreviewDays = Annotated[
    int | None, Query(ge=0, le=MAX_DAYS, description="Preview: plan under this retention (0 = forever).")
]
TenantParam = Annotated[
    str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$", description="Superadmin: another tenant.")
]


@router.get("/retention-policy", response_model=RetentionPolicyView, responses=READ_RESPONSES)
async def get_retention_policy(principal: Auth, store: Store) -> RetentionPolicyView:
    """The tenant's retention policy (the defaults when it never set one)."""
    return await _view(store, principal.tenant_id)


@router.put("/retention-policy", response_model=RetentionPolicyView, responses=WRITE_RESPONSES)
async def put_retention_policy(
    body: RetentionPolicyBody,
    request: Request,
    principal: TenantAdminPrincipal,
    runtime: RuntimeDep,
    store: Store,
    response: Response,
) -> RetentionPolicyView:
    """Replace the tenant's retention policy (tenant admin), then apply it at once: what it
    expires is deleted by a sweep (each deletion recorded as an event), and the stored
    points take the new retention. GET /retention/plan?as_of= shows what goes before."""
    policy = RetentionPolicy(body.metric_points_days, body.artifacts_days, body.keep_production_models)
    event = build_event(principal, EventType.RETENTION_POLICY_SET, policy.to_dict())
    # Keyed by tenant: a tenant's policy changes stay in order on one partition.
    event = dataclasses.replace(event, key=f"tenant/{principal.tenant_id}".encode())
    receipt = await runtime.writer.write(principal, [event])
    async with runtime.pool.acquire() as conn:
        await append_audit(
            conn, [_audit(principal, "retention_policy.set", principal.tenant_id, policy.to_dict())]
        )
    if not receipt.projected:
        response.status_code = 202
        return await _view(store, principal.tenant_id, projected=False)
    emit = signed_emitter(
        runtime.writer, principal.key_id, principal.signing_key, runtime.settings.write_wait_timeout_s
    )
    view = await _view(store, principal.tenant_id)
    # Busy: the sweep running now, or the next one, applies it.
    with contextlib.suppress(SweepBusy):
        reports = await sweep(
            store, await artifact_store(request, runtime), [principal.tenant_id], datetime.now(UTC), emit
        )
        view.applied = reports[0].to_dict()
    return view


@router.get("/retention/plan", responses=READ_RESPONSES)
async def retention_plan(
    request: Request,
    principal: TenantAdminPrincipal,
    runtime: RuntimeDep,
    store: Store,
    as_of: AsOf = None,
    tenant: TenantParam = None,
    metric_points_days: PreviewDays = None,
    artifacts_days: PreviewDays = None,
    keep_production_models: Annotated[bool | None, Query(description="Preview: another setting.")] = None,
) -> dict[str, Any]:
    """What a sweep would delete at `as_of` (tenant admin): metric points per run and key with
    counts, artifacts with bytes, blobs freed, and the production model binaries kept.

    `metric_points_days`, `artifacts_days` (0 = forever) and `keep_production_models` preview
    a policy before it is set: a PUT of the policy applies it at once."""
    target = _target(request, runtime, principal, tenant)
    policy: RetentionPolicy | None = None
    if metric_points_days is not None or artifacts_days is not None or keep_production_models is not None:
        current = await store.policy(target)

        def pick(preview: int | None, days: int | None) -> int | None:
            return days if preview is None else (preview or None)

        policy = RetentionPolicy(
            pick(metric_points_days, current.metric_points_days),
            pick(artifacts_days, current.artifacts_days),
            current.keep_production_models if keep_production_models is None else keep_production_models,
        )
    plan = await plan_for(store, target, _as_of(as_of, not_after_now=False), policy)
    return plan.to_dict()


@router.post("/retention/sweep", responses=_SWEEP_RESPONSES)
async def retention_sweep(
    request: Request,
    principal: TenantAdminPrincipal,
    runtime: RuntimeDep,
    store: Store,
    as_of: AsOf = None,
    tenant: TenantParam = None,
) -> dict[str, Any]:
    """Apply the tenant's retention now (tenant admin): every deletion is recorded as a
    run.metrics_expired / run.artifacts_expired event before anything is deleted."""
    target = _target(request, runtime, principal, tenant)
    at = _as_of(as_of, not_after_now=True)
    artifacts: ArtifactStore = await artifact_store(request, runtime)
    emit = signed_emitter(
        runtime.writer, principal.key_id, principal.signing_key, runtime.settings.write_wait_timeout_s
    )
    try:
        reports = await sweep(store, artifacts, [target], at, emit)
    except SweepBusy as exc:
        raise InvalidState(str(exc)) from None
    except (TimeoutError, OSError) as exc:
        raise TemporarilyUnavailable(f"retention sweep interrupted: {exc}") from None
    report = reports[0].to_dict()
    async with runtime.pool.acquire() as conn:
        await append_audit(conn, [_audit(principal, "retention.sweep", target, report)])
    return report
