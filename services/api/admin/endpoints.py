"""Operator routes: `POST /admin/replay` (superadmin), `GET /admin/dead-letters` (tenant admin)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Request

from runledger.auth.model import Action
from services.api.admin import repository
from services.api.admin.service import replay_projections
from services.api.deps import Auth, RuntimeDep, forbid, require_superadmin
from services.api.principal import Principal

router = APIRouter(prefix="/admin", tags=["admin"])


def _projector_lock(request: Request) -> threading.Lock | None:
    thread = getattr(request.app.state, "projector_thread", None)
    projector = getattr(thread, "projector", None)
    lock: threading.Lock | None = getattr(projector, "write_lock", None)
    return lock


@router.post("/replay", summary="Rebuild every projection from the event archive")
async def replay(
    request: Request, runtime: RuntimeDep, principal: Annotated[Principal, require_superadmin()]
) -> dict[str, Any]:
    """Wipe the Postgres and ClickHouse projections and re-apply the archived events in order."""
    stats = await replay_projections(runtime.clickhouse, runtime.pool, _projector_lock(request))
    return dataclasses.asdict(stats)


@router.get("/dead-letters", summary="Dead-lettered events counted by tenant and reason")
async def dead_letters(request: Request, runtime: RuntimeDep, principal: Auth) -> dict[str, Any]:
    """Counters kept by the projector in the same transaction as its checkpoint (exact).

    A tenant admin sees its own tenant's; the superadmin sees every tenant's.
    """
    if not (principal.is_superadmin or principal.can(Action.ADMIN)):
        raise forbid(runtime, request, principal, "tenant admin only")
    tenant = None if principal.is_superadmin else principal.tenant_id
    return {"dead_letters": await repository.dead_letter_counts(runtime.pool, tenant)}
