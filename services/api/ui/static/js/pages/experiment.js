// One experiment: its runs in a virtualised table (sort, run-search filter, param/metric
// columns of your choice, nested runs as a tree).
//
// Rows come from GET /api/v1/runs:table (every run of the experiment with params, tags, latest
// metrics and its parent, as columns, in one answer; a server without it is paged through
// GET /api/v1/runs instead). The filter box sends MLflow's run-search grammar to the same
// endpoint (?filter=) and shows the runs it matches.
// Checkboxes select runs (kept for the browser tab's session); "Compare (n)" opens the compare
// view (#/compare?runs=...) with them.

import { allPages, api } from "../api.js";
import { debounce, errorBox, fmtDuration, fmtNumber, fmtTime, h, mount } from "../dom.js";
import { VirtualTable } from "../table.js";

const MAX_RUNS = 50000;
const MAX_COMPARED = 200; // POST /api/v1/compare takes at most 200 runs
const BASE_COLUMNS = [
  { id: "name", label: "Run", width: 260 },
  { id: "status", label: "Status", width: 90 },
  { id: "start_time", label: "Started", width: 170, numeric: true },
  { id: "duration", label: "Duration", width: 90, numeric: true },
  { id: "user_id", label: "User", width: 120 },
];

function fromNative(r) {
  const metrics = {};
  for (const [k, m] of Object.entries(r.metrics || {})) metrics[k] = m.value;
  return {
    id: r.info.run_id,
    name: r.info.name,
    status: r.info.status,
    start_time: r.info.start_time,
    end_time: r.info.end_time,
    user_id: r.info.user_id,
    parent: r.info.parent_run_id || null,
    params: r.params || {},
    tags: r.tags || {},
    metrics,
  };
}

/** Row models from a GET /runs:table answer (columns: entry i of each list is run i). */
export function fromColumns(table) {
  const cols = table.runs;
  const n = cols.run_id.length;
  const rows = new Array(n);
  for (let i = 0; i < n; i++) {
    rows[i] = {
      id: cols.run_id[i],
      name: cols.name[i],
      status: cols.status[i],
      start_time: cols.start_time[i],
      end_time: cols.end_time[i],
      user_id: cols.user_id[i],
      parent: cols.parent_run_id[i] || null,
      params: {},
      tags: {},
      metrics: {},
    };
  }
  for (const field of ["params", "tags", "metrics"]) {
    for (const [key, values] of Object.entries(table[field] || {})) {
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (v !== null && v !== undefined) rows[i][field][key] = v;
      }
    }
  }
  return rows;
}

function fromMlflow(r) {
  const pairs = (list) => Object.fromEntries((list || []).map((p) => [p.key, p.value]));
  const tags = pairs(r.data.tags);
  return {
    id: r.info.run_id,
    name: r.info.run_name,
    status: r.info.status,
    start_time: r.info.start_time,
    end_time: r.info.end_time ?? null,
    user_id: r.info.user_id,
    parent: tags["mlflow.parentRunId"] || null,
    params: pairs(r.data.params),
    tags,
    metrics: pairs(r.data.metrics),
  };
}

function sortValue(run, id) {
  if (id === "duration") return run.end_time ? run.end_time - run.start_time : null;
  if (id.startsWith("metrics.")) {
    const v = run.metrics[id.slice(8)];
    return typeof v === "number" ? v : null;
  }
  if (id.startsWith("params.")) {
    const v = run.params[id.slice(7)];
    if (v === undefined) return null;
    const n = Number(v);
    return v.trim() !== "" && Number.isFinite(n) ? n : v;
  }
  return run[id] ?? null;
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null) return 1; // missing values last, whatever the direction
  if (b === null) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "number") return -1;
  if (typeof b === "number") return 1;
  return String(a).localeCompare(String(b));
}

/** The visible rows: roots and, under each expanded run, its children (sorted among siblings). */
export function flattenTree(runs, sort, expanded) {
  const ids = new Set(runs.map((r) => r.id));
  const children = new Map();
  const roots = [];
  for (const run of runs) {
    if (run.parent && ids.has(run.parent) && run.parent !== run.id) {
      if (!children.has(run.parent)) children.set(run.parent, []);
      children.get(run.parent).push(run);
    } else {
      roots.push(run);
    }
  }
  const order = (list) => {
    if (!sort.id) return list;
    return list
      .map((run) => [sortValue(run, sort.id), run])
      .sort((x, y) => {
        if (x[0] === null || y[0] === null) return compare(x[0], y[0]);
        return sort.dir * compare(x[0], y[0]);
      })
      .map((pair) => pair[1]);
  };
  const out = [];
  const seen = new Set();
  const walk = (run, depth) => {
    if (seen.has(run.id)) return;
    seen.add(run.id);
    const kids = children.get(run.id) || [];
    out.push({ id: run.id, run, depth, childCount: kids.length, expanded: expanded.has(run.id) });
    if (kids.length && expanded.has(run.id)) for (const kid of order(kids)) walk(kid, depth + 1);
  };
  for (const run of order(roots)) walk(run, 0);
  return out;
}

export async function experimentPage(experimentId) {
  const experiment = await api(`/api/v1/experiments/${encodeURIComponent(experimentId)}`);
  const stored = JSON.parse(localStorage.getItem(`rl.columns.${experimentId}`) || "null");
  const state = {
    runs: new Map(), // run id -> row model, every run of the experiment
    matched: null, // run ids the filter matched (null: no filter)
    sort: { id: "start_time", dir: -1 },
    expanded: new Set(),
    columns: stored, // ["params.lr", "metrics.loss", ...] or null (the defaults)
    loading: true,
    bulk: true, // GET /runs:table answers (else: paging through GET /runs)
    selected: new Set(JSON.parse(sessionStorage.getItem(`rl.selected.${experimentId}`) || "[]")),
  };
  const controller = new AbortController();
  const table = new VirtualTable({
    onSort: (id) => {
      state.sort = { id, dir: state.sort.id === id ? -state.sort.dir : id === "start_time" ? -1 : 1 };
      table.setSort(state.sort.id, state.sort.dir);
      refresh();
    },
  });
  const status = h("span", { class: "muted", id: "runs-status" });
  const filterMessage = h("div", { class: "error", role: "alert", hidden: true, id: "filter-error" });
  const filter = h("input", {
    id: "run-filter",
    type: "search",
    size: 60,
    placeholder: "metrics.`val/loss` < 0.5 and params.optimizer = 'adam' and tags.data = 'v3'",
    title: "MLflow run-search grammar: metrics.*, params.*, tags.*, attributes (status, run_name, start_time, ...)",
  });
  const picker = h("details", { class: "picker", id: "column-picker" });
  const compareButton = h("button", {
    type: "button",
    id: "compare-runs",
    class: "primary",
    onclick: () => {
      const ids = [...state.selected];
      if (ids.length < 2 || ids.length > MAX_COMPARED) return;
      location.hash = `#/compare?runs=${ids.map(encodeURIComponent).join(",")}`;
    },
  });
  const clearButton = h("button", {
    type: "button",
    id: "clear-selection",
    onclick: () => {
      state.selected.clear();
      selectionChanged();
    },
  }, "Clear");
  let selectAll = null; // the header checkbox: every run shown in the table

  function selectionChanged() {
    const n = state.selected.size;
    compareButton.textContent = `Compare (${n})`;
    compareButton.disabled = n < 2 || n > MAX_COMPARED;
    compareButton.title = n > MAX_COMPARED ? `at most ${MAX_COMPARED} runs` : n < 2 ? "select two runs or more" : "";
    clearButton.hidden = n === 0;
    sessionStorage.setItem(`rl.selected.${experimentId}`, JSON.stringify([...state.selected]));
    syncSelectAll();
    table.invalidate();
  }

  function syncSelectAll() {
    if (!selectAll) return;
    const shown = table.rows;
    const chosen = shown.filter((r) => state.selected.has(r.id)).length;
    selectAll.checked = shown.length > 0 && chosen === shown.length;
    selectAll.indeterminate = chosen > 0 && chosen < shown.length;
  }

  const selectColumn = {
    id: "select",
    label: "",
    title: "Select runs to compare",
    width: 34,
    sortable: false,
    header: () => {
      selectAll = h("input", {
        type: "checkbox",
        id: "select-all",
        "aria-label": "Select every run shown",
        onchange: (event) => {
          for (const row of table.rows) {
            if (event.target.checked) state.selected.add(row.id);
            else state.selected.delete(row.id);
          }
          selectionChanged();
        },
      });
      syncSelectAll();
      return selectAll;
    },
    value: () => "",
    render: (row) =>
      h("input", {
        type: "checkbox",
        class: "row-select",
        checked: state.selected.has(row.id),
        "aria-label": `Select ${row.run.name || row.id}`,
        onchange: (event) => {
          if (event.target.checked) state.selected.add(row.id);
          else state.selected.delete(row.id);
          selectionChanged();
        },
      }),
  };

  selectionChanged();

  function keys() {
    const params = new Set();
    const metrics = new Set();
    for (const run of state.runs.values()) {
      for (const k of Object.keys(run.params)) params.add(k);
      for (const k of Object.keys(run.metrics)) metrics.add(k);
    }
    return { params: [...params].sort(), metrics: [...metrics].sort() };
  }

  function chosen() {
    if (state.columns) return state.columns;
    const { params, metrics } = keys();
    return [...metrics.filter((k) => !k.startsWith("system/")).slice(0, 4).map((k) => `metrics.${k}`), ...params.slice(0, 4).map((k) => `params.${k}`)];
  }

  function nameCell(row) {
    const indent = h("span", { class: "indent", style: { width: `${row.depth * 16}px` } });
    const toggle = row.childCount
      ? h(
          "button",
          {
            type: "button",
            class: "toggle",
            "aria-expanded": String(row.expanded),
            title: `${row.childCount} nested runs`,
            onclick: (event) => {
              event.stopPropagation();
              if (state.expanded.has(row.id)) state.expanded.delete(row.id);
              else state.expanded.add(row.id);
              refresh();
            },
          },
          `${row.expanded ? "▾" : "▸"} ${row.childCount}`,
        )
      : h("span", { class: "toggle-space" });
    return h("span", { class: "name-cell" }, indent, toggle, h("a", { href: `#/runs/${row.id}` }, row.run.name || row.id));
  }

  function columns() {
    const base = BASE_COLUMNS.map((c) => ({
      ...c,
      value: (row) => {
        const run = row.run;
        if (c.id === "start_time") return fmtTime(run.start_time);
        if (c.id === "duration") return fmtDuration(run.end_time ? run.end_time - run.start_time : null);
        return run[c.id] ?? "";
      },
      render: c.id === "name" ? nameCell : null,
    }));
    const extra = chosen().map((id) => {
      const metric = id.startsWith("metrics.");
      const key = id.slice(metric ? 8 : 7);
      return {
        id,
        label: key,
        title: id,
        width: 120,
        numeric: metric,
        value: (row) => (metric ? fmtNumber(row.run.metrics[key]) : row.run.params[key] ?? ""),
      };
    });
    return [selectColumn, ...base, ...extra];
  }

  function renderPicker() {
    const { params, metrics } = keys();
    const current = new Set(chosen());
    const search = h("input", { type: "search", placeholder: "find a key", class: "picker-search" });
    const box = (id) =>
      h(
        "label",
        { class: "picker-item", dataset: { key: id } },
        h("input", {
          type: "checkbox",
          checked: current.has(id),
          onchange: (event) => {
            const next = chosen().filter((c) => c !== id);
            if (event.target.checked) next.push(id);
            state.columns = next;
            localStorage.setItem(`rl.columns.${experimentId}`, JSON.stringify(next));
            table.setColumns(columns());
            table.setSort(state.sort.id, state.sort.dir);
          },
        }),
        id,
      );
    const list = h("div", { class: "picker-list" }, [
      h("strong", {}, "Metrics"),
      metrics.map((k) => box(`metrics.${k}`)),
      h("strong", {}, "Params"),
      params.map((k) => box(`params.${k}`)),
    ]);
    search.addEventListener("input", () => {
      const q = search.value.toLowerCase();
      for (const item of list.querySelectorAll(".picker-item")) item.hidden = !item.dataset.key.toLowerCase().includes(q);
    });
    mount(picker, h("summary", {}, "Columns"), search, list);
  }

  function refresh() {
    const runs = state.matched
      ? [...state.matched].map((id) => state.runs.get(id)).filter(Boolean)
      : [...state.runs.values()];
    table.setRows(flattenTree(runs, state.sort, state.expanded));
    selectionChanged();
    const total = state.runs.size;
    status.textContent = state.matched
      ? `${runs.length} of ${total}${state.loading ? "+" : ""} runs match`
      : `${total}${state.loading ? "+ (loading)" : ""} runs`;
  }

  async function applyFilter() {
    const text = filter.value.trim();
    filterMessage.hidden = true;
    history.replaceState(null, "", `#/experiments/${encodeURIComponent(experimentId)}${text ? `?filter=${encodeURIComponent(text)}` : ""}`);
    if (!text) {
      state.matched = null;
      refresh();
      return;
    }
    try {
      const matched = new Set();
      if (state.bulk) {
        const table = await api("/api/v1/runs:table", {
          query: { experiment_id: experimentId, filter: text, limit: MAX_RUNS },
          signal: controller.signal,
        });
        for (const run of fromColumns(table)) {
          matched.add(run.id);
          if (!state.runs.has(run.id)) state.runs.set(run.id, run);
        }
      } else {
        let token = null;
        do {
          const page = await api("/api/2.0/mlflow/runs/search", {
            method: "POST",
            body: { experiment_ids: [experimentId], filter: text, max_results: 5000, page_token: token },
            signal: controller.signal,
          });
          for (const r of page.runs || []) {
            matched.add(r.info.run_id);
            if (!state.runs.has(r.info.run_id)) state.runs.set(r.info.run_id, fromMlflow(r));
          }
          token = page.next_page_token;
        } while (token && matched.size < MAX_RUNS);
      }
      state.matched = matched;
      refresh();
    } catch (err) {
      if (err.name === "AbortError") return;
      filterMessage.textContent = err.message;
      filterMessage.hidden = false;
    }
  }

  filter.addEventListener("keydown", (event) => {
    if (event.key === "Enter") applyFilter();
  });
  const initial = new URLSearchParams(location.hash.split("?")[1] || "").get("filter");
  if (initial) filter.value = initial;

  table.setSort(state.sort.id, state.sort.dir);
  const element = h(
    "section",
    { class: "experiment" },
    h("h1", {}, experiment.name, " ", h("span", { class: "muted mono" }, experiment.experiment_id)),
    h("div", { class: "tags" }, Object.entries(experiment.tags || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`))),
    h(
      "div",
      { class: "toolbar" },
      filter,
      h("button", { type: "button", id: "apply-filter", onclick: applyFilter }, "Filter"),
      picker,
      compareButton,
      clearButton,
      status,
      h("a", { href: `#/attribution?experiment=${encodeURIComponent(experimentId)}`, id: "attributions-link" }, "Attributions"),
    ),
    filterMessage,
    table.element,
  );

  const redraw = debounce(() => {
    if (!state.columns) table.setColumns(columns());
    renderPicker();
    refresh();
  }, 50);
  table.setColumns(columns());
  const started = performance.now();
  function paged() {
    let received = 0;
    return allPages("/api/v1/runs", "runs", {
      query: { experiment_id: experimentId, page_size: 1000 },
      limit: MAX_RUNS,
      signal: controller.signal,
      onPage: (items, more) => {
        for (; received < items.length; received++) {
          const run = fromNative(items[received]);
          state.runs.set(run.id, run);
        }
        state.loading = more;
        if (!state.runs.size || items.length <= 1000 || !more) {
          table.setColumns(columns());
          renderPicker();
        }
        redraw();
      },
    });
  }
  api("/api/v1/runs:table", { query: { experiment_id: experimentId, limit: MAX_RUNS }, signal: controller.signal })
    .then(
      (answer) => {
        for (const run of fromColumns(answer)) state.runs.set(run.id, run);
        if (answer.truncated) status.title = `only the newest ${MAX_RUNS} runs`;
      },
      (err) => {
        // A server without the columnar endpoint: page through GET /runs.
        if (err.name === "AbortError" || !(err.status === 404 || err.status === 405)) throw err;
        state.bulk = false;
        return paged();
      },
    )
    .then(() => {
      state.loading = false;
      table.setColumns(columns());
      renderPicker();
      if (initial) applyFilter();
      else refresh();
      element.dataset.loadMs = (performance.now() - started).toFixed(1);
      element.dataset.loaded = "true";
    })
    .catch((err) => {
      if (err.name !== "AbortError") element.append(errorBox(err));
    });
  return {
    element,
    cleanup: () => {
      controller.abort();
      table.destroy();
    },
  };
}
