// One run: params, tags, metric charts (train/val overlays, step or time axis, smoothing,
// log scale, zoom that re-fetches a finer window), system metrics grouped by resource,
// findings on the charts, code state and environment, the artifact browser, lineage.

import { allPages, api, can } from "../api.js";
import { LineChart } from "../chart.js";
import { errorBox, fmtDuration, fmtNumber, fmtTime, h, mount } from "../dom.js";
import { artifactBrowser } from "./run_artifacts.js";
import { codeEnvironmentPanel, lineagePanel } from "./run_context.js";

const SPLIT = /^(train|training|val|valid|validation|test|eval|evaluation)[/_.-]/i;
const MAX_POINTS_CAP = 4000;
const MAX_FINDINGS_LISTED = 200; // newest first; every finding is still marked on its chart

/** Chart groups: keys that differ only by a train/val/test prefix share one chart. */
export function groupKeys(keys) {
  const groups = new Map();
  for (const key of keys) {
    const base = key.replace(SPLIT, "");
    if (!groups.has(base)) groups.set(base, []);
    groups.get(base).push(key);
  }
  return [...groups.entries()].map(([base, members]) => ({ base, keys: members.sort() }));
}

const SYSTEM_CATEGORIES = [
  // [category, title, test on the key without "system/"]; the first match wins
  ["cpu", "CPU", (k) => /(^|_)cpu/.test(k)],
  ["memory", "Memory", (k) => /memory|rss/.test(k) && !k.startsWith("gpu")],
  ["gpu", "GPU", (k) => /^gpu\d*\//.test(k)],
  ["disk", "Disk", (k) => /^disk_/.test(k)],
  ["network", "Network", (k) => /^net(work)?_/.test(k)],
];
// Counters of one resource in one unit share a chart (read + write, sent + received, a GPU's
// memory used + total); process and host memory do not: their scales differ by orders.
const MERGED_UNITS = new Set(["bytes"]);
const mergesUnits = (category) => category === "disk" || category === "network" || /^gpu\d*$/.test(category);

/**
 * system/* keys as sections by resource (CPU, memory, each GPU, disk, network, other); disk,
 * network and GPU byte counters share one chart per section (read + write, sent + received,
 * memory used + total), every other key has its own.
 * [{category, title, groups: [{base, keys}]}] in a fixed order.
 */
export function systemGroups(keys) {
  const sections = new Map();
  for (const key of keys) {
    const rest = key.slice("system/".length);
    const found = SYSTEM_CATEGORIES.find(([, , test]) => test(rest));
    let category = found ? found[0] : "other";
    let title = found ? found[1] : "Other";
    if (category === "gpu") {
      const gpu = rest.split("/")[0];
      category = gpu;
      title = gpu.toUpperCase().replace(/^GPU(\d+)$/, "GPU $1");
    }
    if (!sections.has(category)) sections.set(category, { category, title, keys: [] });
    sections.get(category).keys.push(key);
  }
  const rank = (c) => {
    const fixed = ["cpu", "memory"].indexOf(c);
    if (fixed >= 0) return [fixed, 0];
    if (/^gpu\d*$/.test(c)) return [2, Number(c.slice(3)) || 0];
    return [["disk", "network", "other"].indexOf(c) + 3, 0];
  };
  return [...sections.values()]
    .sort((a, b) => rank(a.category)[0] - rank(b.category)[0] || rank(a.category)[1] - rank(b.category)[1])
    .map(({ category, title, keys: members }) => {
      const byUnit = new Map();
      const groups = [];
      for (const key of members.sort()) {
        const unit = key.includes("_") ? key.slice(key.lastIndexOf("_") + 1) : "";
        if (mergesUnits(category) && MERGED_UNITS.has(unit)) {
          if (!byUnit.has(unit)) {
            const group = { base: `system/${category} (${unit})`, keys: [] };
            byUnit.set(unit, group);
            groups.push(group);
          }
          byUnit.get(unit).keys.push(key);
        } else {
          groups.push({ base: key, keys: [key] });
        }
      }
      // A unit with one key keeps the key's own name as its title.
      for (const g of groups) if (g.keys.length === 1) g.base = g.keys[0];
      return { category, title, groups };
    });
}

function historyUrl(runId, key) {
  const path = key.split("/").map(encodeURIComponent).join("/");
  return `/api/v1/runs/${encodeURIComponent(runId)}/metrics/${path}/history`;
}

function toSeries(key, body) {
  const n = body.steps.length;
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = Number(body.values[i]); // "NaN", "Infinity" too
  return {
    label: key,
    steps: Float64Array.from(body.steps),
    timestamps: body.timestamps ? Float64Array.from(body.timestamps, (t) => (t === null ? NaN : t)) : null,
    values,
    downsampled: body.downsampled,
    method: body.method,
  };
}

function kvTable(id, entries, empty) {
  if (!entries.length) return h("p", { class: "muted", id }, empty);
  return h(
    "table",
    { class: "grid kv", id },
    h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, v)))),
  );
}

export async function runPage(runId) {
  const [run, keys] = await Promise.all([
    api(`/api/v1/runs/${encodeURIComponent(runId)}`),
    api(`/api/v1/runs/${encodeURIComponent(runId)}/metrics`),
  ]);
  const info = run.info;
  const options = { axis: "step", log: false, smoothing: 0 };
  const charts = [];
  const markersByKey = new Map(); // filled when the findings arrive (they never hold up the charts)
  const markersOf = (group) => group.keys.flatMap((k) => markersByKey.get(k) || []);
  const findingsBox = h("div", { id: "findings-box" }, h("p", { class: "muted" }, "Loading findings…"));

  const metricKeys = keys.metrics.map((m) => m.key);
  const system = systemGroups(metricKeys.filter((k) => k.startsWith("system/")));
  const groups = groupKeys(metricKeys.filter((k) => !k.startsWith("system/")));

  function chartCard(group) {
    const state = { steps: null, loaded: false, generation: 0 };
    const chart = new LineChart({
      title: group.base,
      onZoom: (zoom) => {
        state.steps = zoom ? zoom.steps : null;
        load();
      },
    });
    const legend = h("div", { class: "legend" });
    const note = h("span", { class: "muted small" });
    const card = h(
      "div",
      { class: "card chart-card", dataset: { metric: group.base, keys: group.keys.join(",") } },
      h("div", { class: "chart-title" }, h("strong", {}, group.base), legend, note),
      chart.element,
    );
    async function load() {
      const mine = ++state.generation;
      const width = Math.max(300, chart.element.clientWidth || 600);
      const maxPoints = Math.min(MAX_POINTS_CAP, Math.round(width * 2));
      const query = {
        max_points: maxPoints,
        method: options.axis === "time" ? "lttb" : "minmax",
        start_step: state.steps ? state.steps[0] : null,
        end_step: state.steps ? state.steps[1] : null,
      };
      card.dataset.loading = "true";
      try {
        const bodies = await Promise.all(group.keys.map((k) => api(historyUrl(runId, k), { query })));
        if (mine !== state.generation) return;
        const series = bodies.map((b, i) => toSeries(group.keys[i], b));
        chart.setSeries(series);
        chart.setMarkers(markersOf(group));
        if (!state.steps) chart.setView(null);
        mount(
          legend,
          series.map((s, i) => h("span", { class: "legend-item", style: { color: chart.series[i].color } }, `● ${s.label}`)),
        );
        const points = series.reduce((n, s) => n + s.steps.length, 0);
        note.textContent = `${points} points${series.some((s) => s.downsampled) ? " (downsampled)" : ""}${state.steps ? ` · steps ${state.steps[0]}–${state.steps[1]} · double-click to zoom out` : ""}`;
        card.dataset.loading = "false";
      } catch (err) {
        mount(note, errorBox(err));
      }
    }
    charts.push({ chart, load, state, card, group });
    return card;
  }

  const observer = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        const item = charts.find((c) => c.card === entry.target);
        if (item && !item.state.loaded) {
          item.state.loaded = true;
          item.load();
        }
        observer.unobserve(entry.target);
      }
    },
    { rootMargin: "300px" },
  );

  function setOption(name, value) {
    options[name] = value;
    for (const { chart } of charts) chart.setOptions({ [name]: value });
    if (name === "axis") for (const c of charts) if (c.state.loaded) c.load(); // time needs real timestamps (lttb)
  }
  const smoothing = h("input", { id: "smoothing", type: "range", min: 0, max: 0.99, step: 0.01, value: 0 });
  smoothing.addEventListener("input", () => setOption("smoothing", Number(smoothing.value)));
  const axis = h("select", { id: "x-axis" }, h("option", { value: "step" }, "Step"), h("option", { value: "time" }, "Relative time"));
  axis.addEventListener("change", () => setOption("axis", axis.value));
  const log = h("input", { id: "log-scale", type: "checkbox" });
  log.addEventListener("change", () => setOption("log", log.checked));

  const chartGrid = h("div", { class: "charts", id: "charts" }, groups.map(chartCard));
  const systemGrid = h(
    "div",
    { id: "system-charts" },
    system.map((section) =>
      h(
        "div",
        { class: "system-section", dataset: { category: section.category } },
        h("h3", {}, section.title),
        h("div", { class: "charts" }, section.groups.map(chartCard)),
      ),
    ),
  );
  const artifacts = artifactBrowser(runId);
  const params = Object.entries(run.params || {}).sort();
  const tags = Object.entries(run.tags || {}).sort();
  const latest = keys.metrics.map((m) => [m.key, `${fmtNumber(m.value)} (step ${m.step})`]);

  const element = h(
    "section",
    { class: "run", dataset: { runId } },
    h(
      "h1",
      {},
      info.name,
      " ",
      h("span", { class: `status status-${info.status.toLowerCase()}` }, info.status),
    ),
    h(
      "p",
      { class: "muted" },
      h("span", { class: "mono" }, info.run_id),
      " · experiment ",
      h("a", { href: `#/experiments/${encodeURIComponent(info.experiment_id)}` }, info.experiment_id),
      info.parent_run_id ? [" · parent ", h("a", { href: `#/runs/${info.parent_run_id}` }, info.parent_run_id)] : null,
      ` · started ${fmtTime(info.start_time)}`,
      info.end_time ? ` · ${fmtDuration(info.end_time - info.start_time)}` : "",
      ` · ${info.user_id}`,
    ),
    h(
      "div",
      { class: "toolbar", id: "chart-options" },
      h("label", {}, "X axis ", axis),
      h("label", {}, "Smoothing ", smoothing),
      h("label", {}, log, " Log scale"),
      h("span", { class: "muted small" }, "Drag on a chart to zoom (finer points from the server); double-click to zoom out."),
    ),
    h("h2", {}, "Metrics"),
    groups.length ? chartGrid : h("p", { class: "muted" }, "No metrics."),
    system.length ? [h("h2", { id: "system-metrics" }, "System metrics"), systemGrid] : null,
    h(
      "div",
      { class: "columns" },
      h("div", {}, h("h2", {}, "Parameters"), kvTable("params", params, "No parameters.")),
      h("div", {}, h("h2", {}, "Latest metrics"), kvTable("latest-metrics", latest, "No metrics.")),
      h("div", {}, h("h2", {}, "Tags"), kvTable("tags", tags, "No tags."), can("write") ? tagForm(runId) : null),
    ),
    h("h2", {}, "Code and environment"),
    codeEnvironmentPanel(runId, run.tags || {}, (path) => {
      artifacts.open(path);
      artifacts.element.scrollIntoView({ block: "start" });
    }),
    h("h2", {}, "Artifacts"),
    artifacts.element,
    h("h2", {}, "Lineage"),
    lineagePanel(runId),
    h("h2", {}, "Findings"),
    findingsBox,
  );
  requestAnimationFrame(() => {
    for (const c of charts) observer.observe(c.card);
  });
  allPages(`/api/v1/runs/${encodeURIComponent(runId)}/findings`, "findings", { query: { page_size: 1000 }, limit: 5000 })
    .then((findings) => {
      for (const f of findings) {
        const key = f.body && f.body.key;
        const step = f.body && f.body.step;
        if (typeof key !== "string" || typeof step !== "number") continue;
        if (!markersByKey.has(key)) markersByKey.set(key, []);
        markersByKey.get(key).push({ step, key, label: `${f.kind}${f.message ? `: ${f.message}` : ""}` });
      }
      for (const c of charts) c.chart.setMarkers(markersOf(c.group));
      mount(findingsBox, findingsTable(findings));
    })
    .catch((err) => mount(findingsBox, errorBox(err)));
  return {
    element,
    cleanup: () => {
      observer.disconnect();
      for (const { chart } of charts) chart.destroy();
    },
  };
}

function findingsTable(findings) {
  if (!findings.length) return h("p", { class: "muted", id: "findings" }, "No findings.");
  return [
    findings.length > MAX_FINDINGS_LISTED
      ? h("p", { class: "muted small" }, `The newest ${MAX_FINDINGS_LISTED} of ${findings.length}; every one is marked on its chart.`)
      : null,
    h(
      "table",
      { class: "grid", id: "findings" },
      h("thead", {}, h("tr", {}, ["When", "Kind", "Metric", "Step", "Message"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        findings.slice(0, MAX_FINDINGS_LISTED).map((f) =>
          h(
            "tr",
            {},
            h("td", {}, fmtTime(f.occurred_at)),
            h("td", {}, f.kind),
            h("td", {}, f.body.key ?? ""),
            h("td", {}, f.body.step ?? ""),
            h("td", {}, f.message ?? ""),
          ),
        ),
      ),
    ),
  ];
}

// A write control: shown only to callers who may write.
function tagForm(runId) {
  const key = h("input", { id: "tag-key", placeholder: "key", size: 12 });
  const value = h("input", { id: "tag-value", placeholder: "value", size: 16 });
  const message = h("span", { class: "error-inline" });
  return h(
    "form",
    {
      id: "set-tag",
      class: "inline write-control",
      onsubmit: async (event) => {
        event.preventDefault();
        message.textContent = "";
        try {
          await api(`/api/v1/runs/${encodeURIComponent(runId)}/tags`, {
            method: "POST",
            body: { tags: { [key.value.trim()]: value.value } },
          });
          location.reload();
        } catch (err) {
          message.textContent = err.message;
        }
      },
    },
    key,
    value,
    h("button", { type: "submit" }, "Set tag"),
    message,
  );
}
