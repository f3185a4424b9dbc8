"""Typed dependencies of the routes: the runtime, the caller (principal), read consistency.

Authentication: `AuthenticateApi` (an ASGI middleware, app.py) resolves the caller of
every /api/ request before routing, so a request without a usable key is a 401 even
when its body is malformed; `get_principal` (a dependency of every API router) hands
that caller to the routes. The key comes from
`Authorization: Bearer rlk_...`, HTTP basic auth (username = key id, password =
secret; what MLflow clients and BI tools send) or `X-API-Key`; a request with none of
them may present the web UI's session cookie instead (services/api/sessions.py: it acts
as the key that signed in, and unsafe methods need its CSRF token). The tenant is the
key's, never one named by the request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from runledger.auth.keys import ApiKey, InvalidKey, from_parts, parse_key, secret_matches
from runledger.auth.model import Action
from runledger.auth.sealing import SecretBox
from runledger.auth.watcher import AuthWatcher
from runledger.config import Settings
from runledger.stores.clickhouse import ClickHouse
from runledger.stores.postgres.directory import AuditEntry
from services.api import sessions
from services.api.audit import AuditSink
from services.api.bulkhead import TenantBulkhead, is_heavy_json_write
from services.api.consistency import ConsistencyToken
from services.api.errors import ApiError, PermissionDenied, TemporarilyUnavailable, Unauthenticated
from services.api.pending import PendingWrites
from services.api.principal import Principal
from services.api.writes import EventWriter
from services.observability import HEAVY_WRITE_QUEUE_SECONDS

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes whose writes become events (and count against the events/s quota); admin routes
# stay usable while a tenant is over its quota (an admin may be lifting it).
_EVENT_WRITE_PREFIXES = ("/api/v1/runs", "/api/v1/experiments", "/api/v1/events", "/api/2.0/mlflow/")
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="RunLedger", charset="UTF-8"'}


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the app holds while it runs (opened by the lifespan)."""

    settings: Settings
    clickhouse: ClickHouse
    pool: asyncpg.Pool[Any]
    writer: EventWriter
    auth: AuthWatcher
    audit: AuditSink
    secrets: SecretBox  # seals the webhook secrets (runledger.auth.sealing)
    # MLflow writes answered on the broker's ack, until projected (services/api/pending.py).
    pending: PendingWrites = field(init=False)
    # A few heavy writes of each tenant at a time (services/api/bulkhead.py).
    bulkhead: TenantBulkhead = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pending", PendingWrites(self.writer))
        object.__setattr__(self, "bulkhead", TenantBulkhead(self.settings.api_heavy_writes_per_tenant))


def runtime_of(request: Request) -> Runtime:
    """The running app's connections; 503 while it is starting or stopping."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise TemporarilyUnavailable("the API is starting up")
    return runtime


async def get_runtime(request: Request) -> Runtime:
    """`runtime_of` as a dependency. Dependencies here are `async def` even when they do not
    await: FastAPI runs a plain `def` one in a worker thread, a hop per request that the GIL
    makes slow while the projector shares the process (embedded mode)."""
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def client_address(request: Request) -> str:
    """Where the request came from (for the audit log)."""
    return request.client.host if request.client else ""


def presented_key(request: Request) -> ApiKey | None:
    """The API key the request carries, None when it carries none; Unauthenticated when malformed."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    try:
        if scheme.lower() == "bearer" and value:
            return parse_key(value)
        if scheme.lower() == "basic" and value:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidKey("malformed basic credentials") from None
            return from_parts(user, password)
        if token := request.headers.get("x-api-key"):
            return parse_key(token)
    except InvalidKey as exc:
        raise Unauthenticated(f"invalid API key: {exc}", headers=_CHALLENGE) from None
    if header:
        raise Unauthenticated("unsupported Authorization scheme: use Bearer or Basic", headers=_CHALLENGE)
    return None


def deny(runtime: Runtime, request: Request, tenant_id: str | None, actor: str, reason: str) -> None:
    """Append a denied request to the audit log (in the background)."""
    runtime.audit.record(
        AuditEntry(
            tenant_id=tenant_id,
            actor=actor,
            action=f"{request.method} {request.url.path}",
            outcome="denied",
            source=client_address(request),
            details={"reason": reason},
        )
    )


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller of the key the request presents; 401 without a usable key."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    failed: ApiError | None = getattr(request.state, "auth_error", None)
    if failed is not None:  # AuthenticateApi tried already (and audited the denial)
        raise failed
    try:
        key = presented_key(request)
    except Unauthenticated as exc:
        deny(runtime, request, None, "anonymous", exc.message)
        raise
    if key is None:
        try:  # no key: the web UI's session cookie, if any (services/api/sessions.py)
            from_session = await sessions.principal_from_cookie(request, runtime)
        except ApiError as exc:
            deny(runtime, request, None, "session", exc.message)
            raise
        if from_session is not None:
            request.state.principal = from_session
            return from_session
        deny(runtime, request, None, "anonymous", "no API key")
        raise Unauthenticated(
            "an API key is required: Authorization: Bearer rlk_<id>_<secret> (or basic auth with the key"
            " id and secret)",
            headers=_CHALLENGE,
        )
    authorizer = runtime.auth.authorizer
    record = authorizer.snapshot.usable_key(key.key_id, datetime.now(UTC))
    if record is None or not secret_matches(key.secret, record.secret_hash):
        known = authorizer.snapshot.keys.get(key.key_id)
        deny(
            runtime,
            request,
            known.tenant_id if known else None,
            key.key_id,
            "unknown, revoked or expired key",
        )
        raise Unauthenticated(
            "the API key is unknown, revoked or expired, or its tenant is suspended", headers=_CHALLENGE
        )
    principal = Principal(
        tenant_id=record.tenant_id,
        authorizer=authorizer,
        principal_id=record.principal_id,
        key_id=record.key_id,
        signing_key=key.signing_key,
        source=client_address(request),
    )
    request.state.principal = principal
    return principal


Auth = Annotated[Principal, Depends(get_principal)]


class AuthenticateApi:
    """ASGI middleware: authenticate every request under `prefix` before its body is parsed.

    The caller lands in request.state.principal; a failure (401, or 503 while starting)
    in request.state.auth_error. Routing then runs as usual: an unknown endpoint is a
    404 either way, get_principal raises the failure for every known route, and the
    validation-error handler answers it instead of a body error, so a request without
    a usable key is a 401 even when its body is malformed.
    """

    def __init__(self, app: ASGIApp, prefix: str = "/api/") -> None:
        self._app = app
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            request = Request(scope)
            try:
                runtime = runtime_of(request)
                principal = await get_principal(request, runtime)
            except ApiError as exc:
                request.state.auth_error = exc
            else:
                refused = await _over_rate_quota(request, principal)
                if refused is not None:
                    response = JSONResponse(refused.body(), refused.status_code, refused.headers)
                    await response(scope, receive, send)
                    return
                if _heavy_event_write(request, runtime):
                    started = time.perf_counter()
                    async with runtime.bulkhead.slot(principal.tenant_id):
                        HEAVY_WRITE_QUEUE_SECONDS.observe(time.perf_counter() - started)
                        await self._app(scope, receive, send)
                    return
        await self._app(scope, receive, send)


def _is_event_write(request: Request) -> bool:
    """A write whose request becomes events (and counts against the tenant's rate quotas)."""
    return request.method in _WRITE_METHODS and request.url.path.startswith(_EVENT_WRITE_PREFIXES)


def _heavy_event_write(request: Request, runtime: Runtime) -> bool:
    """An event write with a JSON body big enough to go through the tenant's bulkhead."""
    settings = runtime.settings
    return (
        runtime.bulkhead.enabled
        and _is_event_write(request)
        and is_heavy_json_write(request.scope["headers"], settings.api_heavy_write_bytes)
    )


async def _over_rate_quota(request: Request, principal: Principal) -> ApiError | None:
    """A 429 for a write by a tenant already past its events/s quota (else None).

    A write that comes back before the Retry-After of its tenant's last 429 is first
    held here (asyncio.sleep: no thread, no CPU) until that is due, at most
    RUNLEDGER_API_TARPIT_MAX_S: a client retrying at once then costs one request per
    connection per wait instead of thousands a second.
    """
    if not _is_event_write(request):
        return None
    runtime = runtime_of(request)
    quotas = runtime.writer.quotas
    if quotas is None:
        return None
    tenant_id = principal.tenant_id
    quota = principal.authorizer.snapshot.quota(tenant_id)
    if quota.events_per_second is None and quota.points_per_second is None:
        return None  # no rate quota (perhaps just lifted): nothing to hold for
    hold = quotas.hold(tenant_id, runtime.settings.api_tarpit_max_s)
    if hold.seconds > 0:
        try:
            await asyncio.sleep(hold.seconds)
        finally:
            quotas.release(tenant_id)
    if hold.refuse:
        return quotas.refuse_held(tenant_id, hold)
    return quotas.refuse_early(tenant_id, quota)


def forbid(runtime: Runtime, request: Request, principal: Principal, what: str) -> PermissionDenied:
    """Audit a denial and return the 403 to raise."""
    deny(runtime, request, principal.tenant_id, principal.principal_id, what)
    error = PermissionDenied(what)
    error.audited = True
    return error


def require(action: Action) -> Any:
    """A route dependency: the caller may do `action` on at least part of its tenant, else 403.

    Routes that touch one experiment check it again, narrowly (principal.can).
    """

    async def check(request: Request, runtime: RuntimeDep, principal: Auth) -> Principal:
        if not principal.may_act(action):
            raise forbid(runtime, request, principal, f"the caller's role does not allow {action.value}")
        return principal

    return Depends(check)


async def tenant_admin(request: Request, runtime: RuntimeDep, principal: Auth) -> Principal:
    """A route dependency: an admin of the caller's whole tenant, else 403 (recorded).

    principal.can, not may_act: an admin grant narrowed to one experiment gives no admin rights.
    """
    if not principal.can(Action.ADMIN):
        raise forbid(runtime, request, principal, "tenant admin only")
    return principal


TenantAdminPrincipal = Annotated[Principal, Depends(tenant_admin)]


def require_superadmin() -> Any:
    """A route dependency: only the platform superadmin."""

    async def check(request: Request, runtime: RuntimeDep, principal: Auth) -> Principal:
        if not principal.is_superadmin:
            raise forbid(runtime, request, principal, "platform superadmin only")
        return principal

    return Depends(check)


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


async def settle_caller(runtime: RuntimeDep, principal: Auth) -> None:
    """Read-your-writes for clients that carry no token (MLflow's): wait until the writes this
    process acknowledged for the caller are projected (503 after the write wait)."""
    await runtime.pending.settle(principal)


SettledCaller = Depends(settle_caller)
