// Several runs side by side (#/compare?runs=id1,id2,...): metric histories overlaid, parallel
// coordinates and a scatter-plot matrix of params and metrics, hyperparameter importance,
// stability across seeds, fairness by subgroup, a performance table with deltas, and a way to
// ask why a metric moved between some of them (an attribution).
//
// Everything comes from the existing API: GET /api/v1/runs/{id} (params, latest metrics),
// POST /api/v1/compare (performance, stability, fairness), the metric history endpoint the run
// page uses, GET /api/v1/experiments/{id}/hyperparameter-importance and POST
// /api/v1/attributions.

import { api, can } from "../api.js";
import { LineChart } from "../chart.js";
import { errorBox, fmtNumber, h, mount } from "../dom.js";
import { colorsBy, dimension, parallelCoordinates, runColor, scaleColor, scatterMatrix } from "../plots.js";

const MAX_RUNS = 200; // POST /compare takes at most 200 columns
const DEFAULT_OVERLAYS = 4;
const DEFAULT_METRIC_DIMS = 4;
const DEFAULT_SPM_DIMS = 4;
const HISTORY_CONCURRENCY = 6;
const IMPORTANCE_MIN_RUNS = 8; // the API needs 8 runs with the metric

/** The run ids of a #/compare?runs=a,b,c hash, deduplicated, in order. */
export function parseRuns(hash) {
  const query = new URLSearchParams(hash.split("?")[1] || "");
  const ids = (query.get("runs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  return [...new Set(ids)].slice(0, MAX_RUNS);
}

/** Params whose values differ between the runs (every param when none does). */
export function varyingParams(runs) {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.params)))].sort();
  const varying = keys.filter((k) => new Set(runs.map((r) => r.params[k] ?? "\u0000")).size > 1);
  return varying.length ? varying : keys;
}

function historyUrl(runId, key) {
  const path = key.split("/").map(encodeURIComponent).join("/");
  return `/api/v1/runs/${encodeURIComponent(runId)}/metrics/${path}/history`;
}

/** Run `tasks` (functions returning promises) with at most `limit` in flight. */
async function pool(tasks, limit) {
  const out = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      out[i] = await tasks[i]().then(
        (value) => ({ value }),
        (error) => ({ error }),
      );
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return out;
}

function signed(v) {
  if (v === null || v === undefined) return "";
  const text = fmtNumber(v);
  return v > 0 ? `+${text}` : text;
}

function pct(v) {
  if (v === null || v === undefined) return "";
  return `${v > 0 ? "+" : ""}${(v * 100).toFixed(1)}%`;
}

/** A number cell carrying the exact value (data-value) and showing it formatted. */
function numCell(v, attrs = {}) {
  return h("td", { class: "num", ...attrs, dataset: { value: v === null || v === undefined ? "" : String(v), ...(attrs.dataset || {}) } }, v === null || v === undefined ? "–" : fmtNumber(v));
}

/** A <details> with one checkbox per option; onChange(chosen ids) on each toggle. */
function checkPicker(id, title, options, chosen, onChange) {
  const current = new Set(chosen);
  const summary = h("summary", {}, `${title} (${current.size})`);
  const list = h(
    "div",
    { class: "picker-list" },
    options.map((o) =>
      h(
        "label",
        { class: "picker-item", dataset: { key: o } },
        h("input", {
          type: "checkbox",
          checked: current.has(o),
          value: o,
          onchange: (event) => {
            if (event.target.checked) current.add(o);
            else current.delete(o);
            summary.textContent = `${title} (${current.size})`;
            onChange(options.filter((x) => current.has(x)));
          },
        }),
        o,
      ),
    ),
  );
  return h("details", { class: "picker", id }, summary, list);
}

function section(id, title, ...body) {
  return h("section", { class: "cmp-section card", id }, h("h2", {}, title), ...body);
}

export async function comparePage() {
  const ids = parseRuns(location.hash);
  if (ids.length < 1) {
    return { element: h("p", { class: "muted" }, "No runs to compare: select runs in an experiment's runs table.") };
  }
  const fetched = await Promise.all(ids.map((id) => api(`/api/v1/runs/${encodeURIComponent(id)}`)));
  const runs = fetched.map((r, i) => {
    const metrics = {};
    for (const [k, m] of Object.entries(r.metrics || {})) metrics[k] = typeof m.value === "number" ? m.value : Number(m.value);
    return {
      id: r.info.run_id,
      name: r.info.name || r.info.run_id,
      experiment: r.info.experiment_id,
      color: runColor(i),
      params: r.params || {},
      metrics,
    };
  });
  const byId = new Map(runs.map((r) => [r.id, r]));
  const experiments = [...new Set(runs.map((r) => r.experiment))];
  const experimentId = experiments[0];
  const charts = [];
  const controller = new AbortController();
  const signal = controller.signal;

  // The comparison (performance, stability, fairness) decides which metrics exist.
  let comparison = await api("/api/v1/compare", {
    method: "POST",
    body: { runs: ids, sections: ["performance", "stability", "fairness"] },
    signal,
  });
  const metrics = comparison.performance.metrics.map((m) => m.metric);
  const params = [...new Set(runs.flatMap((r) => Object.keys(r.params)))].sort();
  const varied = varyingParams(runs);
  const state = {
    overlays: metrics.slice(0, DEFAULT_OVERLAYS),
    pcDims: [...varied.map((k) => `params.${k}`), ...metrics.slice(0, DEFAULT_METRIC_DIMS).map((k) => `metrics.${k}`)],
    colorBy: metrics.length ? `metrics.${metrics.includes("val/loss") ? "val/loss" : metrics[0]}` : "",
    spmDims: [],
    baseline: comparison.performance.baseline,
  };
  {
    // Numeric params that vary, then metrics; at least one metric when there is one.
    const numericParams = varied.filter((k) => k !== "seed" && dimension(`params.${k}`, runs).kind === "numeric").map((k) => `params.${k}`);
    const metricDims = metrics.map((k) => `metrics.${k}`);
    const room = DEFAULT_SPM_DIMS - Math.min(metricDims.length, Math.max(1, DEFAULT_SPM_DIMS - numericParams.length));
    state.spmDims = [...numericParams.slice(0, room), ...metricDims].slice(0, DEFAULT_SPM_DIMS);
  }
  const dimOptions = [...params.map((k) => `params.${k}`), ...metrics.map((k) => `metrics.${k}`)];

  // -- legend ------------------------------------------------------------------------------
  const legend = h(
    "div",
    { class: "cmp-legend", id: "compare-legend" },
    runs.map((r) =>
      h(
        "a",
        { class: "cmp-legend-item", href: `#/runs/${encodeURIComponent(r.id)}`, dataset: { runId: r.id }, title: r.id },
        h("span", { class: "swatch", style: { background: r.color } }),
        r.name,
      ),
    ),
  );

  // -- history overlays --------------------------------------------------------------------
  const overlayGrid = h("div", { class: "charts", id: "overlays" });
  async function loadOverlay(metric, chart, card, note) {
    card.dataset.loading = "true";
    const width = Math.max(300, chart.element.clientWidth || 600);
    const query = { max_points: Math.min(2000, Math.round(width * 1.5)), method: "minmax" };
    const having = runs.filter((r) => metric in r.metrics);
    const answers = await pool(having.map((r) => () => api(historyUrl(r.id, metric), { query, signal })), HISTORY_CONCURRENCY);
    if (signal.aborted) return;
    const series = [];
    answers.forEach((answer, i) => {
      if (answer.error) return;
      const body = answer.value;
      const values = Float64Array.from(body.values, (v) => Number(v));
      series.push({ label: having[i].name, color: having[i].color, steps: Float64Array.from(body.steps), timestamps: null, values });
    });
    chart.setSeries(series);
    const failed = answers.filter((a) => a.error).length;
    note.textContent = `${series.length} run${series.length === 1 ? "" : "s"}${failed ? ` · ${failed} failed` : ""}`;
    card.dataset.series = String(series.length);
    card.dataset.loading = "false";
  }
  function renderOverlays() {
    for (const { chart } of charts.splice(0)) chart.destroy();
    mount(
      overlayGrid,
      state.overlays.map((metric) => {
        const chart = new LineChart({ title: metric, height: 220 });
        const note = h("span", { class: "muted small" });
        const card = h("div", { class: "card chart-card", dataset: { metric } }, h("div", { class: "chart-title" }, h("strong", {}, metric), note), chart.element);
        charts.push({ chart });
        requestAnimationFrame(() => loadOverlay(metric, chart, card, note).catch((err) => mount(note, errorBox(err))));
        return card;
      }),
    );
  }

  // -- parallel coordinates ----------------------------------------------------------------
  const pcBox = h("div", { class: "plot-box", id: "pc-box" });
  const colorSelect = h(
    "select",
    { id: "pc-color" },
    h("option", { value: "" }, "run"),
    dimOptions.map((d) => h("option", { value: d, selected: d === state.colorBy }, d)),
  );
  colorSelect.addEventListener("change", () => {
    state.colorBy = colorSelect.value;
    renderPc();
  });
  const colorKey = h("div", { class: "color-key", id: "pc-color-key" });
  function renderPc() {
    const dims = state.pcDims.map((d) => dimension(d, runs));
    const by = state.colorBy ? dimension(state.colorBy, runs) : null;
    const colors = colorsBy(by, runs);
    const width = Math.max(480, (pcBox.clientWidth || 1100) - 4, 70 * dims.length + 120); // wider scrolls
    mount(pcBox, dims.length ? parallelCoordinates({ runs, dims, colors, width }) : h("p", { class: "muted" }, "Choose axes."));
    if (by && by.kind === "numeric") {
      const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => scaleColor(t));
      mount(
        colorKey,
        h("span", {}, fmtNumber(by.log ? by.lo : by.lo)),
        h("span", { class: "gradient", style: { background: `linear-gradient(to right, ${stops.join(", ")})` } }),
        h("span", {}, fmtNumber(by.hi)),
        by.log ? h("span", { class: "muted small" }, "(log)") : null,
      );
    } else if (by) {
      mount(colorKey, by.levels.map((l, i) => h("span", { class: "legend-item" }, h("span", { class: "swatch", style: { background: scaleColor(by.levels.length === 1 ? 0.5 : i / (by.levels.length - 1)) } }), l)));
    } else {
      mount(colorKey);
    }
  }

  // -- scatter matrix ----------------------------------------------------------------------
  const spmBox = h("div", { class: "plot-box", id: "spm-box" });
  function renderSpm() {
    const dims = state.spmDims.map((d) => dimension(d, runs));
    const colors = colorsBy(state.colorBy ? dimension(state.colorBy, runs) : null, runs);
    const room = spmBox.clientWidth || 900;
    const cell = Math.max(110, Math.min(200, Math.floor((room - 20) / Math.max(1, dims.length)) - 6));
    mount(spmBox, dims.length ? scatterMatrix({ runs, dims, colors, cell }) : h("p", { class: "muted" }, "Choose dimensions."));
  }

  // -- hyperparameter importance -----------------------------------------------------------
  const importanceBox = h("div", { id: "importance" }, h("p", { class: "muted" }, "Loading…"));
  const scopeSelect = h(
    "select",
    { id: "importance-scope" },
    h("option", { value: "selected", selected: runs.length >= IMPORTANCE_MIN_RUNS && experiments.length === 1 }, `the ${runs.length} selected runs`),
    h("option", { value: "experiment", selected: !(runs.length >= IMPORTANCE_MIN_RUNS && experiments.length === 1) }, "every run of the experiment"),
  );
  scopeSelect.addEventListener("change", () => loadImportance());
  let importanceGeneration = 0;
  async function loadImportance() {
    const mine = ++importanceGeneration;
    const wanted = state.overlays.length ? state.overlays : metrics.slice(0, DEFAULT_OVERLAYS);
    if (!wanted.length) {
      mount(importanceBox, h("p", { class: "muted" }, "No metrics."));
      return;
    }
    const scoped = scopeSelect.value === "selected";
    const query = {
      metric: wanted,
      filter: scoped ? `attributes.run_id IN (${runs.filter((r) => r.experiment === experimentId).map((r) => `'${r.id}'`).join(", ")})` : null,
    };
    importanceBox.dataset.loading = "true";
    mount(importanceBox, h("p", { class: "muted" }, "Fitting…"));
    try {
      const answer = await api(`/api/v1/experiments/${encodeURIComponent(experimentId)}/hyperparameter-importance`, { query, signal });
      if (mine !== importanceGeneration) return;
      mount(importanceBox, answer.metrics.map(importanceList));
      importanceBox.dataset.loading = "false";
      importanceBox.dataset.scope = scopeSelect.value;
    } catch (err) {
      if (err.name === "AbortError" || mine !== importanceGeneration) return;
      mount(importanceBox, errorBox(err));
      importanceBox.dataset.loading = "false";
    }
  }

  // -- performance -------------------------------------------------------------------------
  const performanceBox = h("div", { id: "performance-box" });
  const baselineSelect = h(
    "select",
    { id: "baseline" },
    runs.map((r) => h("option", { value: r.id, selected: r.id === state.baseline }, r.name)),
  );
  baselineSelect.addEventListener("change", async () => {
    state.baseline = baselineSelect.value;
    try {
      const answer = await api("/api/v1/compare", {
        method: "POST",
        body: { runs: ids, sections: ["performance"], baseline: state.baseline },
        signal,
      });
      comparison = { ...comparison, performance: answer.performance };
      renderPerformance();
    } catch (err) {
      if (err.name !== "AbortError") mount(performanceBox, errorBox(err));
    }
  });
  function renderPerformance() {
    const perf = comparison.performance;
    performanceBox.dataset.baseline = perf.baseline;
    mount(
      performanceBox,
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          { class: "grid perf", id: "performance" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", {}, "Metric"),
              runs.map((r) =>
                h(
                  "th",
                  { class: r.id === perf.baseline ? "num is-baseline" : "num", dataset: { runId: r.id } },
                  h("span", { class: "swatch", style: { background: r.color } }),
                  r.name,
                  r.id === perf.baseline ? h("div", { class: "muted small" }, "baseline") : null,
                ),
              ),
            ),
          ),
          h(
            "tbody",
            {},
            perf.metrics.map((m) => {
              const rows = new Map(m.rows.map((row) => [row.entity, row]));
              return h(
                "tr",
                { dataset: { metric: m.metric, best: m.best.join(",") } },
                h("th", {}, m.metric, h("span", { class: "muted small" }, m.direction === "min" ? " ↓" : " ↑")),
                runs.map((r) => {
                  const row = rows.get(r.id);
                  if (!row) return h("td", { class: "num" }, "–");
                  const better = row.improvement === null ? "" : row.improvement > 0 ? " better" : row.improvement < 0 ? " worse" : "";
                  return h(
                    "td",
                    { class: `num${row.is_best ? " best" : ""}${row.is_baseline ? " is-baseline" : ""}`, dataset: { runId: r.id, value: row.value ?? "", delta: row.delta ?? "" }, title: row.min !== undefined ? `min ${fmtNumber(row.min)} · max ${fmtNumber(row.max)}` : null },
                    row.is_best ? h("span", { class: "best-mark", title: "best" }, "★ ") : null,
                    row.value === null ? "–" : fmtNumber(row.value),
                    row.is_baseline || row.delta === null ? null : h("div", { class: `delta small${better}` }, `${signed(row.delta)} ${pct(row.relative_delta)}`),
                  );
                }),
              );
            }),
          ),
        ),
      ),
    );
  }

  // -- attribution request -----------------------------------------------------------------
  const attributionBox = h("div", { id: "attribution-form" });
  function renderAttributionForm() {
    if (!can("write")) {
      mount(attributionBox, h("p", { class: "muted" }, "Requesting an attribution needs write access to the experiment."));
      return;
    }
    const metricSelect = h("select", { id: "attribution-metric" }, metrics.map((m) => h("option", { value: m, selected: m === state.colorBy.slice(8) }, m)));
    const roles = new Map(runs.map((r, i) => [r.id, i === 0 ? "baseline" : "candidate"]));
    const button = h("button", { type: "button", class: "primary", id: "attribute" });
    const message = h("span", { class: "error-inline", id: "attribution-error" });
    const label = () => {
      const base = [...roles.values()].filter((v) => v === "baseline").length;
      const cand = [...roles.values()].filter((v) => v === "candidate").length;
      button.textContent = `Attribute shift of ${metricSelect.value} (${base} baseline → ${cand} candidate)`;
      button.disabled = !base || !cand || base + cand < 3;
    };
    metricSelect.addEventListener("change", label);
    const table = h(
      "table",
      { class: "grid roles" },
      h("thead", {}, h("tr", {}, h("th", {}, "Run"), h("th", {}, "Role"))),
      h(
        "tbody",
        {},
        runs
          .filter((r) => r.experiment === experimentId)
          .map((r) => {
            const select = h(
              "select",
              { class: "role", dataset: { runId: r.id } },
              ["baseline", "candidate", "excluded"].map((v) => h("option", { value: v, selected: roles.get(r.id) === v }, v)),
            );
            select.addEventListener("change", () => {
              roles.set(r.id, select.value);
              label();
            });
            return h("tr", {}, h("td", {}, h("span", { class: "swatch", style: { background: r.color } }), r.name), h("td", {}, select));
          }),
      ),
    );
    button.addEventListener("click", async () => {
      message.textContent = "";
      button.disabled = true;
      const pick = (role) => [...roles].filter(([, v]) => v === role).map(([id]) => id);
      try {
        const answer = await api("/api/v1/attributions", {
          method: "POST",
          body: {
            experiment_id: experimentId,
            metric: metricSelect.value,
            baseline: { run_ids: pick("baseline") },
            candidate: { run_ids: pick("candidate") },
          },
        });
        location.hash = `#/attribution/${encodeURIComponent(answer.attribution_id)}`;
      } catch (err) {
        message.textContent = err.message;
        label();
      }
    });
    label();
    mount(
      attributionBox,
      h("p", { class: "muted small" }, "Which factors (params, tags, code, environment) explain the shift of a metric from the baseline runs to the candidate runs? Computed by the analysis service (dowhy)."),
      h("div", { class: "toolbar" }, h("label", {}, "Metric ", metricSelect)),
      table,
      h("div", { class: "toolbar" }, button, message),
    );
  }

  // -- page --------------------------------------------------------------------------------
  const element = h(
    "section",
    { class: "compare", dataset: { runs: runs.length } },
    h(
      "div",
      { class: "toolbar" },
      h("h1", {}, `Compare ${runs.length} runs`),
      experiments.map((e) => h("a", { href: `#/experiments/${encodeURIComponent(e)}` }, `experiment ${e}`)),
    ),
    legend,
    section(
      "overlays-section",
      "Metric histories",
      h("div", { class: "toolbar" }, checkPicker("overlay-picker", "Metrics", metrics, state.overlays, (chosen) => {
        state.overlays = chosen;
        renderOverlays();
        loadImportance();
      })),
      overlayGrid,
    ),
    section(
      "pc-section",
      "Parallel coordinates",
      h(
        "div",
        { class: "toolbar" },
        checkPicker("pc-picker", "Axes", dimOptions, state.pcDims, (chosen) => {
          state.pcDims = chosen;
          renderPc();
        }),
        h("label", {}, "Colour by ", colorSelect),
        colorKey,
        h("span", { class: "muted small" }, "Drag along an axis to brush a range; double-click to clear."),
      ),
      pcBox,
    ),
    section(
      "spm-section",
      "Scatter-plot matrix",
      h("div", { class: "toolbar" }, checkPicker("spm-picker", "Dimensions", dimOptions, state.spmDims, (chosen) => {
        state.spmDims = chosen;
        renderSpm();
      })),
      spmBox,
    ),
    section("performance-section", "Performance", h("div", { class: "toolbar" }, h("label", {}, "Deltas against ", baselineSelect)), performanceBox),
    section(
      "importance-section",
      "Hyperparameter importance",
      h("div", { class: "toolbar" }, h("label", {}, "Over ", scopeSelect), h("span", { class: "muted small" }, "Permutation importance of a random forest (params → metric), cross-validated; seed excluded.")),
      importanceBox,
    ),
    section("stability-section", "Stability across seeds", stabilityView(comparison.stability, byId)),
    section("fairness-section", "Fairness by subgroup", fairnessView(comparison.fairness, byId)),
    section("attribution-section", "Why did a metric move?", attributionBox),
  );
  renderPerformance();
  renderAttributionForm();
  requestAnimationFrame(() => {
    renderPc(); // sized to the page, once mounted
    renderSpm();
    renderOverlays();
    loadImportance();
  });
  return {
    element,
    cleanup: () => {
      controller.abort();
      for (const { chart } of charts) chart.destroy();
    },
  };
}

/** One metric's importances as a ranked bar list (the API's order). */
function importanceList(entry) {
  const r = entry.result || {};
  const items = r.importances || [];
  const top = Math.max(1e-12, ...items.map((i) => Math.max(0, i.ci_high ?? i.importance ?? 0)));
  const bar = (v) => `${Math.max(0, Math.min(100, (v / top) * 100))}%`;
  return h(
    "div",
    { class: "importance", dataset: { metric: entry.metric, reliable: String(Boolean(r.reliable)) } },
    h(
      "h3",
      {},
      entry.metric,
      " ",
      h("span", { class: "muted small" }, `${r.n_runs ?? "?"} runs · CV R² ${r.cv_r2 === null || r.cv_r2 === undefined ? "n/a" : fmtNumber(r.cv_r2)}`),
      r.reliable === false ? h("span", { class: "flag" }, "unreliable") : null,
    ),
    r.note ? h("p", { class: "muted small" }, r.note) : null,
    items.length
      ? h(
          "ol",
          { class: "importance-list" },
          items.map((i) =>
            h(
              "li",
              { class: "importance-item", dataset: { param: i.param, importance: String(i.importance) } },
              h("span", { class: "imp-name", title: `${i.kind || ""}` }, i.param),
              h(
                "span",
                { class: "imp-track" },
                h("span", { class: "imp-bar", style: { width: bar(i.importance) } }),
                i.ci_low !== null && i.ci_high !== null && i.ci_low !== undefined
                  ? h("span", { class: "imp-ci", style: { left: bar(Math.max(0, i.ci_low)), width: `calc(${bar(i.ci_high)} - ${bar(Math.max(0, i.ci_low))})` } })
                  : null,
              ),
              h("span", { class: "imp-value num" }, fmtNumber(i.importance), i.share !== null && i.share !== undefined ? h("span", { class: "muted small" }, ` ${(i.share * 100).toFixed(0)}%`) : null),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No importances (too few runs, or no param varies)."),
    r.excluded && r.excluded.length ? h("p", { class: "muted small" }, `Left out: ${r.excluded.map((e) => (typeof e === "string" ? e : e.param || JSON.stringify(e))).join(", ")}`) : null,
  );
}

function configText(config) {
  const entries = Object.entries(config || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "(no params)";
}

/** The stability section: a block per configuration run with several seeds. */
function stabilityView(stability, byId) {
  const configs = (stability && stability.configurations) || [];
  if (!configs.length) {
    return h("p", { class: "muted", id: "stability" }, "No configuration among these runs was run with more than one seed.");
  }
  return h(
    "div",
    { id: "stability" },
    h("p", { class: "muted small" }, `Runs equal but for ${stability.seed_params.join(", ")}${stability.ignored_params.length ? ` (ignoring ${stability.ignored_params.join(", ")})` : ""}; ${Math.round(stability.confidence * 100)}% t-interval of the mean; unstable when CV > ${stability.cv_threshold}.`),
    configs.map((c, index) =>
      h(
        "div",
        { class: `stability-config${c.unstable ? " unstable" : ""}`, dataset: { index: String(index), n: String(c.n), unstable: String(c.unstable) } },
        h(
          "h3",
          {},
          configText(c.configuration),
          " ",
          h("span", { class: "muted small" }, `${c.n} runs · seeds ${c.seeds.join(", ") || "?"}`),
          c.unstable ? h("span", { class: "flag" }, `unstable: ${c.unstable_metrics.join(", ")}`) : h("span", { class: "ok" }, "stable"),
        ),
        h(
          "div",
          { class: "muted small" },
          c.run_ids.map((id) => h("a", { href: `#/runs/${encodeURIComponent(id)}`, class: "run-chip" }, byId.get(id)?.name || id)),
        ),
        h(
          "table",
          { class: "grid stability-table" },
          h("thead", {}, h("tr", {}, ["Metric", "n", "Mean", "Std", "CV", "CI low", "CI high", ""].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            c.metrics.map((m) =>
              h(
                "tr",
                { class: m.unstable ? "unstable" : "", dataset: { metric: m.metric } },
                h("td", {}, m.metric),
                numCell(m.n, { dataset: { field: "n" } }),
                numCell(m.mean, { dataset: { field: "mean" } }),
                numCell(m.std, { dataset: { field: "std" } }),
                numCell(m.cv, { dataset: { field: "cv" } }),
                numCell(m.ci_low, { dataset: { field: "ci_low" } }),
                numCell(m.ci_high, { dataset: { field: "ci_high" } }),
                h("td", {}, m.unstable ? h("span", { class: "flag" }, "unstable") : ""),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

/** The fairness section: per sensitive attribute one table, a row per (run, metric) with the
 * per-group values, the worst group and the gaps; the parity / equalized-odds gaps per run. */
function fairnessView(fairness, byId) {
  const rows = (fairness && fairness.runs) || [];
  if (!rows.length) return h("p", { class: "muted", id: "fairness" }, "None of these runs logged per-subgroup metrics (rl.log_fairness_metrics).");
  const attributes = new Map(); // "prefix|attribute" -> {prefix, attribute, entries: [{runId, a}]}
  for (const entry of rows) {
    for (const a of entry.attributes) {
      const key = `${a.prefix}|${a.attribute}`;
      if (!attributes.has(key)) attributes.set(key, { prefix: a.prefix, attribute: a.attribute, entries: [] });
      attributes.get(key).entries.push({ runId: entry.run_id, a });
    }
  }
  const GAPS = ["demographic_parity_difference", "equalized_odds_difference"];
  const runName = (id) => [h("span", { class: "swatch", style: { background: byId.get(id)?.color || "#999" } }), byId.get(id)?.name || id];
  return h(
    "div",
    { id: "fairness" },
    h("p", { class: "muted small" }, "Worst group by the metric's direction (↑ higher is better, ↓ lower); gaps recomputed with fairlearn's definitions."),
    [...attributes.values()].map(({ prefix, attribute, entries }) => {
      const groups = [...new Set(entries.flatMap((e) => Object.keys(e.a.groups)))].sort();
      return h(
        "div",
        { class: "fairness-attribute", dataset: { attribute, prefix } },
        h("h3", {}, `${prefix}${attribute}`, h("span", { class: "muted small" }, `${entries.length} runs · groups ${groups.join(", ")}`)),
        h(
          "div",
          { class: "table-scroll" },
          h(
            "table",
            { class: "grid fairness-table" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                h("th", {}, "Run"),
                h("th", {}, "Metric"),
                groups.map((g) => h("th", { class: "num" }, g)),
                h("th", {}, "Worst group"),
                h("th", { class: "num" }, "Max gap"),
                h("th", { class: "num" }, "Min ratio"),
                GAPS.map((g) => h("th", { class: "num", title: g }, g === GAPS[0] ? "Parity diff." : "Eq. odds diff.")),
              ),
            ),
            entries.map(({ runId, a }) =>
              h(
                "tbody",
                { class: "fairness-run", dataset: { runId } },
                a.metrics.map((m, i) =>
                  h(
                    "tr",
                    { dataset: { runId, metric: m.metric, worst: m.worst_group } },
                    i === 0 ? h("td", { rowspan: a.metrics.length, class: "run-cell" }, runName(runId)) : null,
                    h("td", {}, m.metric, h("span", { class: "muted small" }, m.direction === "min" ? " ↓" : " ↑")),
                    groups.map((g) => numCell(g in m.values ? m.values[g] : null, { class: g === m.worst_group ? "num worst" : "num", dataset: { group: g } })),
                    h("td", { class: "worst-group" }, m.worst_group),
                    numCell(m.max_difference, { dataset: { field: "max_difference" } }),
                    numCell(m.min_ratio, { dataset: { field: "min_ratio" } }),
                    i === 0 ? GAPS.map((g) => numCell(a[g] ?? null, { rowspan: a.metrics.length, dataset: { field: g } })) : null,
                  ),
                ),
              ),
            ),
          ),
        ),
      );
    }),
  );
}
