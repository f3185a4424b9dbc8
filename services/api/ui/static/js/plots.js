// SVG plots of many runs side by side: parallel coordinates and a scatter-plot matrix.
//
// A run here is {id, name, color, params: {k: string}, metrics: {k: number}}. A dimension is a
// param or a metric ("params.lr", "metrics.val/loss") placed on a [0, 1] scale: numeric when
// every value present parses as a finite number (log-scaled when positive and spanning two
// decades or more), else categorical (its levels evenly spaced, in natural order). Missing
// values sit in a band under the axis. Everything is plain SVG, so each run is one element
// (a <polyline>, a <circle>) that tests and people can point at.

import { PALETTE, ticks } from "./chart.js";
import { fmtNumber } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const COLLATOR = new Intl.Collator(undefined, { numeric: true });
// viridis, sampled: a perceptually ordered scale for "coloured by a metric"
const VIRIDIS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"];
const MISSING = "#9ca3af";

/** An SVG element: s("circle", {cx: 1, r: 2, class: "x"}, child, ...). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** The colour of the i-th run: the chart palette, then well-spread hues. */
export function runColor(i) {
  if (i < PALETTE.length) return PALETTE[i];
  return `hsl(${Math.round((i * 137.508) % 360)}, 62%, 42%)`;
}

/** A colour for t in [0, 1] on the viridis scale (null/NaN: grey). */
export function scaleColor(t) {
  if (t === null || !Number.isFinite(t)) return MISSING;
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const rgb = (hex) => [1, 3, 5].map((o) => parseInt(hex.slice(o, o + 2), 16));
  const [a, b] = [rgb(VIRIDIS[i]), rgb(VIRIDIS[i + 1])];
  const mix = a.map((v, k) => Math.round(v + (b[k] - v) * f));
  return `rgb(${mix.join(", ")})`;
}

/** The raw value of a run on dimension `id` (a string for params, a number for metrics), or null. */
export function valueOf(run, id) {
  if (id.startsWith("metrics.")) {
    const v = run.metrics[id.slice(8)];
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }
  if (id.startsWith("params.")) {
    const v = run.params[id.slice(7)];
    return v === undefined || v === null || v === "" ? null : v;
  }
  return null;
}

/** A dimension over `runs`: kind, scale and ticks; position(run) in [0, 1] or null when missing. */
export function dimension(id, runs) {
  const label = id.replace(/^(params|metrics)\./, "");
  const raw = new Map(runs.map((r) => [r.id, valueOf(r, id)]));
  const present = [...raw.values()].filter((v) => v !== null);
  const numbers = present.map((v) => (typeof v === "number" ? v : v.trim() === "" ? NaN : Number(v)));
  const numeric = present.length > 0 && numbers.every(Number.isFinite);
  const base = { id, label, source: id.startsWith("metrics.") ? "metric" : "param", missing: runs.length - present.length };
  if (!numeric) {
    const levels = [...new Set(present.map(String))].sort(COLLATOR.compare);
    const at = new Map(levels.map((l, i) => [l, levels.length === 1 ? 0.5 : i / (levels.length - 1)]));
    return {
      ...base,
      kind: "categorical",
      levels,
      value: (run) => raw.get(run.id) ?? null,
      position: (run) => {
        const v = raw.get(run.id);
        return v === null || v === undefined ? null : at.get(String(v));
      },
      ticks: levels.map((l) => ({ at: at.get(l), label: l })),
    };
  }
  let lo = Math.min(...numbers);
  let hi = Math.max(...numbers);
  const log = lo > 0 && hi / lo >= 100;
  const t = (x) => (log ? Math.log10(x) : x);
  const [a, b] = [t(lo), t(hi)];
  const position = (x) => (b > a ? (t(x) - a) / (b - a) : 0.5);
  let marks;
  if (log) {
    marks = [];
    for (let e = Math.ceil(a - 1e-9); e <= b + 1e-9; e++) marks.push(10 ** e);
  } else {
    marks = b > a ? ticks(a, b, 4) : [lo];
  }
  const toNumber = (v) => (typeof v === "number" ? v : Number(v));
  const format = (m) => (log && m > 0 && (m < 1e-3 || m >= 1e4) && Number.isInteger(Math.log10(m)) ? `1e${Math.log10(m)}` : fmtNumber(m));
  return {
    ...base,
    kind: "numeric",
    log,
    lo,
    hi,
    value: (run) => {
      const v = raw.get(run.id);
      return v === null || v === undefined ? null : toNumber(v);
    },
    position: (run) => {
      const v = raw.get(run.id);
      return v === null || v === undefined ? null : position(toNumber(v));
    },
    format,
    ticks: marks.map((m) => ({ at: position(m), label: format(m) })),
  };
}

/** Colours of the runs by a metric/param dimension (null: each run its own colour). */
export function colorsBy(dim, runs) {
  if (!dim) return new Map(runs.map((r) => [r.id, r.color]));
  return new Map(runs.map((r) => [r.id, scaleColor(dim.position(r))]));
}

/**
 * Parallel coordinates: one vertical axis per dimension, one <polyline class="pc-line"> per
 * run. Drag along an axis to brush a range: runs outside every brush fade.
 */
export function parallelCoordinates({ runs, dims, colors, width = 900, height = 340 }) {
  const pad = { left: 60, right: 60, top: 34, bottom: 42 };
  const plotH = height - pad.top - pad.bottom;
  const step = dims.length > 1 ? (width - pad.left - pad.right) / (dims.length - 1) : 0;
  const xOf = (i) => (dims.length > 1 ? pad.left + i * step : width / 2);
  const yOf = (p) => (p === null ? pad.top + plotH + 22 : pad.top + (1 - p) * plotH);
  const brushes = new Map(); // dim id -> [p0, p1] in [0, 1]
  const tolerance = 4 / plotH; // a brush ending within 4 px of a value holds it
  const lines = runs.map((run) => {
    const points = dims.map((d, i) => `${xOf(i).toFixed(1)},${yOf(d.position(run)).toFixed(1)}`).join(" ");
    return s(
      "polyline",
      { class: "pc-line", points, stroke: colors.get(run.id), fill: "none", dataset: { runId: run.id } },
      s("title", {}, `${run.name}\n${dims.map((d) => `${d.label}: ${fmt(d.value(run))}`).join("\n")}`),
    );
  });
  const applyBrushes = () => {
    runs.forEach((run, i) => {
      let inside = true;
      for (const [id, [p0, p1]] of brushes) {
        const p = dims.find((d) => d.id === id).position(run);
        if (p === null || p < p0 - tolerance || p > p1 + tolerance) inside = false;
      }
      lines[i].classList.toggle("faded", !inside);
    });
    svg.dataset.selected = String(lines.filter((l) => !l.classList.contains("faded")).length);
  };
  const axes = dims.map((d, i) => {
    const x = xOf(i);
    const brush = s("rect", { class: "pc-brush", x: x - 8, width: 16, y: 0, height: 0, hidden: true });
    const hit = s("rect", { class: "pc-hit", x: x - 10, y: pad.top, width: 20, height: plotH });
    let from = null;
    const pAt = (event) => {
      const box = svg.getBoundingClientRect();
      const y = ((event.clientY - box.top) / box.height) * height;
      return Math.min(1, Math.max(0, 1 - (y - pad.top) / plotH));
    };
    hit.addEventListener("mousedown", (event) => {
      event.preventDefault();
      from = pAt(event);
      const move = (e) => {
        const to = pAt(e);
        const [p0, p1] = [Math.min(from, to), Math.max(from, to)];
        brush.removeAttribute("hidden");
        brush.setAttribute("y", String(yOf(p1)));
        brush.setAttribute("height", String(Math.max(1, yOf(p0) - yOf(p1))));
        if (p1 - p0 > 0.005) brushes.set(d.id, [p0, p1]);
        else brushes.delete(d.id);
        applyBrushes();
      };
      const up = (e) => {
        window.removeEventListener("mousemove", move);
        window.removeEventListener("mouseup", up);
        move(e);
        if (!brushes.has(d.id)) brush.setAttribute("hidden", "");
      };
      window.addEventListener("mousemove", move);
      window.addEventListener("mouseup", up);
    });
    return s(
      "g",
      { class: "pc-axis", dataset: { dim: d.id, kind: d.kind } },
      s("line", { x1: x, x2: x, y1: pad.top, y2: pad.top + plotH, class: "pc-axis-line" }),
      d.ticks.map((t) =>
        s(
          "g",
          { class: "pc-tick" },
          s("line", { x1: x - 4, x2: x, y1: yOf(t.at), y2: yOf(t.at) }),
          s("text", { x: x - 6, y: yOf(t.at), "text-anchor": "end", "dominant-baseline": "middle" }, shorten(t.label, 12)),
        ),
      ),
      d.missing ? s("text", { x: x - 6, y: yOf(null), "text-anchor": "end", "dominant-baseline": "middle", class: "pc-missing" }, "n/a") : null,
      s(
        "text",
        { x, y: pad.top - 14, "text-anchor": "middle", class: "pc-label" },
        shorten(d.label, 22),
        s("title", {}, `${d.id} (${d.kind}${d.log ? ", log scale" : ""})`),
      ),
      brush,
      hit,
    );
  });
  const svg = s(
    "svg",
    {
      class: "pc",
      id: "parallel-coordinates",
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": "Parallel coordinates",
      dataset: { runs: runs.length, axes: dims.length, selected: runs.length },
      ondblclick: () => {
        brushes.clear();
        for (const b of svg.querySelectorAll(".pc-brush")) b.setAttribute("hidden", "");
        applyBrushes();
      },
    },
    s("g", { class: "pc-lines" }, lines),
    axes,
  );
  return svg;
}

/**
 * Scatter-plot matrix: k x k cells (<g class="spm-cell">); the diagonal names the dimension
 * and shows its distribution, every other cell plots row dimension against column dimension,
 * one <circle class="spm-dot"> per run having both values.
 */
export function scatterMatrix({ runs, dims, colors, cell = 150 }) {
  const pad = { left: 8, top: 8, gap: 6 };
  const size = dims.length * (cell + pad.gap) + pad.left;
  const inner = (p) => 6 + p * (cell - 12);
  const cells = [];
  dims.forEach((row, i) => {
    dims.forEach((col, j) => {
      const x = pad.left + j * (cell + pad.gap);
      const y = pad.top + i * (cell + pad.gap);
      const content = [s("rect", { class: "spm-frame", x: 0, y: 0, width: cell, height: cell })];
      if (i === j) {
        content.push(histogram(row, runs, cell));
        content.push(s("text", { class: "spm-label", x: cell / 2, y: 16, "text-anchor": "middle" }, shorten(row.label, 20), s("title", {}, row.id)));
        const range = row.kind === "numeric" ? `${row.format(row.lo)} – ${row.format(row.hi)}${row.log ? " (log)" : ""}` : row.levels.join(" · ");
        content.push(s("text", { class: "spm-range", x: cell / 2, y: 30, "text-anchor": "middle" }, shorten(range, 28)));
      } else {
        for (const run of runs) {
          const px = col.position(run);
          const py = row.position(run);
          if (px === null || py === null) continue;
          content.push(
            s(
              "circle",
              { class: "spm-dot", cx: inner(px).toFixed(1), cy: (cell - inner(py)).toFixed(1), r: 3.5, fill: colors.get(run.id), dataset: { runId: run.id } },
              s("title", {}, `${run.name}\n${col.label}: ${fmt(col.value(run))}\n${row.label}: ${fmt(row.value(run))}`),
            ),
          );
        }
      }
      cells.push(s("g", { class: "spm-cell", transform: `translate(${x},${y})`, dataset: { row: row.id, col: col.id } }, content));
    });
  });
  return s(
    "svg",
    { class: "spm", id: "scatter-matrix", viewBox: `0 0 ${size} ${size}`, width: size, height: size, role: "img", "aria-label": "Scatter-plot matrix", dataset: { dims: dims.length } },
    cells,
  );
}

function histogram(dim, runs, cell) {
  const bins = dim.kind === "categorical" ? Math.max(1, dim.levels.length) : 8;
  const counts = new Array(bins).fill(0);
  for (const run of runs) {
    const p = dim.position(run);
    if (p === null) continue;
    counts[Math.min(bins - 1, Math.round(p * (bins - 1)))]++;
  }
  const top = Math.max(1, ...counts);
  const w = (cell - 12) / bins;
  return s(
    "g",
    { class: "spm-hist" },
    counts.map((c, k) => {
      const hgt = (c / top) * (cell - 48);
      return s("rect", { x: 6 + k * w + 1, y: cell - 6 - hgt, width: Math.max(1, w - 2), height: hgt });
    }),
  );
}

function fmt(v) {
  if (v === null || v === undefined) return "n/a";
  return typeof v === "number" ? fmtNumber(v) : String(v);
}

function shorten(text, n) {
  const str = String(text);
  return str.length > n ? `${str.slice(0, n - 1)}…` : str;
}
