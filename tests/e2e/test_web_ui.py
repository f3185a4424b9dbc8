"""The web UI in a real browser (Debian's chromium through Playwright) against the real stack.

Data is logged through the SDK over Kafka and projected by the `serve all` process; the
browser signs in with API keys and uses the pages as a person would: experiments search,
the runs table (filter with the run-search grammar, sort, nested runs), the run page's
canvas charts (points drawn, the spike kept, zoom re-fetching a finer window, findings
marked), a viewer without write controls, CSRF and the session cookie's flags.
Screenshots land in $RUNLEDGER_UI_SCREENSHOTS (default: the session's test directory).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from runledger.auth.model import Role
from tests.e2e.conftest import Stack
from tests.support.auth import Identity, provision
from tests.support.browser import until
from tests.support.ui_data import Logged, Plan, log_experiment, wait_projected

pytestmark = pytest.mark.integration

SPIKE = 12345.0
LONG_CHART = '.chart-card[data-metric="long/loss"]'
T = TypeVar("T")
LONG_POINTS = 100_000


@dataclass
class World:
    stack: Stack
    plan: Plan
    logged: Logged
    other_experiment: str
    viewer: Identity
    shots: Path

    @property
    def ui(self) -> str:
        return f"{self.stack.url}/ui/"


@pytest.fixture(scope="module")
def world(stack: Stack, test_root: Path) -> World:
    suffix = uuid.uuid4().hex[:6]
    plan = Plan(
        experiment=f"ui-e2e-{suffix}",
        runs=40,
        parents=2,
        children=3,
        steps=30,
        long_series=LONG_POINTS,
        spike_value=SPIKE,
    )
    logged = log_experiment(
        plan,
        bootstrap=stack.bootstrap,
        api_key=stack.bootstrap_key.token,
        tenant="default",
        spool=test_root / f"ui-spool-{suffix}",
        events_topic=stack.events_topic,
    )
    in_thread(wait_projected(stack.dsn, plan, logged, limit_s=120))
    other = httpx.post(
        f"{stack.url}/api/v1/experiments",
        json={"name": f"ui-other-{suffix}"},
        headers=stack.headers,
        timeout=30,
    )
    assert other.status_code in (200, 201), other.text
    viewer = provisioned(stack, Role.VIEWER)
    shots = Path(os.environ.get("RUNLEDGER_UI_SCREENSHOTS") or test_root)
    shots.mkdir(parents=True, exist_ok=True)
    return World(stack, plan, logged, other.json()["experiment_id"], viewer, shots)


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion (sync Playwright keeps an event loop in this thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def provisioned(stack: Stack, role: Role) -> Identity:
    """A new principal of tenant default with a key, once the API has loaded it."""
    identity = in_thread(provision(stack.dsn, "default", role))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(f"{stack.url}/api/v1/me", headers=identity.headers, timeout=10).status_code == 200:
            return identity
        time.sleep(0.1)
    raise AssertionError("the API never loaded the new key")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 760})
    ctx.set_default_timeout(30_000)  # the shared 2-core CI machine is slow at times
    yield ctx
    ctx.close()


def sign_in(page: Page, world: World, identity: Identity | None = None) -> None:
    """Through the sign-in form: the admin by token, another identity by key id + secret."""
    page.goto(world.ui)
    if identity is None:
        page.fill("#api-key", world.stack.bootstrap_key.token)
    else:
        page.fill("#key-id", identity.key.key_id)
        page.fill("#key-secret", identity.key.secret)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")


def visible_rows(page: Page) -> list[dict[str, Any]]:
    """The rows the virtualised table has in the DOM, in display order."""
    rows: list[dict[str, Any]] = page.eval_on_selector_all(
        ".vt-row:not([hidden])",
        """rows => rows.map(r => ({index: Number(r.dataset.index), id: r.dataset.runId,
            cells: [...r.children].map(c => c.textContent)}))""",
    )
    return sorted(rows, key=lambda r: r["index"])


def test_sign_in_sets_a_strict_httponly_session_cookie(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    page.goto(world.ui)
    page.wait_for_selector("#sign-in")
    assert page.locator("#experiments").count() == 0  # nothing before signing in
    sign_in(page, world)
    cookies = [c for c in context.cookies() if c["name"] == "runledger_session"]
    assert len(cookies) == 1
    cookie = cookies[0]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["secure"] is False  # plain http here (Secure over https: tests/integration)
    # Scripts can read neither the cookie nor the key.
    assert "runledger_session" not in page.evaluate("document.cookie")
    stored = page.evaluate("JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})")
    assert world.stack.bootstrap_key.secret not in stored
    assert world.stack.admin.principal_id in page.inner_text("#whoami")


def test_experiments_list_and_search(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    sign_in(page, world)
    page.wait_for_selector(f'#experiments tr[data-experiment-id="{world.logged.experiment_id}"]')
    assert page.locator(f'#experiments tr[data-experiment-id="{world.other_experiment}"]').count() == 1
    assert page.locator("#new-experiment").count() == 1  # the admin may write
    page.fill("#experiment-search", world.plan.experiment)
    until(
        page,
        "id => document.querySelectorAll('#experiments tbody tr').length === 1"
        " && document.querySelector(`#experiments tr[data-experiment-id='${id}']`) !== null",
        arg=world.logged.experiment_id,
    )
    page.fill("#experiment-search", "no-such-experiment-anywhere")
    until(page, "document.querySelectorAll('#experiments tbody tr').length === 0")
    assert "No experiments" in page.inner_text("#experiments-status")


def test_runs_table_filter_sort_and_tree(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    sign_in(page, world)
    page.goto(f"{world.ui}#/experiments/{world.logged.experiment_id}")
    page.wait_for_selector("section.experiment[data-loaded=true]")
    top_level = world.plan.runs + 1  # + the long-series run; children stay folded
    until(page, f"document.querySelector('#runs-table').dataset.rows === '{top_level}'")
    # Virtualised: only the rows in view (and a margin) exist.
    assert int(page.get_attribute("#runs-table", "data-rendered") or 0) < top_level

    # Sort by train/loss: ascending on the first click, missing values last.
    header = page.locator('.vt-th[data-col="metrics.train/loss"]')
    header.click()
    until(page, "document.querySelector('.vt-th[aria-sort=ascending]') !== null")
    column = [
        c["col"] for c in page.eval_on_selector_all(".vt-th", "hs => hs.map(h => ({...h.dataset}))")
    ].index("metrics.train/loss")
    page.wait_for_timeout(100)
    values = [float(r["cells"][column]) for r in visible_rows(page) if r["cells"][column]]
    assert len(values) >= 10 and values == sorted(values)
    header.click()
    until(page, "document.querySelector('.vt-th[aria-sort=descending]') !== null")
    page.wait_for_timeout(100)
    values = [float(r["cells"][column]) for r in visible_rows(page) if r["cells"][column]]
    assert values == sorted(values, reverse=True)

    # Nested runs: by name, run-00000 comes right after long-series; unfold its three children.
    page.click('.vt-th[data-col="name"]')
    until(page, "document.querySelector('.vt-th[data-col=name]').ariaSort === 'ascending'")
    parent_id = world.logged.run_ids[0]
    page.click(f'.vt-row[data-run-id="{parent_id}"] button.toggle')
    until(page, f"document.querySelector('#runs-table').dataset.rows === '{top_level + 3}'")
    page.wait_for_timeout(100)
    order = [r["id"] for r in visible_rows(page)]
    at = order.index(parent_id)
    assert set(order[at + 1 : at + 4]) == set(world.logged.child_ids[:3])

    # The filter box speaks the run-search grammar through the search API.
    adam = sum(1 for i in range(world.plan.runs) if i % 3 == 0)
    page.fill("#run-filter", "params.optimizer = 'adam' and tags.data = 'v2'")
    page.press("#run-filter", "Enter")
    expected = sum(1 for i in range(world.plan.runs) if i % 3 == 0 and i % 2 == 0)
    until(page, f"document.querySelector('#runs-table').dataset.rows === '{expected}'")
    assert f"{expected} of" in page.inner_text("#runs-status")
    page.fill("#run-filter", "params.optimizer = 'adam'")
    page.press("#run-filter", "Enter")
    until(page, f"document.querySelector('#runs-table').dataset.rows === '{adam}'")
    # A malformed filter: the server's message, the table unchanged.
    page.fill("#run-filter", "metrics.train/loss <<< 1")
    page.press("#run-filter", "Enter")
    page.wait_for_selector("#filter-error:not([hidden])")
    assert page.inner_text("#filter-error").strip()
    assert page.get_attribute("#runs-table", "data-rows") == str(adam)


def _history_requests(page: Page) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/history" in r.url else None)
    return seen


def test_run_page_draws_the_series_and_zoom_refetches(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    sign_in(page, world)
    requests = _history_requests(page)
    page.goto(f"{world.ui}#/runs/{world.logged.long_run_id}")
    card = page.locator('.chart-card[data-metric="long/loss"]')
    card.wait_for()
    page.wait_for_selector('.chart-card[data-metric="long/loss"][data-loading=false]')
    canvas = card.locator("canvas")
    until(page, f"document.querySelector('{LONG_CHART} canvas').dataset.firstDataAt !== undefined")
    points = int(canvas.get_attribute("data-points") or 0)
    assert 100 < points <= 4 * 4000  # the server sent a downsampled series (not 100,000 points)
    assert float(canvas.get_attribute("data-y-max") or 0) == SPIKE  # min/max buckets keep the spike
    assert len(requests) == 1
    first = parse_qs(urlparse(requests[0]).query)
    assert first["method"] == ["minmax"] and "start_step" not in first
    page.screenshot(path=str(world.shots / "ui-run-long-series.png"), full_page=True)
    # Pixels: the canvas is not blank.
    painted = page.evaluate(
        """() => { const c = document.querySelector('.chart-card[data-metric="long/loss"] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
    )
    assert painted > 1000

    # Drag across the middle tenth of the plot: a finer window comes from the server.
    box = canvas.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    left, width = box["x"] + 64, box["width"] - 64 - 14
    with page.expect_response(lambda r: "/history" in r.url and "start_step" in r.url) as zoomed:
        page.mouse.move(left + width * 0.45, y)
        page.mouse.down()
        page.mouse.move(left + width * 0.5, y, steps=4)
        page.mouse.move(left + width * 0.55, y, steps=4)
        page.mouse.up()
    body = zoomed.value.json()
    query = parse_qs(urlparse(zoomed.value.url).query)
    start, end = int(query["start_step"][0]), int(query["end_step"][0])
    assert 0.4 * LONG_POINTS < start < end < 0.6 * LONG_POINTS
    assert len(requests) == 2
    assert min(body["steps"]) >= start and max(body["steps"]) <= end
    # Finer: more points per step than the full view had.
    assert len(body["steps"]) / (end - start + 1) > points / LONG_POINTS
    until(
        page,
        "document.querySelector('.chart-card[data-metric=\"long/loss\"] .muted.small').textContent.includes('steps')",
    )
    # The spike sits mid-series, inside the window: still drawn.
    until(page, f"Number(document.querySelector('{LONG_CHART} canvas').dataset.yMax) === {SPIKE}")
    page.screenshot(path=str(world.shots / "ui-run-zoomed.png"), full_page=True)
    # Double-click: back to the whole series (one more request, without a window).
    with page.expect_response(lambda r: "/history" in r.url and "start_step" not in r.url):
        canvas.dblclick()
    assert len(requests) == 3

    # Options: log scale and smoothing redraw without fetching; the time axis fetches real timestamps.
    page.check("#log-scale")
    page.fill("#smoothing", "0.9")
    page.dispatch_event("#smoothing", "input")
    page.wait_for_timeout(100)
    assert len(requests) == 3
    with page.expect_response(lambda r: "/history" in r.url and "method=lttb" in r.url):
        page.select_option("#x-axis", "time")


def test_train_and_val_share_a_chart_and_findings_are_marked(context: BrowserContext, world: World) -> None:
    # A finding of the long series: the analysis service reports the spike by itself.
    deadline = time.monotonic() + 30
    marked: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not marked:
        answer = httpx.get(
            f"{world.stack.url}/api/v1/runs/{world.logged.long_run_id}/findings",
            headers=world.stack.headers,
            timeout=10,
        ).json()
        marked = [
            f for f in answer["findings"] if f["body"].get("key") == "long/loss" and "step" in f["body"]
        ]
        time.sleep(0.5)
    assert marked, "the analysis service reported nothing about the long series"

    page = context.new_page()
    sign_in(page, world)
    page.goto(f"{world.ui}#/runs/{world.logged.run_ids[1]}")
    card = page.locator('.chart-card[data-metric="loss"]')
    card.wait_for()
    page.wait_for_selector('.chart-card[data-metric="loss"][data-loading=false]')
    assert card.get_attribute("data-keys") == "train/loss,val/loss"
    assert card.locator("canvas").get_attribute("data-series") == "2"
    until(
        page,
        f"document.querySelector('.chart-card[data-metric=\"loss\"] canvas').dataset.points === '{2 * world.plan.steps}'",
    )
    assert page.inner_text("#params").count("optimizer") == 1
    page.screenshot(path=str(world.shots / "ui-run-overlay.png"), full_page=True)

    page.goto(f"{world.ui}#/runs/{world.logged.long_run_id}")
    page.wait_for_selector('.chart-card[data-metric="long/loss"][data-loading=false]')
    until(
        page,
        "Number(document.querySelector('.chart-card[data-metric=\"long/loss\"] canvas').dataset.markers) > 0",
    )
    assert page.locator("#findings tbody tr").count() >= len(marked)


def test_a_viewer_sees_no_write_controls(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    sign_in(page, world, world.viewer)
    page.wait_for_selector(f'#experiments tr[data-experiment-id="{world.logged.experiment_id}"]')
    assert page.locator("#new-experiment").count() == 0
    page.goto(f"{world.ui}#/runs/{world.logged.run_ids[0]}")
    page.wait_for_selector("#params")
    assert page.locator(".write-control").count() == 0
    me = page.evaluate("fetch('/api/v1/me').then(r => r.json())")
    assert me["permissions"]["write"] is False and me["via"] == "session"
    # The admin sees the controls on the same page.
    admin = context.browser.new_context() if context.browser else None
    assert admin is not None
    try:
        admin_page = admin.new_page()
        sign_in(admin_page, world)
        admin_page.goto(f"{world.ui}#/runs/{world.logged.run_ids[0]}")
        admin_page.wait_for_selector("#set-tag")
    finally:
        admin.close()


def test_csrf_a_cookie_post_without_the_token_is_refused(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    sign_in(page, world)
    name = f"csrf-{uuid.uuid4().hex[:6]}"
    without = page.evaluate(
        """name => fetch('/api/v1/experiments', {method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({name})}).then(async r => ({status: r.status, body: await r.json()}))""",
        name,
    )
    assert without["status"] == 403 and "CSRF" in without["body"]["message"]
    csrf = page.evaluate("fetch('/ui/session').then(r => r.json()).then(s => s.csrf_token)")
    # The same cookie and token from a foreign Origin: refused too.
    foreign = context.request.post(
        f"{world.stack.url}/api/v1/experiments",
        data={"name": name},
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert foreign.status == 403
    # The page's own way (token in X-CSRF-Token): created, through the UI's form.
    page.fill("#new-experiment-name", name)
    page.click("#new-experiment button[type=submit]")
    page.wait_for_selector(f"#experiments tr:has-text('{name}')")


def test_sign_out_and_key_revocation_end_the_session(
    context: BrowserContext, browser: Browser, world: World
) -> None:
    page = context.new_page()
    sign_in(page, world)
    cookie = next(c["value"] for c in context.cookies() if c["name"] == "runledger_session")
    page.click("#sign-out")
    page.wait_for_selector("#sign-in")
    assert not [c for c in context.cookies() if c["name"] == "runledger_session"]
    replay = httpx.get(f"{world.stack.url}/api/v1/me", cookies={"runledger_session": cookie}, timeout=10)
    assert replay.status_code == 401

    # A key revoked while its session is open: the next page load asks to sign in again.
    identity = provisioned(world.stack, Role.VIEWER)
    page2 = browser.new_context().new_page()
    sign_in(page2, world, identity)
    revoked = httpx.delete(
        f"{world.stack.url}/api/v1/keys/{identity.key.key_id}", headers=world.stack.headers, timeout=10
    )
    assert revoked.status_code == 200, revoked.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = page2.evaluate("fetch('/api/v1/me').then(r => r.status)")
        if status == 401:
            break
        page2.wait_for_timeout(200)
    assert status == 401
    page2.reload()
    page2.wait_for_selector("#sign-in")
    page2.context.close()


def test_the_pure_parts_of_the_modules(context: BrowserContext, world: World) -> None:
    """Tree flattening, chart grouping, smoothing and ticks, run inside the browser itself."""
    page = context.new_page()
    page.goto(world.ui)
    page.wait_for_selector("#sign-in")
    result = page.evaluate(
        """async () => {
          const { flattenTree } = await import('/ui/static/js/pages/experiment.js');
          const { groupKeys } = await import('/ui/static/js/pages/run.js');
          const { smooth, ticks, label } = await import('/ui/static/js/chart.js');
          const runs = [
            { id: 'a', parent: null, metrics: { m: 3 }, params: {} },
            { id: 'b', parent: null, metrics: { m: 1 }, params: {} },
            { id: 'c', parent: 'a', metrics: { m: 2 }, params: {} },
            { id: 'd', parent: 'a', metrics: {}, params: {} },
            { id: 'e', parent: 'gone', metrics: { m: 0 }, params: {} },
          ];
          const folded = flattenTree(runs, { id: 'metrics.m', dir: 1 }, new Set());
          const open = flattenTree(runs, { id: 'metrics.m', dir: -1 }, new Set(['a']));
          return {
            folded: folded.map(r => r.id + ':' + r.childCount),
            open: open.map(r => r.id + ':' + r.depth),
            groups: groupKeys(['train/loss', 'val/loss', 'val_loss', 'accuracy', 'system/cpu']),
            smooth: Array.from(smooth(Float64Array.from([1, 1, 1, NaN, 1]), 0.9)),
            ticks: ticks(0, 1, 5),
            // a memory gauge moving by a few MB around 1.9 GB, and plain values
            memory: ticks(1.9e9, 1.91e9, 5).map(t => label(t, false, 2e6)),
            plain: [label(0.25, false, 0.05), label(1234.5, false, 0.5), label(2, true)],
          };
        }"""
    )
    assert result["folded"] == ["e:0", "b:0", "a:2"]  # an orphan is a root; a's children folded
    assert result["open"] == ["a:0", "c:1", "d:1", "b:0", "e:0"]  # missing metric last either way
    assert {g["base"]: g["keys"] for g in result["groups"]} == {
        "loss": ["train/loss", "val/loss", "val_loss"],
        "accuracy": ["accuracy"],
        "system/cpu": ["system/cpu"],
    }
    smoothed = result["smooth"]
    assert smoothed[:3] == pytest.approx([1, 1, 1]) and smoothed[4] == pytest.approx(1)  # debiased EMA
    assert smoothed[3] is None or math.isnan(smoothed[3])  # a gap stays a gap
    assert result["ticks"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])
    memory = result["memory"]
    assert len(set(memory)) == len(memory) == 6, memory  # every tick readable apart
    assert memory[0] == "1.900e+9" and memory[1] == "1.902e+9"
    assert result["plain"] == ["0.25", "1234.5", "100"]


@pytest.fixture(autouse=True)
def _stack_still_answers(world: World) -> Iterator[None]:
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
