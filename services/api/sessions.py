"""Browser sessions of the web UI: an API key signs in once, a cookie carries the session.

Design (ADR 0013):

- Sign-in (POST /ui/session, services/api/ui/routes.py) checks an API key exactly like a
  Bearer request, then stores a session row in Postgres (`ui_sessions`) and sets the cookie
  `runledger_session`: HttpOnly, SameSite=Strict, Path=/, Secure when the request is https.
  The cookie holds a 256-bit random token; the table only its SHA-256.
- Every /api/ request without an Authorization or X-API-Key header may present the cookie
  instead (deps.get_principal calls `principal_from_cookie`). The session acts as its key:
  the key must still be usable (not revoked or expired, principal enabled, tenant active)
  at each request, so revocation ends the session within the auth poll interval.
- CSRF: a cookie-authenticated unsafe method (POST, PUT, PATCH, DELETE) must carry the
  session's CSRF token in `X-CSRF-Token` (a header a cross-site page cannot set without
  CORS, which the API does not grant), and an `Origin`, when the browser sends one, must be
  this server's. SameSite=Strict is the second wall. Bearer/basic callers are unaffected:
  browsers never attach those by themselves.
- Sign-out deletes the row; an expired row is refused and swept at the next sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
from fastapi import Request, Response

from runledger.auth.model import KeyRecord
from services.api.errors import PermissionDenied, Unauthenticated
from services.api.principal import Principal

if TYPE_CHECKING:
    from services.api.deps import Runtime

COOKIE_NAME = "runledger_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Session:
    """A stored session (never holds the cookie token itself)."""

    tenant_id: str
    principal_id: str
    key_id: str
    csrf_token: str
    expires_at: datetime


def token_hash(token: str) -> bytes:
    """What the table keeps of a cookie token."""
    return hashlib.sha256(b"runledger/ui-session/v1\x00" + token.encode()).digest()


def is_https(request: Request) -> bool:
    """The request reached us over https (directly, or as a proxy in front says)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def same_origin(request: Request) -> bool:
    """No Origin header (not a cross-site browser request), or one naming this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    scheme = "https" if is_https(request) else request.url.scheme
    return origin == f"{scheme}://{host}"


async def create(
    pool: asyncpg.Pool[Any], record: KeyRecord, lifetime_s: float, source: str
) -> tuple[str, Session]:
    """A new session for a usable key: (cookie token, session)."""
    token = secrets.token_urlsafe(32)
    session = Session(
        tenant_id=record.tenant_id,
        principal_id=record.principal_id,
        key_id=record.key_id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=datetime.now(UTC) + timedelta(seconds=lifetime_s),
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM ui_sessions WHERE expires_at < now()")
        await conn.execute(
            "INSERT INTO ui_sessions (token_hash, tenant_id, principal_id, key_id, csrf_token, expires_at,"
            " source) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            token_hash(token),
            session.tenant_id,
            session.principal_id,
            session.key_id,
            session.csrf_token,
            session.expires_at,
            source,
        )
    return token, session


async def lookup(pool: asyncpg.Pool[Any], token: str) -> Session | None:
    """The unexpired session of a cookie token, else None."""
    row = await pool.fetchrow(
        "SELECT tenant_id, principal_id, key_id, csrf_token, expires_at FROM ui_sessions"
        " WHERE token_hash = $1 AND expires_at > now()",
        token_hash(token),
    )
    return Session(**dict(row)) if row is not None else None


async def revoke(pool: asyncpg.Pool[Any], token: str) -> bool:
    """End a session (sign-out); False when there was none."""
    deleted: str = await pool.execute("DELETE FROM ui_sessions WHERE token_hash = $1", token_hash(token))
    return deleted != "DELETE 0"


def set_cookie(response: Response, request: Request, token: str, session: Session) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Path=/, Secure over https."""
    response.set_cookie(
        COOKIE_NAME,
        token,
        expires=session.expires_at,
        path="/",
        secure=is_https(request),
        httponly=True,
        samesite="strict",
    )


def clear_cookie(response: Response, request: Request) -> None:
    """Tell the browser to drop the session cookie."""
    response.delete_cookie(COOKIE_NAME, path="/", secure=is_https(request), httponly=True, samesite="strict")


def check_csrf(request: Request, session: Session) -> None:
    """A cookie-authenticated unsafe request must prove it comes from our own pages (else 403)."""
    if request.method in SAFE_METHODS:
        return
    if not same_origin(request):
        raise PermissionDenied("cross-origin request refused (Origin does not match this server)")
    presented = request.headers.get(CSRF_HEADER, "")
    if not presented or not hmac.compare_digest(presented.encode(), session.csrf_token.encode()):
        raise PermissionDenied(
            "a cookie-authenticated write needs the session's CSRF token in the X-CSRF-Token header"
        )


async def principal_from_cookie(request: Request, runtime: Runtime) -> Principal | None:
    """The caller of the request's session cookie; None without one.

    Unauthenticated when the session is unknown, expired or signed out, or its key is no
    longer usable; PermissionDenied for an unsafe method without the CSRF token.
    """
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    session = await lookup(runtime.pool, token)
    if session is None:
        raise Unauthenticated("the session has expired or was signed out: sign in again")
    authorizer = runtime.auth.authorizer
    record = authorizer.snapshot.usable_key(session.key_id, datetime.now(UTC))
    if record is None or record.principal_id != session.principal_id:
        await revoke(runtime.pool, token)
        raise Unauthenticated("the session's API key is revoked or expired, or its tenant is suspended")
    check_csrf(request, session)
    request.state.session = session
    return Principal(
        tenant_id=record.tenant_id,
        authorizer=authorizer,
        principal_id=record.principal_id,
        key_id=record.key_id,
        signing_key=record.signing_key,
        source=request.client.host if request.client else "",
    )
