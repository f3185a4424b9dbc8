// The lineage graph as a small SVG, drawn here (no library): datasets, runs and models as
// boxes in columns (upstream to the left of the root, downstream to the right), edges as
// curves with their relation as a label. Runs other than the root link to their pages.

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 190;
const NODE_H = 42;
const COL_GAP = 120; // room for an edge label between columns
const ROW_GAP = 18;
const PAD = 12;
const MAX_LABEL = 24;
export const MAX_DRAWN_NODES = 300;

let ids = 0; // unique marker ids when several graphs share a document

/** An SVG element: attributes as strings (on* functions become listeners). */
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function nodeKey(kind, id) {
  return `${kind}\u0000${id}`;
}

function shorten(text, max = MAX_LABEL) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * Columns and rows of a graph {root, nodes, edges}: the root in column 0, what it derives from
 * at negative columns, what derives from it at positive ones (breadth first from the root;
 * an edge a -> b puts b one column right of a). Rows order each column by the mean row of
 * its already placed neighbours (fewer crossings), then kind and label.
 * Returns {nodes: [{key, kind, id, label, col, row, x, y, root}], edges, width, height}.
 */
export function layoutLineage(graph, maxNodes = MAX_DRAWN_NODES) {
  const nodes = new Map();
  for (const n of graph.nodes.slice(0, maxNodes)) nodes.set(nodeKey(n.kind, n.id), { ...n, key: nodeKey(n.kind, n.id) });
  const rootKey = nodeKey(graph.root.kind, graph.root.id);
  const edges = graph.edges
    .map((e) => ({ ...e, from: nodeKey(e.source_kind, e.source_id), to: nodeKey(e.target_kind, e.target_id) }))
    .filter((e) => nodes.has(e.from) && nodes.has(e.to) && e.from !== e.to);
  const out = new Map();
  const inc = new Map();
  for (const e of edges) {
    if (!out.has(e.from)) out.set(e.from, []);
    if (!inc.has(e.to)) inc.set(e.to, []);
    out.get(e.from).push(e.to);
    inc.get(e.to).push(e.from);
  }
  const col = new Map();
  const queue = [];
  if (nodes.has(rootKey)) {
    col.set(rootKey, 0);
    queue.push(rootKey);
  }
  while (queue.length) {
    const key = queue.shift();
    for (const next of out.get(key) || []) {
      if (!col.has(next)) {
        col.set(next, col.get(key) + 1);
        queue.push(next);
      }
    }
    for (const prev of inc.get(key) || []) {
      if (!col.has(prev)) {
        col.set(prev, col.get(key) - 1);
        queue.push(prev);
      }
    }
  }
  let spare = Math.max(0, ...col.values()) + 1;
  for (const key of nodes.keys()) if (!col.has(key)) col.set(key, spare++); // unreachable: far right
  const columns = new Map();
  for (const [key, c] of col) {
    if (!columns.has(c)) columns.set(c, []);
    columns.get(c).push(nodes.get(key));
  }
  const order = [...columns.keys()].sort((a, b) => Math.abs(a) - Math.abs(b) || a - b); // outward from the root
  const row = new Map();
  const kindRank = { dataset: 0, run: 1, model: 2 };
  for (const c of order) {
    const members = columns.get(c);
    const score = (n) => {
      const placed = [...(out.get(n.key) || []), ...(inc.get(n.key) || [])].filter((k) => row.has(k));
      return placed.length ? placed.reduce((sum, k) => sum + row.get(k), 0) / placed.length : Infinity;
    };
    members.sort(
      (a, b) =>
        score(a) - score(b) ||
        (kindRank[a.kind] ?? 3) - (kindRank[b.kind] ?? 3) ||
        String(a.label || a.id).localeCompare(String(b.label || b.id)),
    );
    members.forEach((n, i) => row.set(n.key, i));
  }
  const minCol = Math.min(...order);
  const maxCol = Math.max(...order);
  const tallest = Math.max(...[...columns.values()].map((m) => m.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
  const placed = [];
  for (const [c, members] of columns) {
    const top = PAD + ((tallest - members.length) * (NODE_H + ROW_GAP)) / 2; // centre each column
    for (const n of members) {
      placed.push({
        ...n,
        col: c,
        row: row.get(n.key),
        x: PAD + (c - minCol) * (NODE_W + COL_GAP),
        y: top + row.get(n.key) * (NODE_H + ROW_GAP),
        root: n.key === rootKey,
      });
    }
  }
  const width = PAD * 2 + (maxCol - minCol + 1) * NODE_W + (maxCol - minCol) * COL_GAP;
  return { nodes: placed, edges, width, height };
}

function subtitle(n) {
  const d = n.details || {};
  if (n.kind === "run") return ["run", d.status].filter(Boolean).join(" · ");
  if (n.kind === "dataset") return ["dataset", d.version ? `v${d.version}` : null].filter(Boolean).join(" · ");
  if (n.kind === "model") return ["model", d.stage && d.stage !== "None" ? d.stage : null].filter(Boolean).join(" · ");
  return n.kind;
}

/** The SVG of a graph {root, nodes, edges} from GET /api/v1/lineage/{kind}/{id}. */
export function lineageSvg(graph) {
  const layout = layoutLineage(graph);
  const marker = `lineage-arrow-${++ids}`;
  const at = new Map(layout.nodes.map((n) => [n.key, n]));
  const edgeEls = layout.edges.map((e) => {
    const a = at.get(e.from);
    const b = at.get(e.to);
    let d;
    let lx;
    let ly;
    if (b.col > a.col) {
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x;
      const y2 = b.y + NODE_H / 2;
      const bend = Math.max(30, (x2 - x1) / 2);
      d = `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
      lx = (x1 + x2) / 2;
      ly = (y1 + y2) / 2 - 4;
    } else {
      // Same column or backwards (siblings of a "both" walk): a loop over the boxes' tops.
      const x1 = a.x + NODE_W / 2;
      const y1 = a.y;
      const x2 = b.x + NODE_W / 2 + (a === b ? 20 : 0);
      const y2 = b.y;
      const lift = 30 + Math.abs(x2 - x1) / 4;
      const top = Math.min(y1, y2) - lift;
      d = `M${x1},${y1} C${x1},${top} ${x2},${top} ${x2},${y2}`;
      lx = (x1 + x2) / 2;
      ly = top + lift / 4;
    }
    return s(
      "g",
      {
        class: "lineage-edge",
        "data-source": e.from.replace("\u0000", ":"),
        "data-target": e.to.replace("\u0000", ":"),
        "data-relation": e.relation,
      },
      s("path", { d, "marker-end": `url(#${marker})` }),
      s("text", { x: lx, y: ly, "text-anchor": "middle", class: "lineage-edge-label" }, e.relation),
    );
  });
  const nodeEls = layout.nodes.map((n) => {
    const label = String(n.label || n.id);
    const box = s(
      "g",
      {
        class: `lineage-node lineage-${n.kind}${n.root ? " lineage-root" : ""}`,
        transform: `translate(${n.x},${n.y})`,
        "data-kind": n.kind,
        "data-id": n.id,
        "data-depth": n.depth,
      },
      s("title", {}, `${n.kind} ${n.id}${n.label && n.label !== n.id ? ` (${n.label})` : ""}`),
      s("rect", { width: NODE_W, height: NODE_H, rx: 6, ry: 6 }),
      s("text", { x: 10, y: 17, class: "lineage-label" }, shorten(label)),
      s("text", { x: 10, y: 33, class: "lineage-sub" }, shorten(subtitle(n), 30)),
    );
    if (n.kind === "run" && !n.root) {
      return s("a", { href: `#/runs/${encodeURIComponent(n.id)}`, class: "lineage-link", "data-run-id": n.id }, box);
    }
    return box;
  });
  return s(
    "svg",
    {
      class: "lineage-svg",
      width: layout.width,
      height: layout.height + 24,
      viewBox: `0 -24 ${layout.width} ${layout.height + 24}`,
      role: "img",
      "aria-label": `lineage of ${graph.root.kind} ${graph.root.id}`,
      "data-nodes": layout.nodes.length,
      "data-edges": layout.edges.length,
    },
    s(
      "defs",
      {},
      s(
        "marker",
        { id: marker, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "lineage-arrow" }),
      ),
    ),
    edgeEls,
    nodeEls,
  );
}
