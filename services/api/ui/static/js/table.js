// A virtualised table: only the rows in view (plus a margin) exist in the DOM, so 10,000 or
// 100,000 rows scroll as smoothly as 50. Rows have one fixed height; the body is a spacer of
// rows × height with the visible rows placed by transform. Columns: {id, label, width, value(row),
// render(row) -> Node|string, numeric, sortable (default true), header(table) -> Node}. The caller
// sorts; the header reports clicks. invalidate() re-renders the rows in view (e.g. after a
// selection changed outside the table).

import { h, mount } from "./dom.js";

const OVERSCAN = 8;

export class VirtualTable {
  constructor({ rowHeight = 28, onSort = null, onToggle = null, id = "runs-table" } = {}) {
    this.rowHeight = rowHeight;
    this.onSort = onSort;
    this.onToggle = onToggle;
    this.columns = [];
    this.rows = [];
    this.sort = { id: null, dir: 1 };
    this.head = h("div", { class: "vt-head", role: "row" });
    this.spacer = h("div", { class: "vt-spacer" });
    this.viewport = h("div", { class: "vt-viewport", role: "rowgroup" }, this.spacer);
    this.element = h("div", { class: "vt", id, role: "table" }, this.head, this.viewport);
    this.pool = [];
    this.frame = 0;
    this.viewport.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(this.viewport);
  }

  setColumns(columns) {
    this.columns = columns;
    const template = columns.map((c) => `${c.width || 120}px`).join(" ");
    this.template = template;
    this.totalWidth = columns.reduce((s, c) => s + (c.width || 120), 0);
    mount(
      this.head,
      columns.map((c) => {
        const arrow = this.sort.id === c.id ? (this.sort.dir > 0 ? " ▲" : " ▼") : "";
        const sortable = c.sortable !== false;
        return h(
          "div",
          {
            class: `vt-cell vt-th${c.numeric ? " num" : ""}${sortable ? "" : " vt-th-plain"}`,
            role: "columnheader",
            title: c.title || c.label,
            dataset: { col: c.id },
            "aria-sort": sortable ? (this.sort.id === c.id ? (this.sort.dir > 0 ? "ascending" : "descending") : "none") : null,
            onclick: sortable ? () => this.onSort && this.onSort(c.id) : null,
          },
          c.header ? c.header(this) : c.label + arrow,
        );
      }),
    );
    this.head.style.gridTemplateColumns = template;
    this.head.style.width = `${this.totalWidth}px`;
    this.spacer.style.width = `${this.totalWidth}px`;
    for (const el of this.pool) el.remove();
    this.pool = [];
    this.schedule();
  }

  setSort(id, dir) {
    this.sort = { id, dir };
    this.setColumns(this.columns);
  }

  setRows(rows) {
    this.rows = rows;
    this.spacer.style.height = `${rows.length * this.rowHeight}px`;
    this.element.dataset.rows = String(rows.length);
    this.schedule(true);
  }

  /** Re-render every row in view on the next frame, even those whose row object is unchanged. */
  invalidate() {
    for (const el of this.pool) el._row = null;
    this.schedule(true);
  }

  schedule(force = false) {
    if (force) this.lastFirst = -1;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render() {
    const started = performance.now();
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / this.rowHeight) - OVERSCAN);
    const slots = Math.ceil(height / this.rowHeight) + 2 * OVERSCAN;
    const count = Math.max(0, Math.min(this.rows.length - first, slots));
    while (this.pool.length < slots) {
      const el = h("div", { class: "vt-row", role: "row" });
      el.style.gridTemplateColumns = this.template;
      el.style.width = `${this.totalWidth}px`;
      el.style.height = `${this.rowHeight}px`;
      el.append(...this.columns.map((c) => h("div", { class: `vt-cell${c.numeric ? " num" : ""}`, role: "cell" })));
      this.spacer.append(el);
      this.pool.push(el);
    }
    // Row i always lives in slot i % slots: scrolling re-renders only the rows that came into
    // view, the others keep their DOM (and the browser its layout of them).
    const used = new Set();
    for (let index = first; index < first + count; index++) {
      const slot = index % slots;
      used.add(slot);
      const el = this.pool[slot];
      const row = this.rows[index];
      el.hidden = false;
      el.style.display = ""; // .vt-row's display: grid would otherwise beat [hidden]
      if (el._index === index && el._row === row) continue;
      el._index = index;
      el._row = row;
      el.dataset.index = String(index);
      el.dataset.runId = row.id;
      el.style.transform = `translateY(${index * this.rowHeight}px)`;
      el.classList.toggle("odd", index % 2 === 1);
      const cells = el.children;
      for (let c = 0; c < this.columns.length; c++) {
        const column = this.columns[c];
        const content = column.render ? column.render(row, this) : column.value(row);
        if (content instanceof Node) cells[c].replaceChildren(content);
        else cells[c].textContent = content ?? "";
      }
    }
    for (let slot = 0; slot < this.pool.length; slot++) {
      if (used.has(slot)) continue;
      const el = this.pool[slot];
      el.hidden = true;
      el.style.display = "none"; // an unused slot must not sit over row 0 and take its clicks
      el._index = -1;
      el.dataset.index = "";
    }
    this.element.dataset.rendered = String(count);
    this.element.dataset.renderMs = (performance.now() - started).toFixed(2);
  }

  destroy() {
    this.resize.disconnect();
    cancelAnimationFrame(this.frame);
  }
}
