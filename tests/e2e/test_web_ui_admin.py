"""The web UI's admin pages in a real browser (Debian's chromium through Playwright).

A tenant of its own (created through the platform API, with its first admin and that admin's
key) so that its policies and audit log hold only what these tests do. The admin signs in
and uses the pages as a person would: creates a user and a key (the secret shown once, then
never), grants a role narrowed to an experiment, revokes the key, edits the tagging and
retention policies, shares an experiment, reads the audit log; every change is checked
through the API. A viewer and an engineer see no Admin link and get "not allowed".
Screenshots land in $RUNLEDGER_UI_SCREENSHOTS (default: the session's test directory).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from runledger.auth.keys import parse_key
from runledger.auth.model import Role
from tests.e2e.conftest import Stack
from tests.support.auth import Identity, provision
from tests.support.browser import until

pytestmark = pytest.mark.integration

T = TypeVar("T")
SECTIONS = ["users", "keys", "roles", "tagging", "retention", "audit", "shares"]


@dataclass
class AdminWorld:
    stack: Stack
    tenant: str
    peer_tenant: str
    admin_token: str
    admin_principal: str
    experiment_id: str
    experiment_name: str
    viewer: Identity
    engineer: Identity
    shots: Path
    suffix: str
    # What one test made and a later one uses (user id, key id, token).
    made: dict[str, str] = field(default_factory=dict)

    @property
    def ui(self) -> str:
        return f"{self.stack.url}/ui/"

    @property
    def headers(self) -> dict[str, str]:
        """The tenant admin's headers, for checking through the API."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.stack.url}/api/v1{path}", params=params, headers=self.headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion (sync Playwright keeps an event loop in this thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def loaded(stack: Stack, identity: Identity) -> Identity:
    """The identity once the API has loaded its key."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(f"{stack.url}/api/v1/me", headers=identity.headers, timeout=10).status_code == 200:
            return identity
        time.sleep(0.1)
    raise AssertionError("the API never loaded the new key")


@pytest.fixture(scope="module")
def world(stack: Stack, test_root: Path) -> AdminWorld:
    suffix = uuid.uuid4().hex[:6]
    tenant, peer = f"uiadm-{suffix}", f"uiadm-peer-{suffix}"
    created = httpx.post(
        f"{stack.url}/api/v1/tenants",
        json={"tenant_id": tenant, "name": f"UI admin {suffix}", "admin_user": f"admin-{suffix}"},
        headers=stack.headers,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    peer_created = httpx.post(
        f"{stack.url}/api/v1/tenants",
        json={"tenant_id": peer, "name": f"UI admin peer {suffix}"},
        headers=stack.headers,
        timeout=30,
    )
    assert peer_created.status_code == 201, peer_created.text
    token = body["api_key"]["api_key"]
    name = f"admin-ui-exp-{suffix}"
    experiment = httpx.post(
        f"{stack.url}/api/v1/experiments",
        json={"name": name},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert experiment.status_code in (200, 201), experiment.text
    viewer = loaded(stack, in_thread(provision(stack.dsn, tenant, Role.VIEWER)))
    engineer = loaded(stack, in_thread(provision(stack.dsn, tenant, Role.ENGINEER)))
    shots = Path(os.environ.get("RUNLEDGER_UI_SCREENSHOTS") or test_root)
    shots.mkdir(parents=True, exist_ok=True)
    return AdminWorld(
        stack=stack,
        tenant=tenant,
        peer_tenant=peer,
        admin_token=token,
        admin_principal=body["admin"]["principal_id"],
        experiment_id=experiment.json()["experiment_id"],
        experiment_name=name,
        viewer=viewer,
        engineer=engineer,
        shots=shots,
        suffix=suffix,
    )


@pytest.fixture
def context(browser: Browser, world: AdminWorld) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.stack.url)
    ctx.set_default_timeout(30_000)  # the shared 2-core CI machine is slow at times
    yield ctx
    ctx.close()


def sign_in(page: Page, world: AdminWorld, identity: Identity | None = None) -> None:
    """Through the sign-in form: the tenant admin by token, another identity by key id + secret."""
    page.goto(world.ui)
    if identity is None:
        page.fill("#api-key", world.admin_token)
    else:
        page.fill("#key-id", identity.key.key_id)
        page.fill("#key-secret", identity.key.secret)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")
    # The landing page, loaded: main.js's render() does not drop a slower earlier page, so
    # navigating on before it is loaded could see it mounted over the next one.
    page.wait_for_selector("#experiments")


def sign_in_and_settle(page: Page, world: AdminWorld) -> None:
    """Sign in, then wait until the sign-in's own audit entry (queued, written in the background)
    is in the log, so that the page and a later API read see the same entries."""
    newest = world.get("/audit", limit=1)["entries"]
    before = newest[0]["seq"] if newest else 0
    sign_in(page, world)
    deadline = time.monotonic() + 10
    while not any(e["seq"] > before for e in world.get("/audit", limit=5, action="ui.sign_in")["entries"]):
        assert time.monotonic() < deadline, "the sign-in never reached the audit log"
        time.sleep(0.1)


def open_section(page: Page, world: AdminWorld, section: str) -> None:
    page.goto(f"{world.ui}#/admin/{section}")
    page.wait_for_selector(f'section.admin[data-section="{section}"][data-loaded="true"]')
    assert page.get_attribute(f'.admin-tabs a[data-section="{section}"]', "aria-current") == "page"


def alert_text(page: Page, selector: str) -> str:
    page.wait_for_selector(f'{selector}[role="alert"]:not([hidden])')
    return page.inner_text(selector)


def test_admin_creates_a_user_and_a_key_whose_secret_is_shown_once(
    context: BrowserContext, world: AdminWorld
) -> None:
    page = context.new_page()
    sign_in(page, world)
    # The admin's nav has the link; it leads to the users page.
    page.click("#nav-admin")
    page.wait_for_selector('section.admin[data-section="users"][data-loaded="true"]')
    admin_row = page.locator(f'#principals tr[data-principal-id="{world.admin_principal}"]')
    assert "admin" in admin_row.inner_text() and "(you)" in admin_row.inner_text()

    name = f"alice-{world.suffix}"
    page.fill("#new-principal-name", name)
    page.select_option("#new-principal-kind", "user")
    page.click("#new-principal button[type=submit]")
    row = page.locator(f'#principals tr[data-name="{name}"]')
    row.wait_for()
    user_id = row.get_attribute("data-principal-id") or ""
    assert "no role" in row.inner_text() and "active" in row.inner_text()
    assert "Created" in page.inner_text("#users-message")
    listed = {p["principal_id"]: p for p in world.get("/principals")["principals"]}
    assert listed[user_id]["name"] == name and listed[user_id]["kind"] == "user"
    assert listed[user_id]["disabled_at"] is None
    # The same name again: the API's refusal, shown in the page.
    page.fill("#new-principal-name", name)
    page.click("#new-principal button[type=submit]")
    assert "already exists" in alert_text(page, "#users-message")

    # A key for her: the secret appears once, with a warning and a copy button.
    page.goto(f"{world.ui}#/admin/keys?principal={user_id}")
    page.wait_for_selector('section.admin[data-section="keys"][data-loaded="true"]')
    assert page.input_value("#new-key-principal") == user_id
    page.fill("#new-key-name", "laptop")
    page.click("#new-key button[type=submit]")
    page.wait_for_selector("#new-key-secret")
    token = page.input_value("#new-key-secret")
    key = parse_key(token)
    assert page.get_attribute(".secret-panel", "data-key-id") == key.key_id
    assert "shown only this once" in page.inner_text("#new-key-warning")
    page.click("#copy-key")
    until(page, "document.querySelector('#copy-status').textContent === 'Copied.'")
    assert page.evaluate("navigator.clipboard.readText()") == token
    key_row = page.locator(f'#keys tr[data-key-id="{key.key_id}"]')
    key_row.wait_for()
    assert key_row.get_attribute("data-state") == "active"
    assert name in key_row.inner_text() and "laptop" in key_row.inner_text()
    page.screenshot(path=str(world.shots / "ui-admin-keys-secret-once.png"), full_page=True)

    # The new key calls the API as her.
    answer = httpx.get(
        f"{world.stack.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["principal_id"] == user_id and answer.json()["tenant_id"] == world.tenant

    # Done: the secret is gone from the page; the list (page and API) has the id, never the secret.
    page.click("#new-key-done")
    assert page.locator("#new-key-secret").count() == 0
    assert key.secret not in page.content()
    open_section(page, world, "users")
    open_section(page, world, "keys")
    page.wait_for_selector(f'#keys tr[data-key-id="{key.key_id}"]')
    assert page.locator("#new-key-secret").count() == 0
    assert key.secret not in page.content() and key.secret not in page.inner_text("body")
    api_keys = world.get("/keys")["keys"]
    assert key.key_id in {k["key_id"] for k in api_keys}
    assert key.secret not in str(api_keys)
    world.made.update(user_id=user_id, user_name=name, key_id=key.key_id, token=token)


def test_admin_grants_a_role_narrowed_to_an_experiment_and_revokes_one(
    context: BrowserContext, world: AdminWorld
) -> None:
    user_id = world.made["user_id"]
    page = context.new_page()
    sign_in(page, world)
    open_section(page, world, "roles")
    page.select_option("#grant-principal", user_id)
    page.select_option("#grant-role", "engineer")
    page.select_option("#grant-experiment", world.experiment_id)
    page.click("#new-grant button[type=submit]")
    row = page.locator(
        f'#grants tr[data-principal-id="{user_id}"][data-role="engineer"]'
        f'[data-experiment-id="{world.experiment_id}"]'
    )
    row.wait_for()
    assert world.experiment_name in row.inner_text() and world.made["user_name"] in row.inner_text()
    grants = world.get("/grants", principal_id=user_id)["grants"]
    assert [(g["role"], g["experiment_id"], g["granted_by"]) for g in grants] == [
        ("engineer", world.experiment_id, world.admin_principal)
    ]
    # Her key now carries the grant.
    me = httpx.get(
        f"{world.stack.url}/api/v1/me",
        headers={"Authorization": f"Bearer {world.made['token']}"},
        timeout=10,
    ).json()
    assert me["roles"] == [{"role": "engineer", "experiment_id": world.experiment_id}]

    # The admin role cannot be narrowed: choosing it clears and locks the scope.
    page.select_option("#grant-role", "admin")
    assert page.is_disabled("#grant-experiment") and page.input_value("#grant-experiment") == ""

    # A tenant-wide viewer grant, then revoked through the two-step button.
    page.select_option("#grant-role", "viewer")
    page.select_option("#grant-principal", user_id)
    page.click("#new-grant button[type=submit]")
    viewer_row = page.locator(
        f'#grants tr[data-principal-id="{user_id}"][data-role="viewer"][data-experiment-id=""]'
    )
    viewer_row.wait_for()
    assert ("viewer", None) in {(g["role"], g["experiment_id"]) for g in world.get("/grants")["grants"]}
    viewer_row.locator(".revoke-grant").click()
    viewer_row.locator(".confirm-yes").click()
    viewer_row.wait_for(state="detached")
    left = {(g["role"], g["experiment_id"]) for g in world.get("/grants", principal_id=user_id)["grants"]}
    assert left == {("engineer", world.experiment_id)}

    # Filtered to her: only her grant is listed.
    page.select_option("#grants-filter", user_id)
    until(page, "document.querySelector('#grants-status').textContent === '1 grants'")
    assert page.locator("#grants tbody tr").count() == 1

    # Revoking its own admin role: the API refuses, the page says why.
    page.select_option("#grants-filter", world.admin_principal)
    own = page.locator(f'#grants tr[data-principal-id="{world.admin_principal}"][data-role="admin"]')
    own.wait_for()
    own.locator(".revoke-grant").click()
    own.locator(".confirm-yes").click()
    assert "cannot remove its own admin role" in alert_text(page, "#roles-message")
    page.screenshot(path=str(world.shots / "ui-admin-roles-granted.png"), full_page=True)


def test_revoking_a_key_in_the_page_locks_it_out_within_5_s(
    context: BrowserContext, world: AdminWorld
) -> None:
    key_id, token = world.made["key_id"], world.made["token"]
    page = context.new_page()
    sign_in(page, world)
    open_section(page, world, "keys")
    row = page.locator(f'#keys tr[data-key-id="{key_id}"]')
    row.locator(".revoke-key").click()
    assert "Sure?" in row.inner_text()  # nothing happens before the confirmation
    assert world.get("/keys", principal_id=world.made["user_id"])["keys"][0]["revoked_at"] is None
    row.locator(".confirm-yes").click()
    started = time.monotonic()
    page.wait_for_selector(f'#keys tr[data-key-id="{key_id}"][data-state="revoked"]')
    status = 0
    while time.monotonic() - started < 5:
        status = httpx.get(
            f"{world.stack.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=5
        ).status_code
        if status == 401:
            break
        time.sleep(0.1)
    assert status == 401, f"the revoked key still answered {status} after 5 s"
    assert "Revoked key" in page.inner_text("#keys-message")
    assert page.locator(f'#keys tr[data-key-id="{key_id}"] .revoke-key').count() == 0
    listed = world.get("/keys", principal_id=world.made["user_id"])["keys"]
    assert listed[0]["key_id"] == key_id and listed[0]["revoked_at"] is not None


def test_admin_edits_the_tagging_policy(context: BrowserContext, world: AdminWorld) -> None:
    page = context.new_page()
    sign_in(page, world)
    open_section(page, world, "tagging")
    assert page.get_attribute("#tagging-current p", "data-state") == "none"
    # Saving nothing: refused in the page before any request.
    page.click("#save-tagging")
    assert "at least one" in alert_text(page, "#tagging-message")

    page.locator(".policy-row .policy-key").nth(0).fill("team")
    page.locator(".policy-row .policy-values").nth(0).fill("vision, nlp, vision")
    page.click("#add-tag-key")
    page.locator(".policy-row .policy-key").nth(1).fill("owner")
    page.check("#enforcement-reject")
    page.click("#save-tagging")
    page.wait_for_selector('#tagging-current p[data-state="set"][data-enforcement="reject"]')
    assert world.get("/policies/tagging") == {
        "required": {"owner": [], "team": ["nlp", "vision"]},
        "enforcement": "reject",
    }
    assert page.inner_text('#tagging-policy tr[data-key="owner"]').endswith("any value")
    assert "nlp" in page.inner_text('#tagging-policy tr[data-key="team"]')

    # Reloaded, the editor starts from the saved policy; switch to flag and drop a key.
    open_section(page, world, "tagging")
    assert page.is_checked("#enforcement-reject")
    keys = page.eval_on_selector_all(".policy-row .policy-key", "els => els.map(e => e.value)")
    assert sorted(keys) == ["owner", "team"]
    owner_at = keys.index("owner")
    page.locator(".policy-row .remove-row").nth(owner_at).click()
    page.check("#enforcement-flag")
    page.click("#save-tagging")
    page.wait_for_selector('#tagging-current p[data-enforcement="flag"]')
    assert world.get("/policies/tagging") == {"required": {"team": ["nlp", "vision"]}, "enforcement": "flag"}
    page.screenshot(path=str(world.shots / "ui-admin-tagging-saved.png"), full_page=True)


def test_admin_edits_the_retention_policy(context: BrowserContext, world: AdminWorld) -> None:
    before = world.get("/retention-policy")
    assert before["is_default"] is True
    page = context.new_page()
    sign_in(page, world)
    open_section(page, world, "retention")
    assert page.get_attribute("#retention-policy", "data-default") == "true"
    assert page.input_value("#retention-points-days") == str(before["metric_points_days"])
    page.fill("#retention-points-days", "30")
    page.fill("#retention-artifacts-days", "")
    page.uncheck("#retention-keep-models")
    page.click("#preview-retention")
    page.wait_for_selector("#retention-preview p[data-points]")
    assert "deletes 0 metric points" in page.inner_text("#retention-preview")  # a new tenant: nothing old
    page.click("#save-retention")
    page.wait_for_selector('#retention-policy[data-default="false"]')
    after = world.get("/retention-policy")
    assert (after["metric_points_days"], after["artifacts_days"], after["keep_production_models"]) == (
        30,
        None,
        False,
    )
    assert after["is_default"] is False
    assert page.inner_text('#retention-policy td[data-field="metric_points_days"]') == "30 days"
    assert page.inner_text('#retention-policy td[data-field="artifacts_days"]') == "forever"
    assert "saved" in page.inner_text("#retention-message")
    page.screenshot(path=str(world.shots / "ui-admin-retention-saved.png"), full_page=True)


def test_admin_shares_an_experiment_and_withdraws_it(context: BrowserContext, world: AdminWorld) -> None:
    page = context.new_page()
    sign_in(page, world)
    open_section(page, world, "shares")
    # A tenant that does not exist: the API's 404, in the page.
    page.select_option("#share-experiment", world.experiment_id)
    page.fill("#share-tenant", f"nobody-{world.suffix}")
    page.click("#new-share button[type=submit]")
    assert "does not exist" in alert_text(page, "#shares-message")

    page.fill("#share-tenant", world.peer_tenant)
    page.click("#new-share button[type=submit]")
    row = page.locator(
        f'#shares-outgoing tr[data-experiment-id="{world.experiment_id}"][data-grantee="{world.peer_tenant}"]'
    )
    row.wait_for()
    assert world.experiment_name in row.inner_text()
    outgoing = world.get("/shares")["outgoing"]
    assert [(s["experiment_id"], s["grantee_tenant"]) for s in outgoing] == [
        (world.experiment_id, world.peer_tenant)
    ]
    page.screenshot(path=str(world.shots / "ui-admin-shares-shared.png"), full_page=True)
    row.locator(".unshare").click()
    row.locator(".confirm-yes").click()
    page.wait_for_selector("#shares-outgoing tr.empty")
    assert world.get("/shares")["outgoing"] == []


def _page_rows(page: Page) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#audit tbody tr",
        """rows => rows.map(r => ({seq: r.dataset.seq, actor: r.querySelector('.audit-actor').textContent,
            action: r.dataset.action, target: r.querySelector('.audit-target').textContent,
            outcome: r.dataset.outcome, source: r.querySelector('.audit-source').textContent}))""",
    )
    return rows


def _api_rows(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {
            "seq": str(e["seq"]),
            "actor": e["actor"],
            "action": e["action"],
            "target": e["target"],
            "outcome": e["outcome"],
            "source": e["source"],
        }
        for e in entries
    ]


def test_the_audit_log_page_lists_those_actions(context: BrowserContext, world: AdminWorld) -> None:
    page = context.new_page()
    sign_in_and_settle(page, world)
    open_section(page, world, "audit")
    api_page = world.get("/audit", limit=50)
    rows = _page_rows(page)
    assert rows and rows == _api_rows(api_page["entries"])
    assert page.is_disabled("#audit-older") == (api_page["next_cursor"] is None)
    assert page.is_disabled("#audit-newer")
    mine = {
        (r["action"], r["target"])
        for r in rows
        if r["actor"] == world.admin_principal and r["outcome"] == "ok"
    }
    made = world.made
    for expected in [
        ("principal.create", made["user_id"]),
        ("key.create", made["key_id"]),
        ("grant.add", made["user_id"]),
        ("grant.remove", made["user_id"]),
        ("key.revoke", made["key_id"]),
        ("tagging_policy.set", world.tenant),
        ("retention_policy.set", world.tenant),
        ("share.add", f"{world.tenant}/{world.experiment_id}"),
        ("share.remove", f"{world.tenant}/{world.experiment_id}"),
    ]:
        assert expected in mine, f"{expected} not in the audit page"
    assert {r["source"] for r in rows if r["actor"] == world.admin_principal} == {"127.0.0.1"}
    details = page.inner_text('#audit tr[data-action="key.create"] .audit-details')
    assert f"principal_id={made['user_id']}" in details and "name=laptop" in details
    page.screenshot(path=str(world.shots / "ui-admin-audit-actions.png"), full_page=True)

    # Filtered by action prefix: the page shows what the API answers for the same filter.
    page.fill("#audit-action", "key.")
    page.click("#audit-filter button[type=submit]")
    until(
        page,
        "[...document.querySelectorAll('#audit tbody tr')].every(r => r.dataset.action.startsWith('key.'))",
    )
    keyed = world.get("/audit", limit=50, action="key.")["entries"]
    assert {e["action"] for e in keyed} == {"key.create", "key.revoke"}
    assert _page_rows(page) == _api_rows(keyed)
    assert "action=key." in page.evaluate("location.hash")
    # Refused attempts (the share with a tenant that does not exist: recorded as denied).
    page.fill("#audit-action", "")
    page.select_option("#audit-outcome", "denied")
    until(
        page, "[...document.querySelectorAll('#audit tbody tr')].every(r => r.dataset.outcome === 'denied')"
    )
    denied = world.get("/audit", limit=50, outcome="denied")["entries"]
    assert denied and _page_rows(page) == _api_rows(denied)
    # By actor: the admin's own entries only.
    page.select_option("#audit-outcome", "")
    page.fill("#audit-actor", world.admin_principal)
    page.click("#audit-filter button[type=submit]")
    by_actor = world.get("/audit", limit=50, actor=world.admin_principal)["entries"]
    until(page, "n => document.querySelectorAll('#audit tbody tr').length === n", len(by_actor))
    assert _page_rows(page) == _api_rows(by_actor)


def test_the_audit_log_pages_with_the_cursor(context: BrowserContext, world: AdminWorld) -> None:
    # More than one page (50 rows) of entries: a burst of key creations through the API.
    user_id = world.made["user_id"]
    principal = httpx.post(
        f"{world.stack.url}/api/v1/principals",
        json={"kind": "service_account", "name": f"ci-{world.suffix}"},
        headers=world.headers,
        timeout=10,
    ).json()["principal_id"]
    for n in range(55):
        answer = httpx.post(
            f"{world.stack.url}/api/v1/principals/{principal}/keys",
            json={"name": f"burst-{n}"},
            headers=world.headers,
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
    world.made.update(ci_id=principal, ci_token=answer.json()["api_key"])
    assert user_id
    page = context.new_page()
    sign_in_and_settle(page, world)
    open_section(page, world, "audit")
    first = world.get("/audit", limit=50)
    assert first["next_cursor"] is not None
    assert _page_rows(page) == _api_rows(first["entries"])
    page.click("#audit-older")
    second = world.get("/audit", limit=50, cursor=first["next_cursor"])
    until(
        page,
        "seq => document.querySelector('#audit tbody tr').dataset.seq === seq",
        str(second["entries"][0]["seq"]),
    )
    assert _page_rows(page) == _api_rows(second["entries"])
    assert not page.is_disabled("#audit-newer")
    page.click("#audit-newer")
    until(
        page,
        "seq => document.querySelector('#audit tbody tr').dataset.seq === seq",
        str(first["entries"][0]["seq"]),
    )


def test_admin_disables_a_service_account(context: BrowserContext, world: AdminWorld) -> None:
    ci_id, ci_token = world.made["ci_id"], world.made["ci_token"]
    ci_headers = {"Authorization": f"Bearer {ci_token}"}
    assert httpx.get(f"{world.stack.url}/api/v1/me", headers=ci_headers, timeout=10).status_code == 200
    page = context.new_page()
    sign_in(page, world)
    open_section(page, world, "users")
    # No way to disable oneself.
    assert (
        page.locator(
            f'#principals tr[data-principal-id="{world.admin_principal}"] .disable-principal'
        ).count()
        == 0
    )
    row = page.locator(f'#principals tr[data-principal-id="{ci_id}"]')
    assert "service account" in row.inner_text()
    row.locator(".disable-principal").click()
    row.locator(".confirm-yes").click()
    page.wait_for_selector(f'#principals tr[data-principal-id="{ci_id}"] .status-failed')
    assert "disabled" in page.inner_text(f'#principals tr[data-principal-id="{ci_id}"] .principal-state')
    listed = {p["principal_id"]: p for p in world.get("/principals")["principals"]}
    assert listed[ci_id]["disabled_at"] is not None
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline:
        status = httpx.get(f"{world.stack.url}/api/v1/me", headers=ci_headers, timeout=5).status_code
        if status == 401:
            break
        time.sleep(0.1)
    assert status == 401, f"a key of the disabled account still answered {status}"
    # A disabled principal is offered no new key.
    open_section(page, world, "keys")
    offered = page.eval_on_selector_all("#new-key-principal option", "os => os.map(o => o.value)")
    assert ci_id not in offered and world.admin_principal in offered


@pytest.mark.parametrize("who", ["viewer", "engineer"])
def test_a_non_admin_sees_no_admin_link_and_is_not_allowed(
    context: BrowserContext, world: AdminWorld, who: str
) -> None:
    identity = world.viewer if who == "viewer" else world.engineer
    page = context.new_page()
    sign_in(page, world, identity)
    page.wait_for_selector("#experiments")
    assert page.locator("#nav-admin").count() == 0
    assert "Experiments" in page.inner_text("#nav")
    page.goto(f"{world.ui}#/admin/keys")
    page.wait_for_selector("#not-allowed")
    assert page.get_attribute("#not-allowed", "role") == "alert"
    assert "Not allowed" in page.inner_text("#not-allowed")
    assert page.locator("#keys, #new-key, .admin-tabs").count() == 0
    # The API refuses it anyway, with the same session cookie.
    status = page.evaluate("fetch('/api/v1/keys').then(r => r.status)")
    assert status == 403
    refused = httpx.get(f"{world.stack.url}/api/v1/keys", headers=identity.headers, timeout=10)
    assert refused.status_code == 403
    if who == "viewer":
        page.screenshot(path=str(world.shots / "ui-admin-not-allowed.png"), full_page=True)


def test_every_admin_page_renders_for_the_admin(context: BrowserContext, world: AdminWorld) -> None:
    page = context.new_page()
    sign_in(page, world)
    for section in SECTIONS:
        open_section(page, world, section)
        assert page.locator(".admin-tabs a").count() == len(SECTIONS)
        assert page.locator('[role="alert"]:not([hidden])').count() == 0
        page.screenshot(path=str(world.shots / f"ui-admin-{section}.png"), full_page=True)
    # Content each page got from the API.
    open_section(page, world, "users")
    assert page.locator(f'#principals tr[data-principal-id="{world.viewer.principal_id}"]').count() == 1
    open_section(page, world, "keys")
    assert page.locator(f'#keys tr[data-key-id="{world.engineer.key.key_id}"]').count() == 1
    open_section(page, world, "roles")
    assert (
        page.locator(
            f'#grants tr[data-principal-id="{world.engineer.principal_id}"][data-role="engineer"]'
        ).count()
        == 1
    )
    page.goto(f"{world.ui}#/admin/nothing-here")
    page.wait_for_selector("section.admin")
    assert "No admin page" in page.inner_text("section.admin")


def test_the_pure_parts_of_the_admin_modules(context: BrowserContext, world: AdminWorld) -> None:
    """Value splitting, key state and audit details, run inside the browser itself."""
    page = context.new_page()
    page.goto(world.ui)
    page.wait_for_selector("#sign-in")
    result = page.evaluate(
        """async () => {
          const { splitValues } = await import('/ui/static/js/pages/admin-policies.js');
          const { keyState } = await import('/ui/static/js/pages/admin-keys.js');
          const { detailText } = await import('/ui/static/js/pages/admin-audit.js');
          const now = Date.parse('2026-01-02T00:00:00Z');
          return {
            split: splitValues(' a, b ,, a,c '),
            empty: splitValues('  '),
            states: [
              keyState({ revoked_at: '2026-01-01T00:00:00Z', expires_at: null }, now),
              keyState({ revoked_at: null, expires_at: '2026-01-01T00:00:00Z' }, now),
              keyState({ revoked_at: null, expires_at: '2026-02-01T00:00:00Z' }, now),
              keyState({ revoked_at: null, expires_at: null }, now),
            ],
            details: detailText({ role: 'engineer', experiment_id: null, required: { team: ['a'] } }),
          };
        }"""
    )
    assert result["split"] == ["a", "b", "c"] and result["empty"] == []
    assert result["states"] == ["revoked", "expired", "active", "active"]
    assert result["details"] == 'role=engineer experiment_id=null required={"team":["a"]}'


@pytest.fixture(autouse=True)
def _stack_still_answers(world: AdminWorld) -> Iterator[None]:
    """After each test: the API still answers; if not, the services' log says why."""
    yield
    try:
        answer = httpx.get(f"{world.stack.url}/api/v1/me", headers=world.stack.headers, timeout=30)
        status = f"{answer.status_code} {answer.text[:200]}"
    except httpx.HTTPError as exc:
        status = repr(exc)
    assert status.startswith("200 "), (
        f"the API stopped answering ({status}):\n{world.stack.services.log_tail(60)}"
    )
