"""The run page's context panels in a real browser (Debian's chromium through Playwright)
against the real stack: the artifact browser and its previews, the code state and
environment panel, system metrics grouped by resource, and the lineage graph.

The data comes from a real training script run in a dirty git work tree with the SDK
(events over Kafka, files through the API; tests/support/ui_run_context_data.py).
Screenshots land in $RUNLEDGER_UI_SCREENSHOTS (default: the session's test directory).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Response

from tests.e2e.conftest import Stack
from tests.support.browser import until
from tests.support.ui_run_context_data import (
    BIG_LOG_LINES,
    CONFIG,
    CSV_ROWS,
    IMAGE_SIZE,
    NOTES,
    ContextRuns,
    log_context_runs,
    wait_context_projected,
)

pytestmark = pytest.mark.integration

TEXT_PREVIEW_BYTES = 64 * 1024  # run_artifacts.js TEXT_PREVIEW_BYTES


@dataclass
class World:
    stack: Stack
    runs: ContextRuns
    documents: dict[str, Any]
    shots: Path

    @property
    def ui(self) -> str:
        return f"{self.stack.url}/ui/"

    def run_page(self, run_id: str) -> str:
        return f"{self.ui}#/runs/{run_id}"


@pytest.fixture(scope="module")
def world(stack: Stack, test_root: Path) -> World:
    suffix = uuid.uuid4().hex[:6]
    runs = log_context_runs(
        url=stack.url,
        bootstrap=stack.bootstrap,
        events_topic=stack.events_topic,
        api_key=stack.bootstrap_key.token,
        work=test_root / f"ui-context-{suffix}",
        suffix=suffix,
    )
    wait_context_projected(stack.url, stack.headers, runs)
    documents = httpx.get(
        f"{stack.url}/api/v1/runs/{runs.base_run_id}/documents", headers=stack.headers, timeout=30
    ).json()
    shots = Path(os.environ.get("RUNLEDGER_UI_SCREENSHOTS") or test_root)
    shots.mkdir(parents=True, exist_ok=True)
    return World(stack, runs, documents, shots)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(30_000)  # the shared 2-core CI machine is slow at times
    yield ctx
    ctx.close()


def open_run(context: BrowserContext, world: World, run_id: str) -> Page:
    """Signed in (API key through the form), on the run's page."""
    page = context.new_page()
    page.goto(world.ui)
    page.fill("#api-key", world.stack.bootstrap_key.token)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#sign-out")
    page.goto(world.run_page(run_id))
    page.wait_for_selector(f'section.run[data-run-id="{run_id}"]')
    return page


def entry(path: str) -> str:
    return f'#artifact-tree .artifact-entry[data-path="{path}"]'


def expand(page: Page, directory: str) -> None:
    page.click(f"{entry(directory)} > .artifact-line > button.artifact-dir")
    page.wait_for_selector(f"{entry(directory)} .artifact-children .artifact-entry")


def preview(page: Page, path: str, kind: str) -> None:
    """Click a file of the tree and wait for its preview of `kind`."""
    page.click(f"{entry(path)} button.artifact-file")
    page.wait_for_selector(
        f'#artifact-preview[data-path="{path}"][data-loaded="true"][data-preview="{kind}"]'
    )


def test_artifact_tree_lists_sizes_and_previews_each_kind(context: BrowserContext, world: World) -> None:
    base = world.runs.base_run_id
    page = open_run(context, world, base)
    page.wait_for_selector("#artifact-tree[data-loaded=true]")
    top = page.eval_on_selector_all(
        "#artifact-tree > .artifact-entry", "es => es.map(e => [e.dataset.path, e.dataset.kind])"
    )
    assert sorted(map(tuple, top)) == [
        ("config.json", "file"),
        ("images", "dir"),
        ("logs", "dir"),
        ("runledger", "dir"),
        ("tables", "dir"),
    ]
    config_size = len(json.dumps(CONFIG).encode())
    assert page.get_attribute(entry("config.json"), "data-size") == str(config_size)
    assert page.inner_text(f"{entry('config.json')} .artifact-size") == f"{config_size} B"
    for directory in ("images", "logs", "tables"):
        expand(page, directory)
    files = page.eval_on_selector_all(
        "#artifact-tree .artifact-entry[data-kind=file]", "es => es.map(e => e.dataset.path)"
    )
    assert {
        "config.json",
        "images/sample.png",
        "images/diagram.svg",
        "logs/notes.txt",
        "logs/big.log",
        "tables/table.csv",
    } <= set(files)

    # Image: decoded by the browser at its real size, from the download URL.
    preview(page, "images/sample.png", "image")
    size = until(
        page,
        """() => { const img = document.querySelector('#artifact-preview img.artifact-image');
                   return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null; }""",
    )
    assert tuple(size) == IMAGE_SIZE
    assert page.inner_text("#artifact-preview .artifact-note") == f"{IMAGE_SIZE[0]} \u00d7 {IMAGE_SIZE[1]} px"
    assert page.get_attribute("#artifact-preview img", "src") == (
        f"/api/v1/runs/{base}/artifacts/images/sample.png"
    )
    page.locator("#artifacts").screenshot(path=str(world.shots / "ui-run-artifact-image.png"))
    preview(page, "images/diagram.svg", "image")
    svg_width = until(
        page,
        """() => { const img = document.querySelector('#artifact-preview img.artifact-image');
                   return img && img.complete ? img.naturalWidth : 0; }""",
    )
    assert svg_width == 30

    # JSON: pretty-printed and collapsible; nested values shown.
    preview(page, "config.json", "json")
    tree_text = page.inner_text("#artifact-preview .json-tree")
    assert '"dropout_marker": "keep-me-0.25"' in tree_text
    assert '"name": "adamw"' in tree_text and "0.0003" in tree_text
    page.locator("#artifacts").screenshot(path=str(world.shots / "ui-run-artifact-json.png"))
    optimizer = page.locator("#artifact-preview details.json-node", has_text='"optimizer"').last
    assert optimizer.get_attribute("open") is not None
    optimizer.locator("summary").first.click()
    assert optimizer.get_attribute("open") is None  # collapsed
    assert "adamw" not in page.inner_text("#artifact-preview .json-tree")

    # Text, UTF-8, whole.
    preview(page, "logs/notes.txt", "text")
    assert page.eval_on_selector("#artifact-preview pre.artifact-text", "e => e.textContent") == NOTES
    assert page.get_attribute("#artifact-preview", "data-truncated") == "false"

    # CSV as a table.
    preview(page, "tables/table.csv", "csv")
    header = page.eval_on_selector_all(
        "#artifact-preview table.csv-table thead th", "c => c.map(x => x.textContent)"
    )
    body = page.eval_on_selector_all(
        "#artifact-preview table.csv-table tbody tr",
        "rows => rows.map(r => [...r.children].map(c => c.textContent))",
    )
    assert header == CSV_ROWS[0]
    assert body == CSV_ROWS[1:]
    page.locator("#artifacts").screenshot(path=str(world.shots / "ui-run-artifact-csv.png"))

    # A large text file: only its head is fetched (a 206 of 64 KiB), and the preview says so.
    ranged: list[Response] = []
    page.on("response", lambda r: ranged.append(r) if r.url.endswith("/artifacts/logs/big.log") else None)
    preview(page, "logs/big.log", "text")
    assert page.get_attribute("#artifact-preview", "data-truncated") == "true"
    text = page.eval_on_selector("#artifact-preview pre.artifact-text", "e => e.textContent")
    assert len(text) == TEXT_PREVIEW_BYTES
    assert text.startswith("line 00000 of a long training log\nline 00001")
    total = sum(len(f"line {i:05d} of a long training log\n") for i in range(BIG_LOG_LINES))
    assert total > 4 * TEXT_PREVIEW_BYTES
    assert "The first 64 KiB of" in page.inner_text("#artifact-preview .artifact-note")
    assert ranged, "no request for the big file was seen"
    response = ranged[-1]
    assert response.status == 206
    headers = response.all_headers()
    assert headers["content-range"] == f"bytes 0-{TEXT_PREVIEW_BYTES - 1}/{total}"
    assert int(headers["content-length"]) == TEXT_PREVIEW_BYTES

    # Every file has a download link to its bytes (fetched with the session cookie).
    links = page.eval_on_selector_all(
        "#artifact-tree a.artifact-download",
        "as => as.map(a => [a.getAttribute('href'), a.getAttribute('download')])",
    )
    assert len(links) == len(files)
    href = f"/api/v1/runs/{base}/artifacts/tables/table.csv"
    assert [href, "table.csv"] in links
    fetched = page.evaluate("url => fetch(url).then(r => r.text())", href)
    assert fetched == "\n".join(",".join(r) for r in CSV_ROWS) + "\n"


def test_code_state_and_environment_panel(context: BrowserContext, world: World) -> None:
    runs = world.runs
    page = open_run(context, world, runs.base_run_id)
    page.wait_for_selector("#code-environment[data-loaded=true]")

    def field(table: str, name: str) -> str:
        return page.inner_text(f'#{table} tr[data-field="{name}"] td')

    assert field("code-state", "commit") == runs.commit
    assert page.get_attribute('#code-state tr[data-field="commit"] a', "href") == (
        f"https://github.com/example/runledger-ui-demo/commit/{runs.commit}"
    )
    assert field("code-state", "branch") == runs.branch
    assert field("code-state", "remote") == "https://github.com/example/runledger-ui-demo.git"
    assert field("code-state", "dirty").startswith("dirty")
    assert field("code-state", "entry_point").endswith("/train.py")
    assert runs.experiment in field("code-state", "args")
    env = world.documents["environment"]
    assert len(env["environment_hash"]) == 64
    assert field("environment", "environment_hash") == env["environment_hash"]
    assert field("environment", "python_version") == env["python_version"]
    assert field("environment", "platform") == env["platform"]
    assert field("environment", "packages") == str(len(env["packages"]))
    page.click("#packages summary")
    page.fill("#package-filter", "httpx")
    rows = page.eval_on_selector_all(
        "#packages tbody tr", "rs => rs.map(r => [...r.children].map(c => c.textContent))"
    )
    assert ["httpx", env["packages"]["httpx"]] in rows
    assert all("httpx" in name for name, _ in rows)
    page.locator("#code-environment").screenshot(path=str(world.shots / "ui-run-code-environment.png"))

    # The diff artifact opens in the artifact browser.
    page.click("#view-diff")
    page.wait_for_selector(
        '#artifact-preview[data-path="runledger/code/diff.patch"][data-loaded="true"][data-preview="text"]'
    )
    diff = page.eval_on_selector("#artifact-preview pre.artifact-text", "e => e.textContent")
    assert "+# tuned the learning rate" in diff and "train.py" in diff


def test_system_metrics_are_grouped_apart_from_model_metrics(context: BrowserContext, world: World) -> None:
    page = open_run(context, world, world.runs.base_run_id)
    page.wait_for_selector("#system-charts")
    model_cards = page.eval_on_selector_all("#charts .chart-card", "cs => cs.map(c => c.dataset.keys)")
    assert model_cards == ["train/loss,val/loss"]  # one overlay chart, no system/* key among them
    sections = page.eval_on_selector_all(
        "#system-charts .system-section",
        "ss => ss.map(s => [s.dataset.category, s.querySelector('h3').textContent,"
        " [...s.querySelectorAll('.chart-card')].map(c => c.dataset.keys)])",
    )
    by_category = {category: (title, keys) for category, title, keys in sections}
    assert [s[0] for s in sections][:2] == ["cpu", "memory"]
    assert by_category["cpu"] == ("CPU", ["system/cpu_percent"])
    assert by_category["memory"] == (
        "Memory",
        ["system/process_rss_bytes", "system/system_memory_percent", "system/system_memory_used_bytes"],
    )
    for category in ("disk", "network"):
        if category in by_category:  # psutil counters exist on this host
            assert len(by_category[category][1]) == 1 and "," in by_category[category][1][0]
    assert all(
        k.startswith("system/") for _, keys in by_category.values() for card in keys for k in card.split(",")
    )
    # Charts draw the sampled points.
    cpu = '#system-charts .chart-card[data-keys="system/cpu_percent"]'
    page.locator(cpu).scroll_into_view_if_needed()
    points = until(
        page,
        "sel => { const c = document.querySelector(sel + ' canvas');"
        " return c && Number(c.dataset.points) > 0 ? Number(c.dataset.points) : 0; }",
        arg=cpu,
    )
    assert points >= 2
    # Counters of one resource share a chart, with a legend entry per key.
    for category, keys in (
        ("disk", "system/disk_read_bytes,system/disk_write_bytes"),
        ("network", "system/network_recv_bytes,system/network_sent_bytes"),
    ):
        if category not in by_category:  # no such psutil counters on this host
            continue
        assert by_category[category] == (category.capitalize(), [keys])
        card = f'#system-charts .chart-card[data-keys="{keys}"]'
        page.locator(card).scroll_into_view_if_needed()
        until(page, "sel => document.querySelector(sel).dataset.loading === 'false'", arg=card)
        legend = page.inner_text(f"{card} .legend")
        assert all(key in legend for key in keys.split(","))
    # Every system chart drawn (they load as they scroll into view), for the screenshot.
    for keys in [card for _, cards in by_category.values() for card in cards]:
        card = f'#system-charts .chart-card[data-keys="{keys}"]'
        page.locator(card).scroll_into_view_if_needed()
        until(page, "sel => document.querySelector(sel).dataset.loading === 'false'", arg=card)
    page.locator("#system-metrics").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.locator("#system-charts").screenshot(path=str(world.shots / "ui-run-system-metrics.png"))


def lineage(page: Page) -> dict[str, Any]:
    page.wait_for_selector("#lineage-graph[data-loaded=true] svg.lineage-svg")
    result: dict[str, Any] = page.evaluate(
        """() => {
          const svg = document.querySelector('#lineage-graph svg.lineage-svg');
          const box = (g) => { const t = g.getAttribute('transform').match(/translate\\(([-\\d.]+),([-\\d.]+)\\)/);
                               return [Number(t[1]), Number(t[2])]; };
          return {
            nodes: [...svg.querySelectorAll('g.lineage-node')].map(g => ({
              kind: g.dataset.kind, id: g.dataset.id, root: g.classList.contains('lineage-root'),
              text: g.querySelector('.lineage-label').textContent, at: box(g),
              link: g.closest('a') ? g.closest('a').getAttribute('href') : null })),
            edges: [...svg.querySelectorAll('g.lineage-edge')].map(g => ({
              source: g.dataset.source, target: g.dataset.target, relation: g.dataset.relation,
              label: g.querySelector('text').textContent, d: g.querySelector('path').getAttribute('d') })),
            counts: [Number(svg.dataset.nodes), Number(svg.dataset.edges)],
          };
        }"""
    )
    return result


def test_lineage_graph_nodes_edges_and_navigation(context: BrowserContext, world: World) -> None:
    runs = world.runs
    page = open_run(context, world, runs.base_run_id)
    graph = lineage(page)
    nodes = {(n["kind"], n["id"]): n for n in graph["nodes"]}
    assert set(nodes) == {
        ("run", runs.base_run_id),
        ("run", runs.derived_run_id),
        ("dataset", runs.dataset_id),
        ("model", runs.model_id),
    }
    assert graph["counts"] == [4, 3]
    edges = {(e["source"], e["target"], e["relation"]) for e in graph["edges"]}
    assert edges == {
        (f"dataset:{runs.dataset_id}", f"run:{runs.base_run_id}", "input"),
        (f"run:{runs.base_run_id}", f"model:{runs.model_id}", "produced"),
        (f"run:{runs.base_run_id}", f"run:{runs.derived_run_id}", "fine_tuned_from"),
    }
    assert all(e["label"] == e["relation"] and e["d"].startswith("M") for e in graph["edges"])
    root = nodes[("run", runs.base_run_id)]
    assert root["root"] and root["text"] == "context-base" and root["link"] is None
    derived = nodes[("run", runs.derived_run_id)]
    assert derived["text"] == "context-derived"
    assert derived["link"] == f"#/runs/{runs.derived_run_id}"
    # Upstream to the left of the run, downstream to its right.
    assert nodes[("dataset", runs.dataset_id)]["at"][0] < root["at"][0] < derived["at"][0]
    assert nodes[("model", runs.model_id)]["at"][0] == derived["at"][0]
    assert nodes[("dataset", runs.dataset_id)]["text"] == runs.dataset
    page.locator("#lineage").screenshot(path=str(world.shots / "ui-run-lineage.png"))

    # A run node navigates to that run, whose graph has the base run upstream.
    page.click(f'#lineage-graph a[data-run-id="{runs.derived_run_id}"]')
    page.wait_for_selector(f'section.run[data-run-id="{runs.derived_run_id}"]')
    assert page.evaluate("location.hash") == f"#/runs/{runs.derived_run_id}"
    assert "context-derived" in page.inner_text("section.run h1")
    graph = lineage(page)
    at = {(n["kind"], n["id"]): n["at"][0] for n in graph["nodes"]}
    assert at[("run", runs.base_run_id)] < at[("run", runs.derived_run_id)]
    assert (f"run:{runs.base_run_id}", f"run:{runs.derived_run_id}", "fine_tuned_from") in {
        (e["source"], e["target"], e["relation"]) for e in graph["edges"]
    }
    # Depth 1 from the derived run: the dataset and the model (two hops away) drop out.
    page.select_option("#lineage-depth", "1")
    until(
        page,
        "() => { const s = document.querySelector('#lineage-graph[data-loaded=true] svg');"
        " return s && s.dataset.nodes === '2'; }",
    )


def test_the_pure_parts_of_the_run_context_modules(context: BrowserContext, world: World) -> None:
    page = context.new_page()
    page.goto(world.ui)
    page.wait_for_selector("#sign-in")
    result = page.evaluate(
        '''async () => {
          const { parseDelimited, previewKind, fmtBytes } = await import('/ui/static/js/pages/run_artifacts.js');
          const { systemGroups } = await import('/ui/static/js/pages/run.js');
          const { commitUrl } = await import('/ui/static/js/pages/run_context.js');
          const { layoutLineage } = await import('/ui/static/js/lineage.js');
          const layout = layoutLineage({
            root: { kind: 'run', id: 'r' },
            nodes: [{ kind: 'run', id: 'r', depth: 0 }, { kind: 'dataset', id: 'd@1', depth: 1 },
                    { kind: 'run', id: 'r2', depth: 1 }, { kind: 'model', id: 'm@1', depth: 2 }],
            edges: [{ source_kind: 'dataset', source_id: 'd@1', target_kind: 'run', target_id: 'r', relation: 'input' },
                    { source_kind: 'run', source_id: 'r', target_kind: 'run', target_id: 'r2', relation: 'derived_from' },
                    { source_kind: 'run', source_id: 'r2', target_kind: 'model', target_id: 'm@1', relation: 'produced' }],
          });
          return {
            csv: parseDelimited('a,b\\n1,"x,""y"""\\r\\n2,3', ',').rows,
            kinds: ['a/p.PNG', 'c.json', 'x.csv', 'runledger/code/diff.patch', 'w.bin'].map(p => previewKind(p)),
            bytes: [fmtBytes(0), fmtBytes(1536), fmtBytes(3 * 1024 ** 3)],
            system: systemGroups(['system/cpu_percent', 'system/disk_read_bytes', 'system/disk_write_bytes',
                                  'system/gpu0/utilization_percent', 'system/wall_time_s']).map(
              s => [s.category, s.groups.map(g => g.keys.join('+'))]),
            commit: [commitUrl('git@github.com:org/repo.git', 'abc'), commitUrl('/local/path', 'abc')],
            cols: Object.fromEntries(layout.nodes.map(n => [n.id, n.col])),
          };
        }'''
    )
    assert result["csv"] == [["a", "b"], ["1", 'x,"y"'], ["2", "3"]]
    assert result["kinds"] == ["image", "json", "csv", "text", "text-sniff"]
    assert result["bytes"] == ["0 B", "1.5 KiB", "3.0 GiB"]
    assert result["system"] == [
        ["cpu", ["system/cpu_percent"]],
        ["gpu0", ["system/gpu0/utilization_percent"]],
        ["disk", ["system/disk_read_bytes+system/disk_write_bytes"]],
        ["other", ["system/wall_time_s"]],
    ]
    assert result["commit"] == ["https://github.com/org/repo/commit/abc", None]
    assert result["cols"] == {"d@1": -1, "r": 0, "r2": 1, "m@1": 2}
