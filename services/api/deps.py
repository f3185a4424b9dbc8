"""Typed dependencies of the routes: the runtime, the caller (principal), read consistency.

Tenancy plugs in at `get_principal`: today every request acts for the configured
default tenant; an API-key lookup will resolve the principal from the request's
credentials instead, and nothing downstream changes (repositories scope every
query by `principal.tenant_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Query, Request

from runledger.config import Settings
from runledger.stores.clickhouse import ClickHouse
from services.api.consistency import ConsistencyToken
from services.api.errors import TemporarilyUnavailable
from services.api.principal import Principal
from services.api.writes import EventWriter


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the app holds while it runs (opened by the lifespan)."""

    settings: Settings
    clickhouse: ClickHouse
    pool: asyncpg.Pool[Any]
    writer: EventWriter


def get_runtime(request: Request) -> Runtime:
    """The running app's connections; 503 while it is starting or stopping."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise TemporarilyUnavailable("the API is starting up")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(request: Request) -> Principal:
    """The caller. Until API keys land, everyone is the default tenant's anonymous user."""
    settings: Settings = request.app.state.settings
    return Principal(tenant_id=settings.default_tenant)


Auth = Annotated[Principal, Depends(get_principal)]


async def wait_for_consistency(
    runtime: RuntimeDep,
    consistency_token: Annotated[
        str | None,
        Query(description="Token of an earlier write: the read waits until that write is visible."),
    ] = None,
) -> None:
    """Read-your-writes for reads that pass a write's consistency token."""
    if not consistency_token:
        return
    token = ConsistencyToken.decode(consistency_token)
    if not await runtime.writer.wait_for(token):
        raise TemporarilyUnavailable(
            "the write of this consistency_token is not visible yet; retry", headers={"Retry-After": "1"}
        )


ConsistentRead = Depends(wait_for_consistency)
