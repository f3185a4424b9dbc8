// A line chart on a 2D canvas: several series (train/val overlays), step or relative-time x
// axis, EMA smoothing, log y scale, findings marked as vertical lines, drag-to-zoom (the
// owner re-fetches a finer window from the server) and double-click to zoom out.
//
// Series arrive already downsampled by the server (min/max per bucket keeps every spike).
// If a series still has more points than the canvas has pixels, it is reduced once more per
// pixel column (first, min, max, last), which draws the same picture at any size.
// After each draw the canvas carries data-points (vertices drawn), data-drawn-at
// (performance.now()) and, from the first draw with data on, data-first-data-at; the chart
// element dispatches "chart-drawn" (bubbling).

export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const PAD = { left: 64, right: 14, top: 10, bottom: 30 };

/** Exponential moving average, debiased (TensorBoard's smoothing); weight in [0, 1). */
export function smooth(values, weight) {
  if (!weight) return values;
  const out = new Float64Array(values.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) {
      out[i] = v;
      continue;
    }
    last = last * weight + (1 - weight) * v;
    n++;
    out[i] = last / (1 - Math.pow(weight, n));
  }
  return out;
}

/** Round tick positions covering [lo, hi]. */
export function ticks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

/** A tick's text, with enough significant digits to tell ticks `step` apart (1.9e+9 five
 * times is what a fixed precision gave for a memory gauge moving by a few MB). */
export function label(v, log, step = 0) {
  const x = log ? Math.pow(10, v) : v;
  const a = Math.abs(x);
  const needed = a > 0 && step > 0 && !log ? Math.floor(Math.log10(a)) - Math.floor(Math.log10(step)) + 1 : 0;
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(Math.min(14, Math.max(1, needed - 1)));
  return String(Number(x.toPrecision(Math.min(15, Math.max(4, needed)))));
}

function timeLabel(seconds) {
  if (seconds < 120) return `${Number(seconds.toPrecision(3))}s`;
  if (seconds < 7200) return `${Number((seconds / 60).toPrecision(3))}m`;
  return `${Number((seconds / 3600).toPrecision(3))}h`;
}

export class LineChart {
  constructor({ title, height = 240, onZoom = null } = {}) {
    this.options = { axis: "step", log: false, smoothing: 0 };
    this.series = [];
    this.markers = [];
    this.view = null; // [x0, x1] in x units when zoomed
    this.onZoom = onZoom;
    this.height = height;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "chart-canvas";
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", title);
    this.selection = document.createElement("div");
    this.selection.className = "chart-selection";
    this.selection.hidden = true;
    this.tooltip = document.createElement("div");
    this.tooltip.className = "chart-tooltip";
    this.tooltip.hidden = true;
    this.element = document.createElement("div");
    this.element.className = "chart";
    this.element.append(this.canvas, this.selection, this.tooltip);
    this.frame = 0;
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(this.element);
    this.listen();
  }

  setOptions(options) {
    Object.assign(this.options, options);
    this.schedule();
  }

  /** [{label, color, steps, timestamps (ms, or null), values}], arrays of equal length. */
  setSeries(series) {
    this.series = series.map((s, i) => ({ color: PALETTE[i % PALETTE.length], ...s }));
    this.schedule();
  }

  /** [{step, label, key}]: findings, drawn as vertical lines. */
  setMarkers(markers) {
    this.markers = markers;
    this.schedule();
  }

  setView(range) {
    this.view = range;
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  destroy() {
    this.resize.disconnect();
    cancelAnimationFrame(this.frame);
  }

  // -- coordinates ---------------------------------------------------------------------------

  origin() {
    let t0 = Infinity;
    for (const s of this.series) if (s.timestamps && s.timestamps.length) t0 = Math.min(t0, s.timestamps[0]);
    return Number.isFinite(t0) ? t0 : 0;
  }

  /** x values (steps, or seconds since the first point) of a series. */
  xs(s) {
    if (this.options.axis !== "time" || !s.timestamps) return s.steps;
    const t0 = this.origin();
    const out = new Float64Array(s.timestamps.length);
    for (let i = 0; i < out.length; i++) out[i] = (s.timestamps[i] - t0) / 1000;
    return out;
  }

  draw() {
    const started = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(200, this.element.clientWidth);
    const height = this.height;
    this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const plotW = width - PAD.left - PAD.right;
    const plotH = height - PAD.top - PAD.bottom;
    const { log, smoothing } = this.options;

    // Prepared series: x, y (log10 when log scale), smoothed y.
    const prepared = this.series.map((s) => {
      const x = this.xs(s);
      let y = s.values;
      if (log) {
        y = new Float64Array(s.values.length);
        for (let i = 0; i < y.length; i++) y[i] = s.values[i] > 0 ? Math.log10(s.values[i]) : NaN;
      }
      return { s, x, y, ys: smoothing ? smooth(y, smoothing) : y };
    });

    let [x0, x1] = this.view || [Infinity, -Infinity];
    if (!this.view) {
      for (const p of prepared) {
        if (p.x.length) {
          x0 = Math.min(x0, p.x[0]);
          x1 = Math.max(x1, p.x[p.x.length - 1]);
        }
      }
    }
    if (!Number.isFinite(x0)) [x0, x1] = [0, 1];
    if (x1 <= x0) [x0, x1] = [x0 - 1, x0 + 1];
    let y0 = Infinity;
    let y1 = -Infinity;
    let rawMax = -Infinity; // the largest value in view, as logged (spikes must survive)
    for (const p of prepared) {
      for (let i = 0; i < p.x.length; i++) {
        if (p.x[i] < x0 || p.x[i] > x1) continue;
        if (p.s.values[i] > rawMax) rawMax = p.s.values[i];
        const v = p.y[i];
        if (Number.isFinite(v)) {
          if (v < y0) y0 = v;
          if (v > y1) y1 = v;
        }
      }
    }
    if (!Number.isFinite(y0)) [y0, y1] = [0, 1];
    if (y1 <= y0) [y0, y1] = [y0 - (Math.abs(y0) * 0.1 || 1), y1 + (Math.abs(y1) * 0.1 || 1)];
    const margin = (y1 - y0) * 0.05;
    y0 -= margin;
    y1 += margin;
    const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * plotW;
    const py = (y) => PAD.top + (1 - (y - y0) / (y1 - y0)) * plotH;
    this.scale = { x0, x1, y0, y1, px, py, plotW, plotH, prepared };

    // Grid and axes.
    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#4b5563";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yTicks = ticks(y0, y1, 5);
    const yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 0;
    for (const t of yTicks) {
      const y = Math.round(py(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(PAD.left, y);
      ctx.lineTo(PAD.left + plotW, y);
      ctx.stroke();
      ctx.fillText(label(t, log, yStep), PAD.left - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const timeAxis = this.options.axis === "time";
    const xTicks = ticks(x0, x1, Math.max(2, Math.floor(plotW / 90)));
    const xStep = xTicks.length > 1 ? xTicks[1] - xTicks[0] : 0;
    for (const t of xTicks) {
      const x = Math.round(px(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, PAD.top);
      ctx.lineTo(x, PAD.top + plotH);
      ctx.stroke();
      ctx.fillText(timeAxis ? timeLabel(t) : label(t, false, xStep), x, PAD.top + plotH + 6);
    }
    ctx.strokeStyle = "#9ca3af";
    ctx.strokeRect(PAD.left + 0.5, PAD.top + 0.5, plotW, plotH);

    // Lines, clipped to the plot.
    ctx.save();
    ctx.beginPath();
    ctx.rect(PAD.left, PAD.top, plotW, plotH);
    ctx.clip();
    let drawn = 0;
    for (const p of prepared) {
      if (smoothing) drawn += this.line(ctx, p.x, p.y, px, py, x0, x1, p.s.color, 0.25, plotW);
      drawn += this.line(ctx, p.x, p.ys, px, py, x0, x1, p.s.color, 1, plotW);
    }
    // Findings: a dashed vertical line at their step.
    let markers = 0;
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "#dc2626";
    ctx.fillStyle = "#dc2626";
    for (const m of this.markers) {
      const x = this.markerX(m);
      if (x === null || x < x0 || x > x1) continue;
      const X = Math.round(px(x)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(X, PAD.top);
      ctx.lineTo(X, PAD.top + plotH);
      ctx.stroke();
      ctx.beginPath();
      ctx.moveTo(X - 5, PAD.top);
      ctx.lineTo(X + 5, PAD.top);
      ctx.lineTo(X, PAD.top + 8);
      ctx.fill();
      markers++;
    }
    ctx.restore();

    this.canvas.dataset.points = String(drawn);
    this.canvas.dataset.markers = String(markers);
    this.canvas.dataset.series = String(this.series.length);
    this.canvas.dataset.yMax = Number.isFinite(rawMax) ? String(rawMax) : "";
    this.canvas.dataset.drawMs = (performance.now() - started).toFixed(2);
    this.canvas.dataset.drawnAt = String(performance.now());
    if (drawn > 0 && !this.canvas.dataset.firstDataAt) this.canvas.dataset.firstDataAt = this.canvas.dataset.drawnAt;
    this.element.dispatchEvent(new CustomEvent("chart-drawn", { bubbles: true, detail: { points: drawn, markers } }));
  }

  markerX(m) {
    if (this.options.axis !== "time") return m.step;
    for (const s of this.series) {
      if (!s.timestamps) continue;
      const i = nearest(s.steps, m.step);
      if (i >= 0) return (s.timestamps[i] - this.origin()) / 1000;
    }
    return null;
  }

  /** Draw one polyline; returns the number of vertices drawn. */
  line(ctx, xs, ys, px, py, x0, x1, color, alpha, plotW) {
    let lo = Math.max(0, lowerBound(xs, x0) - 1);
    const hi = Math.min(xs.length, lowerBound(xs, x1) + 1);
    ctx.globalAlpha = alpha;
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([]);
    ctx.beginPath();
    let count = 0;
    let pen = false;
    const dense = hi - lo > plotW * 4;
    if (!dense) {
      for (let i = lo; i < hi; i++) {
        const y = ys[i];
        if (!Number.isFinite(y)) {
          pen = false;
          continue;
        }
        const X = px(xs[i]);
        const Y = py(y);
        if (pen) ctx.lineTo(X, Y);
        else ctx.moveTo(X, Y);
        pen = true;
        count++;
      }
    } else {
      // Per pixel column: first, min, max, last (every spike stays visible).
      while (lo < hi) {
        const column = Math.floor(px(xs[lo]));
        let first = NaN;
        let last = NaN;
        let min = Infinity;
        let max = -Infinity;
        let i = lo;
        for (; i < hi && Math.floor(px(xs[i])) === column; i++) {
          const y = ys[i];
          if (!Number.isFinite(y)) continue;
          if (Number.isNaN(first)) first = y;
          last = y;
          if (y < min) min = y;
          if (y > max) max = y;
        }
        lo = i;
        if (Number.isNaN(first)) {
          pen = false;
          continue;
        }
        for (const y of [first, min, max, last]) {
          if (pen) ctx.lineTo(column, py(y));
          else ctx.moveTo(column, py(y));
          pen = true;
          count++;
        }
      }
    }
    ctx.stroke();
    ctx.globalAlpha = 1;
    return count;
  }

  // -- interaction ---------------------------------------------------------------------------

  listen() {
    let start = null;
    const xAt = (event) => event.clientX - this.canvas.getBoundingClientRect().left;
    this.canvas.addEventListener("mousedown", (event) => {
      start = xAt(event);
      this.selection.hidden = false;
      this.selection.style.left = `${start}px`;
      this.selection.style.width = "0px";
    });
    window.addEventListener("mousemove", (event) => {
      if (start === null) return;
      const x = xAt(event);
      this.selection.style.left = `${Math.min(start, x)}px`;
      this.selection.style.width = `${Math.abs(x - start)}px`;
    });
    window.addEventListener("mouseup", (event) => {
      if (start === null) return;
      const end = xAt(event);
      this.selection.hidden = true;
      const [a, b] = [Math.min(start, end), Math.max(start, end)];
      start = null;
      if (b - a < 5 || !this.scale) return;
      const { x0, x1, plotW } = this.scale;
      const toX = (p) => x0 + ((p - PAD.left) / plotW) * (x1 - x0);
      this.zoomTo([Math.max(x0, toX(a)), Math.min(x1, toX(b))]);
    });
    this.canvas.addEventListener("dblclick", () => {
      this.view = null;
      if (this.onZoom) this.onZoom(null);
      this.schedule();
    });
    this.canvas.addEventListener("mousemove", (event) => this.hover(xAt(event)));
    this.canvas.addEventListener("mouseleave", () => {
      this.tooltip.hidden = true;
    });
  }

  /** Zoom to [x0, x1] (x units): the owner gets the step range to re-fetch. */
  zoomTo(range) {
    this.view = range;
    if (this.onZoom) this.onZoom({ x: range, steps: this.stepsOf(range) });
    this.schedule();
  }

  stepsOf([a, b]) {
    if (this.options.axis !== "time") return [Math.floor(a), Math.ceil(b)];
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of this.series) {
      const xs = this.xs(s);
      for (let i = 0; i < xs.length; i++) {
        if (xs[i] >= a && xs[i] <= b) {
          lo = Math.min(lo, s.steps[i]);
          hi = Math.max(hi, s.steps[i]);
        }
      }
    }
    return Number.isFinite(lo) ? [lo, hi] : null;
  }

  hover(x) {
    if (!this.scale) return;
    const { x0, x1, plotW, prepared } = this.scale;
    const at = x0 + ((x - PAD.left) / plotW) * (x1 - x0);
    const lines = [];
    for (const p of prepared) {
      const i = nearest(p.x, at);
      if (i < 0) continue;
      const v = p.s.values[i];
      lines.push(`${p.s.label}: ${typeof v === "number" ? Number(v.toPrecision(6)) : v} @ step ${p.s.steps[i]}`);
    }
    for (const m of this.markers) {
      const mx = this.markerX(m);
      if (mx !== null && Math.abs(this.scale.px(mx) - x) < 4) lines.push(`⚑ ${m.label}`);
    }
    if (!lines.length) return;
    this.tooltip.textContent = lines.join("\n");
    this.tooltip.style.left = `${Math.min(x + 12, this.element.clientWidth - 220)}px`;
    this.tooltip.hidden = false;
  }
}

function lowerBound(xs, x) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function nearest(xs, x) {
  if (!xs.length) return -1;
  const i = lowerBound(xs, x);
  if (i <= 0) return 0;
  if (i >= xs.length) return xs.length - 1;
  return x - xs[i - 1] <= xs[i] - x ? i - 1 : i;
}
