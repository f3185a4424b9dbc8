"""The web UI's browser sessions over the real API app and Postgres (services/api/sessions.py).

Sign-in with an API key sets an HttpOnly, SameSite=Strict cookie (Secure over https); the
cookie then authenticates /api/ calls like the key; unsafe methods need the session's CSRF
token and a same-origin Origin; sign-out, expiry and revoking the key end the session.
The browser itself drives the same flows in tests/e2e/test_web_ui.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import asyncpg
import httpx
import pytest

from runledger.auth.keys import generate_key
from runledger.auth.model import Role
from runledger.config import Settings
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.stores.postgres import directory
from services.api.app import create_app
from services.api.sessions import COOKIE_NAME, token_hash
from tests.support.auth import Identity, provision
from tests.support.inprocess import migrated_database
from tests.unit.test_api_errors import NoClickHouse, RecordingPublisher

pytestmark = pytest.mark.integration

TENANT = "ui-sessions"
BASE = "http://ui.test"
SEARCH = "/api/2.0/mlflow/runs/search"  # a POST that only reads: needs the CSRF token all the same


@pytest.fixture(scope="module")
async def dsn(postgres: EmbeddedPostgres) -> str:
    return await migrated_database(postgres)


@pytest.fixture(scope="module")
async def app_client(dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        postgres_dsn=dsn,
        default_tenant=TENANT,
        write_wait_timeout_s=1.0,
        bootstrap_api_key=generate_key().token,
        auth_poll_interval_s=0.1,
        ui_session_lifetime_s=3600,
    )
    app = create_app(settings, NoClickHouse(), publisher=RecordingPublisher())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client,
    ):
        yield client


async def provisioned(client: httpx.AsyncClient, dsn: str, role: Role) -> Identity:
    """A new principal with `role` and a key, once the API has loaded it (auth poll)."""
    identity = await provision(dsn, TENANT, role)
    for _ in range(100):
        if (await client.get("/api/v1/me", headers=identity.headers)).status_code == 200:
            return identity
        await asyncio.sleep(0.05)
    raise AssertionError("the API never loaded the new key")


@pytest.fixture
async def viewer(app_client: httpx.AsyncClient, dsn: str) -> Identity:
    return await provisioned(app_client, dsn, Role.VIEWER)


async def sign_in(client: httpx.AsyncClient, body: dict[str, str], **headers: str) -> httpx.Response:
    response = await client.post("/ui/session", json=body, headers={"Origin": BASE, **headers})
    client.cookies.clear()  # each test presents the cookie it means to, explicitly
    return response


def cookie(value: str, **headers: str) -> dict[str, str]:
    """Headers presenting the session cookie `value` (plus `headers`)."""
    return {"Cookie": f"{COOKIE_NAME}={value}", **headers}


def session_cookie(response: httpx.Response) -> tuple[str, str]:
    """(value, the whole Set-Cookie line) of the session cookie."""
    line = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and COOKIE_NAME in v)
    morsel = SimpleCookie(line)[COOKIE_NAME]
    return morsel.value, line


async def test_sign_in_sets_a_strict_httponly_cookie_and_the_cookie_authenticates(
    app_client: httpx.AsyncClient, viewer: Identity
) -> None:
    r = await sign_in(app_client, {"api_key": viewer.key.token})
    assert r.status_code == 200, r.text
    value, line = session_cookie(r)
    attrs = {a.strip().split("=")[0].lower(): a for a in line.split(";")}
    assert "httponly" in attrs and "path" in attrs and attrs["path"].strip() == "Path=/"
    assert attrs["samesite"].strip().lower() == "samesite=strict"
    assert "secure" not in attrs  # plain http here; see the https test below
    assert r.headers["cache-control"] == "no-store"
    info = r.json()
    assert info["me"]["principal_id"] == viewer.principal_id
    assert info["me"]["permissions"] == {"read": True, "write": False, "admin": False, "superadmin": False}
    assert viewer.key.secret not in r.text and viewer.key.secret not in value

    me = await app_client.get("/api/v1/me", headers=cookie(value))
    assert me.status_code == 200 and me.json()["via"] == "session"
    assert me.json()["principal_id"] == viewer.principal_id
    by_key = await app_client.get("/api/v1/me", headers=viewer.headers)
    assert by_key.json()["via"] == "api_key"

    # Key id + secret (basic-auth style) work too; a wrong secret does not.
    r2 = await sign_in(app_client, {"key_id": viewer.key.key_id, "secret": viewer.key.secret})
    assert r2.status_code == 200
    bad = await sign_in(app_client, {"key_id": viewer.key.key_id, "secret": "x" * 43})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers


async def test_the_table_keeps_only_a_hash_of_the_cookie(
    app_client: httpx.AsyncClient, viewer: Identity, dsn: str
) -> None:
    value, _ = session_cookie(await sign_in(app_client, {"api_key": viewer.key.token}))
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT token_hash, key_id FROM ui_sessions WHERE key_id = $1", viewer.key.key_id
        )
    finally:
        await conn.close()
    assert [r["token_hash"] for r in rows] == [token_hash(value)]
    assert all(value.encode() not in bytes(r["token_hash"]) for r in rows)


async def test_secure_over_https(app_client: httpx.AsyncClient, viewer: Identity) -> None:
    r = await app_client.post(
        "/ui/session",
        json={"api_key": viewer.key.token},
        headers={"Origin": "https://ui.test", "X-Forwarded-Proto": "https", "Host": "ui.test"},
    )
    assert r.status_code == 200, r.text
    _, line = session_cookie(r)
    assert "secure" in line.lower()


async def test_sign_in_refuses_forms_and_foreign_origins(
    app_client: httpx.AsyncClient, viewer: Identity
) -> None:
    # A cross-site form cannot send JSON; a cross-site fetch carries its own Origin (login CSRF).
    form = await app_client.post("/ui/session", data={"api_key": viewer.key.token}, headers={"Origin": BASE})
    assert form.status_code == 403
    foreign = await sign_in(app_client, {"api_key": viewer.key.token}, Origin="https://evil.example")
    assert foreign.status_code == 403
    assert "set-cookie" not in foreign.headers


async def test_unsafe_methods_need_the_csrf_token(app_client: httpx.AsyncClient, viewer: Identity) -> None:
    r = await sign_in(app_client, {"api_key": viewer.key.token})
    value, _ = session_cookie(r)
    csrf = r.json()["csrf_token"]
    body = {"experiment_ids": [], "max_results": 1}

    missing = await app_client.post(SEARCH, json=body, headers=cookie(value))
    assert missing.status_code == 403 and "CSRF" in missing.json()["message"]
    wrong = await app_client.post(
        SEARCH, json=body, headers=cookie(value, **{"X-CSRF-Token": csrf[:-2] + "xx"})
    )
    assert wrong.status_code == 403
    cross = await app_client.post(
        SEARCH, json=body, headers=cookie(value, **{"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    )
    assert cross.status_code == 403
    ok = await app_client.post(
        SEARCH, json=body, headers=cookie(value, **{"X-CSRF-Token": csrf, "Origin": BASE})
    )
    assert ok.status_code == 200, ok.text
    # Reads need no token; a key in a header is not a cookie: no CSRF check, the cookie is ignored.
    assert (await app_client.get("/api/v1/experiments", headers=cookie(value))).status_code == 200
    keyed = await app_client.post(SEARCH, json=body, headers={**viewer.headers, **cookie("stale")})
    assert keyed.status_code == 200
    # The viewer's session writes nothing, token or not.
    write = await app_client.post(
        "/api/v1/experiments", json={"name": "nope"}, headers=cookie(value, **{"X-CSRF-Token": csrf})
    )
    assert write.status_code == 403


async def test_sign_out_ends_the_session(app_client: httpx.AsyncClient, viewer: Identity) -> None:
    r = await sign_in(app_client, {"api_key": viewer.key.token})
    value, _ = session_cookie(r)
    no_token = await app_client.delete("/ui/session", headers=cookie(value))
    assert no_token.status_code == 403  # sign-out is an unsafe method too
    out = await app_client.delete(
        "/ui/session", headers=cookie(value, **{"X-CSRF-Token": r.json()["csrf_token"]})
    )
    assert out.status_code == 204
    assert f"{COOKIE_NAME}=" in out.headers["set-cookie"] and "max-age=0" in out.headers["set-cookie"].lower()
    after = await app_client.get("/api/v1/me", headers=cookie(value))
    assert after.status_code == 401
    assert "www-authenticate" not in after.headers  # no basic-auth dialog in the browser
    assert (await app_client.get("/ui/session", headers=cookie(value))).status_code == 401


async def test_revoking_the_key_ends_the_session(app_client: httpx.AsyncClient, dsn: str) -> None:
    identity = await provisioned(app_client, dsn, Role.ENGINEER)
    value, _ = session_cookie(await sign_in(app_client, {"api_key": identity.key.token}))
    assert (await app_client.get("/api/v1/me", headers=cookie(value))).status_code == 200
    conn = await asyncpg.connect(dsn)
    try:
        assert await directory.revoke_key(conn, identity.key.key_id)
    finally:
        await conn.close()
    status = 200
    for _ in range(50):  # the API reloads keys within auth_poll_interval_s (0.1 s here)
        status = (await app_client.get("/api/v1/me", headers=cookie(value))).status_code
        if status == 401:
            break
        await asyncio.sleep(0.1)
    assert status == 401
    # The session row is gone too: re-enabling nothing brings it back.
    conn = await asyncpg.connect(dsn)
    try:
        left = await conn.fetchval("SELECT count(*) FROM ui_sessions WHERE key_id = $1", identity.key.key_id)
    finally:
        await conn.close()
    assert left == 0


async def test_an_expired_session_is_refused(
    app_client: httpx.AsyncClient, viewer: Identity, dsn: str
) -> None:
    value, _ = session_cookie(await sign_in(app_client, {"api_key": viewer.key.token}))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE ui_sessions SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
            token_hash(value),
        )
    finally:
        await conn.close()
    assert (await app_client.get("/api/v1/me", headers=cookie(value))).status_code == 401


async def test_the_ui_is_served_outside_the_api_schema(app_client: httpx.AsyncClient) -> None:
    page = await app_client.get("/ui/")
    assert page.status_code == 200 and 'type="module"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    script = await app_client.get("/ui/static/js/main.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    # The page names its files under a version: cached for good, re-fetched when they change.
    main = re.search(r'src="(/ui/static/v/[0-9a-f]{16}/js/main.js)"', page.text)
    assert main is not None and page.headers["cache-control"] == "no-cache"
    versioned = await app_client.get(main.group(1))
    assert versioned.status_code == 200 and versioned.content == script.content
    assert "immutable" in versioned.headers["cache-control"]
    assert (await app_client.get("/ui/static/../sessions.py")).status_code == 404
    assert (await app_client.get("/ui/static/%2e%2e/routes.py")).status_code == 404
    paths = (await app_client.get("/openapi.json")).json()["paths"]
    assert "/api/v1/me" in paths
    assert not [p for p in paths if p.startswith("/ui")]
