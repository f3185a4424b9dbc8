"""The web UI's own routes, outside /api/ and the OpenAPI schema.

GET /ui/ (the page), GET /ui/static/... (ES modules, CSS), and the browser sign-in:
POST /ui/session (an API key in, the session cookie out), GET /ui/session (who is signed
in, and the CSRF token the page sends with unsafe methods), DELETE /ui/session (sign-out).
Everything the pages show comes from the ordinary API with the session cookie.
"""

from __future__ import annotations

import hashlib
import mimetypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runledger.auth.keys import ApiKey, InvalidKey, from_parts, parse_key, secret_matches
from runledger.stores.postgres.directory import AuditEntry
from services.api import sessions
from services.api.deps import RuntimeDep, client_address, deny
from services.api.errors import InvalidParameter, NotFound, PermissionDenied, Unauthenticated
from services.api.principal import Principal
from services.api.ui.me import Me, describe

STATIC = Path(__file__).parent / "static"

# The pages load only their own scripts, styles and images; no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # The page and unversioned files: revalidate every time (versioned files: IMMUTABLE).
    "Cache-Control": "no-cache",
}
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

router = APIRouter(prefix="/ui", include_in_schema=False)


class SignIn(BaseModel):
    """An API key as one token, or as its id and secret (what basic auth sends)."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(None, max_length=300)
    key_id: str | None = Field(None, max_length=100)
    secret: str | None = Field(None, max_length=300)

    def key(self) -> ApiKey:
        try:
            if self.api_key:
                return parse_key(self.api_key)
            if self.key_id and self.secret:
                return from_parts(self.key_id, self.secret)
        except InvalidKey as exc:
            raise Unauthenticated(f"invalid API key: {exc}") from None
        raise InvalidParameter("give api_key, or key_id and secret")


class SessionInfo(BaseModel):
    """The signed-in caller, and the token its page sends as X-CSRF-Token on unsafe methods."""

    csrf_token: str
    expires_at: int = Field(description="Milliseconds since the epoch.")
    me: Me


def _static(path: Path, *, immutable: bool = False) -> Response:
    media = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {**SECURITY_HEADERS, **({"Cache-Control": IMMUTABLE} if immutable else {})}
    return FileResponse(path, media_type=media, headers=headers)


def _file(path: str) -> Path:
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC.resolve()) or not target.is_file():
        raise NotFound(f"no UI file {path!r}")
    return target


def static_version() -> str:
    """A digest of the static files' names, sizes and mtimes: it changes whenever one does."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(STATIC)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@router.get("")
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
async def ui_index() -> Response:
    """The page, its asset URLs versioned: the browser caches them for good and asks again only
    for a new version (module imports are relative, so they inherit the version)."""
    html = (STATIC / "index.html").read_text().replace("/ui/static/", f"/ui/static/v/{static_version()}/")
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get("/static/v/{version}/{path:path}")
async def ui_static_versioned(version: str, path: str) -> Response:
    return _static(_file(path), immutable=True)


@router.get("/static/{path:path}")
async def ui_static(path: str) -> Response:
    return _static(_file(path))


def _info(session: sessions.Session, principal: Principal, via: str) -> SessionInfo:
    return SessionInfo(
        csrf_token=session.csrf_token,
        expires_at=int(session.expires_at.timestamp() * 1000),
        me=describe(principal, via, session.expires_at),
    )


async def _session_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller of the session cookie (401 without a live one)."""
    principal = await sessions.principal_from_cookie(request, runtime)
    if principal is None:
        raise Unauthenticated("not signed in")
    return principal


SessionPrincipal = Annotated[Principal, Depends(_session_principal)]


@router.post("/session", response_model=SessionInfo)
async def sign_in(request: Request, runtime: RuntimeDep) -> Response:
    """Check the key like a Bearer request would, then start a session (Set-Cookie)."""
    # A cross-site page could post a form here to sign the victim into the attacker's account
    # (login CSRF): a form cannot send JSON, and a cross-site fetch carries a foreign Origin.
    # Checked before the body is even parsed.
    if "application/json" not in request.headers.get("content-type", "") or not sessions.same_origin(request):
        raise PermissionDenied("sign in from this server's own page (JSON, same origin)")
    try:
        body = SignIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidParameter(
            f"sign-in body: {exc.errors(include_url=False, include_input=False)}"
        ) from None
    key = body.key()
    record = runtime.auth.authorizer.snapshot.usable_key(key.key_id, datetime.now(UTC))
    if record is None or not secret_matches(key.secret, record.secret_hash):
        known = runtime.auth.authorizer.snapshot.keys.get(key.key_id)
        deny(runtime, request, known.tenant_id if known else None, key.key_id, "UI sign-in refused")
        raise Unauthenticated("the API key is unknown, revoked or expired, or its tenant is suspended")
    source = client_address(request)
    token, session = await sessions.create(
        runtime.pool, record, runtime.settings.ui_session_lifetime_s, source
    )
    runtime.audit.record(
        AuditEntry(
            tenant_id=record.tenant_id,
            actor=record.principal_id,
            action="ui.sign_in",
            outcome="ok",
            target=record.key_id,
            source=source,
        )
    )
    principal = Principal(
        tenant_id=record.tenant_id,
        authorizer=runtime.auth.authorizer,
        principal_id=record.principal_id,
        key_id=record.key_id,
        signing_key=record.signing_key,
        source=source,
    )
    response = JSONResponse(
        _info(session, principal, "session").model_dump(), headers={"Cache-Control": "no-store"}
    )
    sessions.set_cookie(response, request, token, session)
    return response


@router.get("/session", response_model=SessionInfo)
async def current_session(request: Request, principal: SessionPrincipal) -> Response:
    """The signed-in caller and the session's CSRF token (401 when not signed in)."""
    session: sessions.Session = request.state.session
    return JSONResponse(
        _info(session, principal, "session").model_dump(), headers={"Cache-Control": "no-store"}
    )


@router.delete("/session", status_code=204)
async def sign_out(request: Request, runtime: RuntimeDep, principal: SessionPrincipal) -> Response:
    """End the session (the CSRF token is required, as for any unsafe method) and drop the cookie."""
    await sessions.revoke(runtime.pool, request.cookies.get(sessions.COOKIE_NAME, ""))
    runtime.audit.record(
        AuditEntry(
            tenant_id=principal.tenant_id,
            actor=principal.principal_id,
            action="ui.sign_out",
            outcome="ok",
            target=principal.key_id,
            source=principal.source,
        )
    )
    response = Response(status_code=204)
    sessions.clear_cookie(response, request)
    return response
