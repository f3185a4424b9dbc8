"""The compare view and the attribution report in a real browser against the real stack.

An experiment of 16 runs (4 learning rates x 2 optimizers x 2 seeds, per-subgroup fairness
metrics) is logged through the SDK over Kafka; the browser selects runs in the experiment's
runs table, opens the compare view and checks each section against what the API answers:
history overlays (one series per run), parallel coordinates (one polyline per run, one axis
per dimension), the scatter-plot matrix (k x k cells), hyperparameter importance (the API's
order), stability across seeds and fairness by subgroup (the API's numbers), the performance
table (best marked), then requests an attribution and reads its report (the API's factor
order). Screenshots land in $RUNLEDGER_UI_SCREENSHOTS (default: the session's test directory).
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

from tests.e2e.conftest import Stack
from tests.support.browser import until
from tests.support.ui_compare_data import (
    LRS,
    NOISY,
    OPTIMIZERS,
    SEEDS,
    CompareLogged,
    CompareRun,
    log_compare_experiment,
    wait_compare_projected,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")

METRICS = ["train/loss", "val/acc", "val/loss"]  # what the performance section lists by default
# The runs the tests compare: both seeds of four configurations, one of them the noisy one.
CHOSEN = [(0.1, "adam"), (0.01, "sgd"), (0.001, "adam"), NOISY]


@dataclass
class CompareWorld:
    stack: Stack
    logged: CompareLogged
    shots: Path

    @property
    def ui(self) -> str:
        return f"{self.stack.url}/ui/"

    @property
    def chosen(self) -> list[CompareRun]:
        return [r for lr, opt in CHOSEN for r in self.logged.pick(lr, opt)]

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(
            method, f"{self.stack.url}{path}", headers=self.stack.headers, timeout=120, **kwargs
        )
        assert answer.status_code < 300, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def world(stack: Stack, test_root: Path) -> CompareWorld:
    suffix = uuid.uuid4().hex[:6]
    logged = log_compare_experiment(
        f"ui-compare-{suffix}",
        bootstrap=stack.bootstrap,
        api_key=stack.bootstrap_key.token,
        tenant="default",
        spool=test_root / f"ui-compare-spool-{suffix}",
        events_topic=stack.events_topic,
    )
    assert len(logged.runs) == len(LRS) * len(OPTIMIZERS) * len(SEEDS)
    in_thread(wait_compare_projected(stack.dsn, logged))
    shots = Path(os.environ.get("RUNLEDGER_UI_SCREENSHOTS") or test_root)
    shots.mkdir(parents=True, exist_ok=True)
    return CompareWorld(stack, logged, shots)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(30_000)
    ctx.on("console", lambda m: print("CONSOLE", m.type, m.text) if m.type in ("error", "warning") else None)
    ctx.on("weberror", lambda e: print("PAGEERROR", e.error))
    yield ctx
    ctx.close()


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion (sync Playwright keeps an event loop in this thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sign_in(page: Page, world: CompareWorld) -> None:
    """Through the sign-in form, as the tenant's admin (by token)."""
    page.goto(world.ui)
    page.fill("#api-key", world.stack.bootstrap_key.token)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")
    # The experiments page mounted: main.js's router does not drop a slower earlier render, so
    # navigating before it lands could see the experiments page mounted over the next one.
    page.wait_for_selector("#experiments-status")


def open_compare(page: Page, world: CompareWorld) -> None:
    """Select the chosen runs in the experiment's table and press Compare."""
    sign_in(page, world)
    page.goto(f"{world.ui}#/experiments/{world.logged.experiment_id}")
    page.wait_for_selector("section.experiment[data-loaded=true]")
    until(page, f"document.querySelector('#runs-table').dataset.rows === '{len(world.logged.runs)}'")
    assert page.is_disabled("#compare-runs")
    for run in world.chosen:
        page.check(f'.vt-row[data-run-id="{run.run_id}"] input.row-select')
    assert page.inner_text("#compare-runs").strip() == f"Compare ({len(world.chosen)})"
    page.click("#compare-runs")
    page.wait_for_selector("section.compare")


def numbers_close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def cell_value(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def test_selecting_runs_and_the_plots(context: BrowserContext, world: CompareWorld) -> None:
    page = context.new_page()
    open_compare(page, world)
    chosen = {r.run_id for r in world.chosen}
    hash_ids = parse_qs(urlparse(page.url).fragment.split("?", 1)[1])["runs"][0].split(",")
    assert set(hash_ids) == chosen
    assert page.locator("#compare-legend .cmp-legend-item").count() == len(chosen)

    # History overlays: one chart per default metric, one series (line) per run.
    for metric in METRICS:
        page.wait_for_selector(f'#overlays .chart-card[data-metric="{metric}"][data-loading=false]')
    assert page.locator("#overlays .chart-card").count() == len(METRICS)
    for metric in METRICS:
        canvas = f'#overlays .chart-card[data-metric="{metric}"] canvas'
        until(page, f"document.querySelector('{canvas}').dataset.series === '{len(chosen)}'")
        assert int(page.get_attribute(canvas, "data-points") or 0) >= len(chosen) * 10

    # Parallel coordinates: a polyline per run, an axis per chosen dimension (varying params
    # first: lr numeric on a log scale, optimizer categorical, seed; then the metrics).
    lines = page.eval_on_selector_all(
        "#parallel-coordinates polyline.pc-line", "ls => ls.map(l => l.dataset.runId)"
    )
    assert sorted(lines) == sorted(chosen)
    axes = page.eval_on_selector_all(
        "#parallel-coordinates .pc-axis", "as => as.map(a => [a.dataset.dim, a.dataset.kind])"
    )
    expected_axes = ["params.lr", "params.optimizer", "params.seed"] + [f"metrics.{m}" for m in METRICS]
    assert [a[0] for a in axes] == expected_axes
    kinds = dict(axes)
    assert kinds["params.lr"] == "numeric" and kinds["params.optimizer"] == "categorical"
    assert all(kinds[f"metrics.{m}"] == "numeric" for m in METRICS)
    # Each polyline has one vertex per axis.
    vertices = page.eval_on_selector_all(
        "#parallel-coordinates polyline.pc-line", "ls => ls.map(l => l.points.numberOfItems)"
    )
    assert vertices == [len(expected_axes)] * len(chosen)
    # Coloured by val/loss: the best run (lowest loss) and the worst get different colours.
    colors = set(
        page.eval_on_selector_all(
            "#parallel-coordinates polyline.pc-line", "ls => ls.map(l => l.getAttribute('stroke'))"
        )
    )
    assert len(colors) >= 4
    # Fewer axes through the picker.
    page.click("#pc-picker summary")
    page.uncheck('#pc-picker .picker-item[data-key="params.seed"] input')
    until(page, "document.querySelectorAll('#parallel-coordinates .pc-axis').length === 5")
    assert page.locator("#parallel-coordinates polyline.pc-line").count() == len(chosen)
    page.click("#pc-picker summary")
    # Brushing the optimizer axis around one level fades the runs of the other.
    box = page.locator('#parallel-coordinates .pc-axis[data-dim="params.optimizer"] .pc-hit').bounding_box()
    assert box is not None
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + 1)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] * 0.2, steps=3)
    page.mouse.up()
    sgd = sum(1 for r in world.chosen if r.optimizer == "sgd")  # sgd is the top level (sorted last)
    assert page.get_attribute("#parallel-coordinates", "data-selected") == str(sgd)

    # Scatter-plot matrix: k x k cells, every off-diagonal cell a dot per run.
    dims = int(page.get_attribute("#scatter-matrix", "data-dims") or 0)
    assert dims == 4
    assert page.locator("#scatter-matrix .spm-cell").count() == dims * dims
    dots = page.eval_on_selector_all(
        "#scatter-matrix .spm-cell",
        "cs => cs.map(c => [c.dataset.row === c.dataset.col, c.querySelectorAll('.spm-dot').length])",
    )
    assert all(n == (0 if diagonal else len(chosen)) for diagonal, n in dots)
    page.click("#spm-picker summary")
    page.check('#spm-picker .picker-item[data-key="params.seed"] input')
    until(page, "document.querySelectorAll('#scatter-matrix .spm-cell').length === 25")
    page.click("#spm-picker summary")
    page.screenshot(path=str(world.shots / "ui-compare-plots.png"), full_page=True)


def test_importance_stability_fairness_and_performance_match_the_api(
    context: BrowserContext, world: CompareWorld
) -> None:
    page = context.new_page()
    with page.expect_response(lambda r: "hyperparameter-importance" in r.url, timeout=120_000) as answered:
        open_compare(page, world)
    response = answered.value
    query = parse_qs(urlparse(response.url).query)
    assert sorted(query["metric"]) == sorted(METRICS)
    assert "attributes.run_id IN" in query["filter"][0]  # scoped to the 8 selected runs
    importance = response.json()
    page.wait_for_selector("#importance[data-loading=false]")
    for entry in importance["metrics"]:
        shown = page.eval_on_selector_all(
            f'#importance .importance[data-metric="{entry["metric"]}"] .importance-item',
            "items => items.map(i => i.dataset.param)",
        )
        assert shown == [i["param"] for i in entry["result"]["importances"]]
    loss = next(e for e in importance["metrics"] if e["metric"] == "val/loss")["result"]
    assert loss["importances"] and "seed" not in {i["param"] for i in loss["importances"]}
    shown_reliable = page.get_attribute('#importance .importance[data-metric="val/loss"]', "data-reliable")
    assert shown_reliable == ("true" if loss["reliable"] else "false")  # flagged as the API says
    # Which param ranks first over these 8 runs is not asserted: with one configuration noisier
    # than the lr effect, CI saw `optimizer` first, even with a positive held-out R^2. The
    # ranking itself is tested on planted data in tests/unit/test_compare.py; here the page
    # must show what the API answered, in its order.

    ids = [r.run_id for r in world.chosen]
    api = world.api(
        "POST", "/api/v1/compare", json={"runs": ids, "sections": ["performance", "stability", "fairness"]}
    )

    # Stability: one block per configuration, the API's numbers, the noisy one flagged.
    configs = api["stability"]["configurations"]
    assert len(configs) == len(CHOSEN)
    assert page.locator("#stability .stability-config").count() == len(configs)
    for index, config in enumerate(configs):
        block = f'#stability .stability-config[data-index="{index}"]'
        assert page.get_attribute(block, "data-unstable") == str(config["unstable"]).lower()
        noisy = config["configuration"] == {"lr": str(NOISY[0]), "optimizer": NOISY[1]}
        assert config["unstable"] is noisy
        for row in config["metrics"]:
            for field in ("n", "mean", "std", "cv", "ci_low", "ci_high"):
                shown = page.get_attribute(
                    f'{block} tr[data-metric="{row["metric"]}"] td[data-field="{field}"]', "data-value"
                )
                assert numbers_close(cell_value(shown), row[field]), (
                    config["configuration"],
                    row["metric"],
                    field,
                )
        assert page.locator(f"{block} tr.unstable").count() == sum(
            1 for r in config["metrics"] if r["unstable"]
        )
    assert "val/loss" in next(c for c in configs if c["unstable"])["unstable_metrics"]

    # Fairness: per attribute, a row per (run, metric): each group's value, the worst group, the gaps.
    fairness = api["fairness"]["runs"]
    assert {f["run_id"] for f in fairness} == set(ids)
    assert page.locator("#fairness .fairness-attribute").count() == 1
    block = '#fairness .fairness-attribute[data-prefix="val/"][data-attribute="sex"]'
    assert page.locator(f"{block} tbody.fairness-run").count() == len(fairness)
    for entry in fairness:
        (attribute,) = entry["attributes"]
        for metric in attribute["metrics"]:
            row = f'{block} tr[data-run-id="{entry["run_id"]}"][data-metric="{metric["metric"]}"]'
            assert page.inner_text(f"{row} td.worst-group") == metric["worst_group"]
            for group, value in metric["values"].items():
                shown = page.get_attribute(f'{row} td[data-group="{group}"]', "data-value")
                assert numbers_close(cell_value(shown), value)
            assert (
                page.get_attribute(f'{row} td[data-group="{metric["worst_group"]}"]', "class") == "num worst"
            )
            shown = page.get_attribute(f'{row} td[data-field="max_difference"]', "data-value")
            assert numbers_close(cell_value(shown), metric["max_difference"])
        accuracy = next(m for m in attribute["metrics"] if m["metric"] == "accuracy")
        assert accuracy["worst_group"] == "f"  # planted: more errors for f
        for gap in ("demographic_parity_difference", "equalized_odds_difference"):
            shown = page.get_attribute(
                f'{block} tbody[data-run-id="{entry["run_id"]}"] td[data-field="{gap}"]', "data-value"
            )
            assert numbers_close(cell_value(shown), attribute[gap])

    # Performance: the API's values, the best marked, deltas against the first run.
    perf = api["performance"]
    assert page.get_attribute("#performance-box", "data-baseline") == perf["baseline"] == ids[0]
    for metric in perf["metrics"]:
        best = page.eval_on_selector_all(
            f'#performance tr[data-metric="{metric["metric"]}"] td.best',
            "tds => tds.map(t => t.dataset.runId)",
        )
        assert best == metric["best"]
        for row in metric["rows"]:
            cell = f'#performance tr[data-metric="{metric["metric"]}"] td[data-run-id="{row["entity"]}"]'
            assert numbers_close(cell_value(page.get_attribute(cell, "data-value")), row["value"])
            assert numbers_close(cell_value(page.get_attribute(cell, "data-delta")), row["delta"])
    loss_best = next(m for m in perf["metrics"] if m["metric"] == "val/loss")["best"]
    assert loss_best[0] in {r.run_id for r in world.logged.pick(0.1, "adam")}
    # Another baseline: the deltas are recomputed by the API.
    with page.expect_response(lambda r: r.url.endswith("/api/v1/compare")):
        page.select_option("#baseline", ids[-1])
    until(page, "id => document.querySelector('#performance-box').dataset.baseline === id", arg=ids[-1])
    assert page.get_attribute(f'#performance td.is-baseline[data-run-id="{ids[-1]}"]', "data-delta") == "0"
    page.screenshot(path=str(world.shots / "ui-compare-tables.png"), full_page=True)


def test_attribution_from_the_compare_view(context: BrowserContext, world: CompareWorld) -> None:
    page = context.new_page()
    open_compare(page, world)
    page.wait_for_selector("#attribute")
    page.select_option("#attribution-metric", "val/loss")
    # Baseline: the adam runs; candidate: the sgd runs.
    for run in world.chosen:
        page.select_option(
            f'select.role[data-run-id="{run.run_id}"]', "baseline" if run.optimizer == "adam" else "candidate"
        )
    assert page.inner_text("#attribute").startswith("Attribute shift of val/loss (4 baseline → 4 candidate)")
    page.click("#attribute")
    page.wait_for_selector("section.attribution")
    attribution_id = page.get_attribute("section.attribution", "data-attribution-id")
    assert attribution_id and page.url.endswith(f"#/attribution/{attribution_id}")
    page.wait_for_selector("section.attribution[data-status=done]", timeout=240_000)
    report = world.api("GET", f"/api/v1/attributions/{attribution_id}")
    assert report["status"] == "done"
    assert sorted(report["baseline_run_ids"]) == sorted(
        r.run_id for r in world.chosen if r.optimizer == "adam"
    )
    factors = report["factors"]
    assert factors, report
    shown = page.eval_on_selector_all(
        "#attribution-factors .attr-factor",
        "fs => fs.map(f => [f.dataset.factor, f.querySelector('.attr-sentence').textContent])",
    )
    assert shown == [[f["factor"], f["sentence"]] for f in factors]
    assert {f["factor"] for f in factors} >= {"params.optimizer", "params.lr"}
    for index, factor in enumerate(factors):
        item = f'#attribution-factors .attr-factor[data-rank="{index + 1}"]'
        assert numbers_close(
            float(page.get_attribute(item, "data-contribution") or "nan"), factor["contribution"]
        )
        outcomes = page.eval_on_selector_all(
            f"{item} .refutation", "rs => rs.map(r => [r.dataset.refuter, r.dataset.outcome])"
        )
        expected = [
            [name, "passed" if r["passed"] is True else "failed" if r["passed"] is False else "error"]
            for name, r in (factor["refutations"] or {}).items()
        ]
        assert outcomes == expected
    assert any(f["refutations"] for f in factors)  # the top factors are refuted
    assert numbers_close(
        cell_value(page.get_attribute("#attribution-shift", "data-value")), report["result"]["shift"]
    )
    page.screenshot(path=str(world.shots / "ui-attribution.png"), full_page=True)
    # The list of the experiment's attributions links to it.
    page.click("text=all attributions")
    page.wait_for_selector(f'#attributions tr[data-attribution-id="{attribution_id}"]')


def test_select_all_and_the_pure_helpers(context: BrowserContext, world: CompareWorld) -> None:
    page = context.new_page()
    sign_in(page, world)
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/api/" in r.url else None)
    page.goto(f"{world.ui}#/experiments/{world.logged.experiment_id}")
    page.wait_for_selector("section.experiment[data-loaded=true]")
    # One columnar request for every run, no paging through GET /runs.
    assert [u for u in fetched if "/runs:table" in u] and not [u for u in fetched if "/api/v1/runs?" in u]
    page.check("#select-all")
    assert page.inner_text("#compare-runs").strip() == f"Compare ({len(world.logged.runs)})"
    # Filtered down to adam: unselect the shown ones; the sgd runs stay selected.
    page.fill("#run-filter", "params.optimizer = 'adam'")
    page.press("#run-filter", "Enter")
    until(page, "document.querySelector('#runs-table').dataset.rows === '8'")
    assert page.is_checked("#select-all")
    page.uncheck("#select-all")
    assert page.inner_text("#compare-runs").strip() == "Compare (8)"
    page.click("#clear-selection")
    assert page.inner_text("#compare-runs").strip() == "Compare (0)" and page.is_disabled("#compare-runs")
    result = page.evaluate(
        """async () => {
          const { dimension, parallelCoordinates } = await import('/ui/static/js/plots.js');
          const { parseRuns, varyingParams } = await import('/ui/static/js/pages/compare.js');
          const { barScale } = await import('/ui/static/js/pages/attribution.js');
          const runs = [
            { id: 'a', name: 'a', params: { lr: '0.1', opt: 'sgd', k: '1' }, metrics: { m: 2 } },
            { id: 'b', name: 'b', params: { lr: '0.001', opt: 'adam', k: '1' }, metrics: { m: NaN } },
            { id: 'c', name: 'c', params: { lr: '0.01', k: '1' }, metrics: { m: 4 } },
          ];
          const lr = dimension('params.lr', runs);
          const opt = dimension('params.opt', runs);
          const m = dimension('metrics.m', runs);
          const svg = parallelCoordinates({ runs, dims: [lr, opt, m], colors: new Map(runs.map(r => [r.id, '#000'])) });
          const scale = barScale([{ contribution: -1, ci_low: -2, ci_high: 0.5 }]);
          return {
            lr: [lr.kind, lr.log, runs.map(r => lr.position(r))],
            opt: [opt.kind, opt.levels, runs.map(r => opt.position(r))],
            m: [m.kind, runs.map(r => m.position(r))],
            lines: svg.querySelectorAll('polyline').length,
            axes: svg.querySelectorAll('.pc-axis').length,
            parse: parseRuns('#/compare?runs=x,y,,x,z'),
            varying: varyingParams(runs),
            zero: scale.at(0),
          };
        }"""
    )
    assert result["lr"][0] == "numeric" and result["lr"][1] is True
    assert result["lr"][2] == pytest.approx([1, 0, 0.5])  # log scale: 0.01 halfway
    assert result["opt"] == ["categorical", ["adam", "sgd"], [1, 0, None]]  # missing: null
    assert result["m"] == ["numeric", [0, None, 1]]  # NaN is missing
    assert result["lines"] == 3 and result["axes"] == 3
    assert result["parse"] == ["x", "y", "z"]
    assert result["varying"] == ["lr", "opt"]
    assert 0 < result["zero"] < 100


def test_runs_table_endpoint_columns_filter_scope_and_errors(world: CompareWorld) -> None:
    experiment = world.logged.experiment_id
    table = world.api("GET", "/api/v1/runs:table", params={"experiment_id": experiment})
    paged = world.api("GET", "/api/v1/runs", params={"experiment_id": experiment, "page_size": 1000})["runs"]
    assert table["count"] == len(paged) == len(world.logged.runs) and table["truncated"] is False
    # The same runs in the same order (newest first) and the same values, as columns.
    assert table["runs"]["run_id"] == [r["info"]["run_id"] for r in paged]
    for i, run in enumerate(paged):
        for field in ("name", "status", "start_time", "end_time", "user_id", "parent_run_id"):
            assert table["runs"][field][i] == run["info"][field]
        assert {k: v[i] for k, v in table["params"].items() if v[i] is not None} == run["params"]
        assert {k: v[i] for k, v in table["tags"].items() if v[i] is not None} == run["tags"]
        assert {k: v[i] for k, v in table["metrics"].items() if v[i] is not None} == {
            k: m["value"] for k, m in run["metrics"].items()
        }
    # The run-search grammar, as the search API speaks it.
    adam = world.api(
        "GET",
        "/api/v1/runs:table",
        params={"experiment_id": experiment, "filter": "params.optimizer = 'adam'"},
    )
    assert sorted(adam["runs"]["run_id"]) == sorted(
        r.run_id for r in world.logged.runs if r.optimizer == "adam"
    )
    assert set(adam["params"]["optimizer"]) == {"adam"}
    low = world.api(
        "GET",
        "/api/v1/runs:table",
        params={
            "experiment_id": experiment,
            "filter": "metrics.`val/loss` < 0.3 and params.optimizer = 'adam'",
        },
    )
    assert sorted(low["runs"]["run_id"]) == sorted(r.run_id for r in world.logged.pick(0.1, "adam"))
    first = world.api("GET", "/api/v1/runs:table", params={"experiment_id": experiment, "limit": 3})
    assert first["count"] == 3 and first["truncated"] is True
    assert first["runs"]["run_id"] == table["runs"]["run_id"][:3]

    def status(params: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
        answer = httpx.get(
            f"{world.stack.url}/api/v1/runs:table",
            params=params,
            headers=headers or world.stack.headers,
            timeout=30,
        )
        return answer.status_code, answer.text

    code, text = status({"experiment_id": experiment, "filter": "metrics.val/loss <<< 1"})
    assert code == 400 and "filter" in text
    assert status({"experiment_id": experiment, "limit": 0})[0] == 400
    assert status({"experiment_id": "no-such-experiment"})[0] == 404
    # Tenant-scoped: another tenant's engineer cannot tell the experiment exists.
    from runledger.auth.model import Role
    from tests.support.auth import provision

    intruder = in_thread(provision(world.stack.dsn, f"other-{uuid.uuid4().hex[:6]}", Role.ENGINEER))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        me = httpx.get(f"{world.stack.url}/api/v1/me", headers=intruder.headers, timeout=10)
        if me.status_code == 200:
            break
        time.sleep(0.1)
    assert me.status_code == 200  # the API loaded the intruder's key
    code, text = status({"experiment_id": experiment}, intruder.headers)
    assert code == 404 and world.logged.runs[0].run_id not in text
    code, text = status({}, intruder.headers)  # every run it may read: none of the default tenant's
    assert code == 200 and world.logged.runs[0].run_id not in text
    everything = world.api("GET", "/api/v1/runs:table")  # the admin: every experiment of its tenant
    assert set(table["runs"]["run_id"]) <= set(everything["runs"]["run_id"])
    assert experiment in everything["experiment_ids"]


@pytest.fixture(autouse=True)
def _stack_still_answers(world: CompareWorld) -> Iterator[None]:
    yield
    try:
        answer = httpx.get(f"{world.stack.url}/api/v1/me", headers=world.stack.headers, timeout=30)
        status = f"{answer.status_code} {answer.text[:200]}"
    except httpx.HTTPError as exc:
        status = repr(exc)
    assert status.startswith("200 "), (
        f"the API stopped answering ({status}):\n{world.stack.services.log_tail(60)}"
    )
