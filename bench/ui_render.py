"""The web UI with big data, measured in a real browser (Debian's chromium via Playwright).

    make bench-ui          # = .venv/bin/python -m bench.ui_render
    python -m bench.ui_render --runs 10000 --points 1000000 --repeat 5

On a fresh embedded stack (the same Supervisor as `runledger up`), the SDK logs one run with
a 1,000,000-point series (a spike in the middle) and an experiment of 10,000 runs; then:

1. run page: navigation start -> the 1M-point chart first drawn with data (the canvas'
   data-first-data-at, in the page's own performance.now() clock): a full page load (static
   files from the browser cache), the session check, the run, the min/max-downsampled series
   and the drawing; and the same after an in-app navigation (a hash change, as a click does);
2. zoom: mouse-up of a drag over 10 % of the chart -> the finer window re-fetched and drawn;
3. client-side drawing alone: 1,000,000 raw points handed to the chart module in the page
   (its per-pixel min/max reduction), draw() timed;
4. runs table: navigation -> all 10,000 rows loaded and the table drawn; then scrolling the
   virtualised table through all rows, one step per animation frame: frame times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

from bench.stack import embedded_stack
from tests.support.browser import launch
from tests.support.ui_data import Plan, log_experiment, wait_projected

OUT = Path(__file__).parent / "out"
CHART = '.chart-card[data-metric="long/loss"]'


def _sign_in(page: Page, url: str, token: str) -> None:
    page.goto(f"{url}/ui/")
    page.fill("#api-key", token)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")


def _until(page: Page, script: str, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        page.wait_for_timeout(20)


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values), 1),
        "min_ms": round(values[0], 1),
        "max_ms": round(values[-1], 1),
        "n": len(values),
    }


def run_page(page: Page, url: str, run_id: str, repeat: int) -> dict[str, Any]:
    """Navigation -> chart drawn; zoom -> finer window drawn."""
    loads: list[float] = []
    zooms: list[float] = []
    points = 0
    for _ in range(repeat):
        page.goto("about:blank")
        page.goto(f"{url}/ui/#/runs/{run_id}")
        page.wait_for_selector(f"{CHART}[data-loading=false]", timeout=120_000)
        drawn = float(_until(page, f"document.querySelector('{CHART} canvas').dataset.firstDataAt"))
        loads.append(drawn)  # performance.now() counts from the navigation's start
        points = int(page.get_attribute(f"{CHART} canvas", "data-points") or 0)
        breakdown = page.evaluate(
            """() => Object.fromEntries(performance.getEntriesByType('resource')
                 .filter(e => /\\/ui\\/session|\\/metrics$|\\/history|\\/runs\\/[0-9a-f]+$/.test(e.name.split('?')[0]))
                 .map(e => [e.name.split('?')[0].replace(/^https?:\\/\\/[^/]+/, '').replace(/[0-9a-f]{32}/, '{run}'),
                            [Math.round(e.startTime), Math.round(e.responseEnd)]]))"""
        )
        y_max = float(page.get_attribute(f"{CHART} canvas", "data-y-max") or 0)

        box = page.locator(f"{CHART} canvas").bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        left, width = box["x"] + 64, box["width"] - 78
        page.evaluate(
            """() => { window.__zoom = null; const c = document.querySelector('.chart-card[data-metric="long/loss"]');
            window.addEventListener('mouseup', () => { window.__zoom = {up: performance.now()}; }, {once: true});
            c.addEventListener('chart-drawn', () => { if (window.__zoom && c.dataset.loading === 'false'
                && c.querySelector('.muted.small').textContent.includes('steps')) window.__zoom.drawn ??= performance.now(); }); }"""
        )
        page.mouse.move(left + width * 0.45, y)
        page.mouse.down()
        page.mouse.move(left + width * 0.55, y, steps=5)
        page.mouse.up()
        zoom = _until(page, "window.__zoom && window.__zoom.drawn && window.__zoom")
        zooms.append(zoom["drawn"] - zoom["up"])
    # In-app navigation (what a click in the runs table does): hash change -> chart drawn.
    hops: list[float] = []
    for _ in range(repeat):
        page.evaluate("location.hash = '#/'")
        page.wait_for_selector("#experiments")
        started = page.evaluate(
            f"(() => {{ const t = performance.now(); location.hash = '#/runs/{run_id}'; return t; }})()"
        )
        page.wait_for_selector(f"{CHART}[data-loading=false]", timeout=120_000)
        drawn = float(
            _until(
                page,
                f"(() => {{ const d = document.querySelector('{CHART} canvas').dataset.firstDataAt;"
                f" return Number(d) > {started} && d; }})()",
            )
        )
        hops.append(drawn - started)
    return {
        "navigation_to_chart_drawn": _summary(loads),
        "in_app_navigation_to_chart_drawn": _summary(hops),
        "zoom_to_finer_window_drawn": _summary(zooms),
        "points_drawn": points,
        "last_load_fetches_ms_from_navigation": breakdown,
        "spike_kept": y_max,
    }


def client_draw(page: Page, points: int, repeat: int) -> dict[str, Any]:
    """The chart module alone drawing `points` raw points (no server downsampling)."""
    times: list[float] = page.evaluate(
        """async ([n, repeat]) => {
          const { LineChart } = await import('/ui/static/js/chart.js');
          const host = document.createElement('div'); host.style.width = '900px';
          document.body.append(host);
          const steps = new Float64Array(n), values = new Float64Array(n);
          let v = 0; for (let i = 0; i < n; i++) { steps[i] = i; v += Math.sin(i * 12.9898) * 0.5; values[i] = v; }
          values[n >> 1] = 1e4;
          const chart = new LineChart({ title: 'bench' }); host.append(chart.element);
          chart.setSeries([{ label: 'raw', steps, timestamps: null, values }]);
          const out = [];
          for (let r = 0; r < repeat; r++) { const t = performance.now(); chart.draw(); out.push(performance.now() - t); }
          return out; }""",
        [points, repeat],
    )
    return _summary(times)


def runs_table(page: Page, url: str, experiment_id: str, runs: int) -> dict[str, Any]:
    """Navigation -> every row loaded and drawn; then frame times while scrolling through."""
    page.goto("about:blank")
    page.goto(f"{url}/ui/#/experiments/{experiment_id}")
    page.wait_for_selector("section.experiment[data-loaded=true]", timeout=300_000)
    _until(page, f"document.querySelector('#runs-table').dataset.rows === '{runs}'")
    loaded = page.evaluate("performance.now()")
    rendered = int(page.get_attribute("#runs-table", "data-rendered") or 0)
    fetches = page.evaluate(
        """() => performance.getEntriesByType('resource')
             .filter(e => e.name.includes('/api/v1/runs?') || e.name.includes('/api/v1/runs:table?'))
             .map(e => e.responseEnd - e.startTime)"""
    )
    scroll = """async ([rowsPerFrame, frames]) => {
          const vp = document.querySelector('.vt-viewport'); const table = document.querySelector('#runs-table');
          const total = vp.scrollHeight - vp.clientHeight; const step = rowsPerFrame ? rowsPerFrame * 28 : total / frames;
          const out = [], work = [];
          vp.scrollTop = 0;
          let last = await new Promise(requestAnimationFrame);
          for (let i = 1; i <= frames; i++) {
            vp.scrollTop = Math.min(total, step * i);
            const now = await new Promise(requestAnimationFrame);
            out.push(now - last); last = now; work.push(Number(table.dataset.renderMs));
          }
          return [out, work]; }"""
    # A fling through all 10,000 rows (every frame shows new rows), then a smooth scroll (3 rows a frame).
    frames, work = page.evaluate(scroll, [0, 240])
    smooth_frames, smooth_work = page.evaluate(scroll, [3, 240])
    sort_ms = page.evaluate(
        """async () => { const t = performance.now();
          document.querySelector('.vt-th[data-col="metrics.train/loss"]').click();
          await new Promise(requestAnimationFrame); await new Promise(requestAnimationFrame);
          return performance.now() - t; }"""
    )
    return {
        "runs": runs,
        "navigation_to_all_rows_ms": round(loaded, 1),
        "runs_page_fetch_ms": _summary(fetches),
        "dom_rows_rendered": rendered,
        "fling_frame_ms": _frames(frames),
        "fling_table_render_ms": _frames(work),
        "smooth_scroll_frame_ms": _frames(smooth_frames),
        "smooth_scroll_table_render_ms": _frames(smooth_work),
        "sort_10k_rows_ms": round(sort_ms, 1),
    }


def _frames(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(values[int(len(values) * 0.95) - 1], 2),
        "max": round(values[-1], 2),
        "n": len(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ui_render")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": f"{platform.machine()}", "args": vars(args)}
    with embedded_stack() as stack:
        state = stack.settings.state_dir
        token = stack.api_key
        common = {"bootstrap": stack.kafka_bootstrap, "api_key": token, "tenant": "default"}
        series = Plan(experiment="bench-ui-series", runs=0, long_series=args.points, spike_value=1e4)
        table = Plan(experiment="bench-ui-table", runs=args.runs, steps=3, parents=20, children=3)
        t0 = time.perf_counter()
        logged_series = log_experiment(series, spool=state / "spool-series", **common)
        logged_table = log_experiment(table, spool=state / "spool-table", **common)
        asyncio.run(wait_projected(stack.postgres_dsn, series, logged_series, limit_s=900))
        asyncio.run(wait_projected(stack.postgres_dsn, table, logged_table, limit_s=900))
        report["data_logged_and_projected_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report), flush=True)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            report["browser"] = browser.version
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(120_000)
            _sign_in(page, stack.api_url, token)
            report["run_page"] = run_page(page, stack.api_url, logged_series.long_run_id, args.repeat)
            print(json.dumps(report["run_page"]), flush=True)
            report["client_draw_1m_raw_points"] = client_draw(page, args.points, args.repeat)
            print(json.dumps(report["client_draw_1m_raw_points"]), flush=True)
            report["runs_table"] = runs_table(page, stack.api_url, logged_table.experiment_id, args.runs)
            print(json.dumps(report["runs_table"]), flush=True)
            browser.close()
    OUT.mkdir(exist_ok=True)
    (OUT / "ui_render.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
