// The run page's artifact browser: the run's files as a tree (directories load when opened),
// a preview of the chosen file and a download link for every file. Previews read at most a
// few hundred KiB through a `Range` request (the download route answers 206), so a
// multi-gigabyte checkpoint is never fetched to show its first lines.

import { api } from "../api.js";
import { errorBox, h, mount } from "../dom.js";

export const TEXT_PREVIEW_BYTES = 64 * 1024;
export const STRUCTURED_PREVIEW_BYTES = 1024 * 1024; // JSON is parsed only when whole
export const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
const MAX_ENTRIES = 1000; // per directory
const CSV_ROWS = 50;
const CSV_COLS = 40;
const JSON_NODES = 3000;

const IMAGE = new Set(["png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico"]);
const TEXT = new Set([
  "txt", "log", "md", "rst", "py", "yaml", "yml", "toml", "ini", "cfg", "conf", "sh", "patch", "diff",
  "xml", "html", "js", "ts", "sql", "r", "out", "err", "jsonl", "ndjson", "properties", "env", "requirements",
]);

export function artifactUrl(runId, path) {
  const rel = path.split("/").map(encodeURIComponent).join("/");
  return `/api/v1/runs/${encodeURIComponent(runId)}/artifacts/${rel}`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

/** How a file is previewed: image, json, csv, tsv, text or none (by extension, then media type). */
export function previewKind(path, mediaType = "") {
  const name = path.split("/").pop().toLowerCase();
  const ext = name.includes(".") ? name.split(".").pop() : "";
  if (IMAGE.has(ext)) return "image";
  if (ext === "json" || ext === "ipynb") return "json";
  if (ext === "csv") return "csv";
  if (ext === "tsv") return "tsv";
  if (TEXT.has(ext) || name === "dockerfile" || name === "makefile" || name === "mlmodel") return "text";
  const type = (mediaType || "").toLowerCase();
  if (type.startsWith("image/")) return "image";
  if (type.includes("json")) return "json";
  if (type === "text/csv") return "csv";
  if (type.startsWith("text/") || type.includes("yaml") || type.includes("xml")) return "text";
  return "text-sniff"; // unknown: shown as text when the first bytes look like text
}

/** Rows of CSV/TSV text (RFC 4180 quotes); a cut last line is dropped when `truncated`. */
export function parseDelimited(text, delimiter = ",", maxRows = CSV_ROWS + 1) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  let i = 0;
  let lineStart = 0;
  while (i < text.length && rows.length < maxRows) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 2;
        continue;
      }
      if (c === '"') quoted = false;
      else field += c;
      i++;
      continue;
    }
    if (c === '"' && field === "") quoted = true;
    else if (c === delimiter) {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
      if (c === "\r" && text[i + 1] === "\n") i++;
      lineStart = i + 1;
    } else field += c;
    i++;
  }
  const complete = i >= text.length;
  if (complete && (field !== "" || row.length)) {
    row.push(field);
    rows.push(row);
  }
  return { rows, complete, consumed: complete ? text.length : lineStart };
}

/** The first `limit` bytes of a file (a Range request), its total size and whether that is all. */
export async function fetchHead(url, size, limit) {
  if (size === 0) return { bytes: new Uint8Array(0), total: 0, complete: true };
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Range: `bytes=0-${limit - 1}` },
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  // A server that ignored the range sends it all: read only `limit` bytes, then cancel.
  const reader = response.body.getReader();
  const chunks = [];
  let got = 0;
  while (got < limit) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
  }
  if (got >= limit) reader.cancel().catch(() => null);
  const bytes = new Uint8Array(Math.min(got, limit));
  let at = 0;
  for (const c of chunks) {
    const part = c.subarray(0, Math.min(c.length, bytes.length - at));
    bytes.set(part, at);
    at += part.length;
    if (at >= bytes.length) break;
  }
  const range = response.headers.get("content-range"); // bytes a-b/total
  const total = range && /\/(\d+)$/.test(range) ? Number(range.match(/\/(\d+)$/)[1]) : (size ?? bytes.length);
  return { bytes, total, complete: bytes.length >= total };
}

function looksBinary(bytes) {
  const n = Math.min(bytes.length, 4096);
  for (let i = 0; i < n; i++) if (bytes[i] === 0) return true;
  return false;
}

function decode(bytes) {
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

// --- previews ----------------------------------------------------------------------------------

function jsonNode(key, value, depth, budget) {
  if (budget.left-- <= 0) return h("div", { class: "json-more muted" }, "…");
  const keyPart = key === null ? null : h("span", { class: "json-key" }, `${JSON.stringify(key)}: `);
  if (value !== null && typeof value === "object") {
    const isArray = Array.isArray(value);
    const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
    const summary = isArray ? `[${entries.length}]` : `{${entries.length}}`;
    if (!entries.length) return h("div", { class: "json-line" }, keyPart, isArray ? "[]" : "{}");
    return h(
      "details",
      { class: "json-node", open: depth < 2 },
      h("summary", {}, keyPart, h("span", { class: "muted" }, summary)),
      h(
        "div",
        { class: "json-children" },
        entries.map(([k, v]) => jsonNode(isArray ? null : k, v, depth + 1, budget)),
      ),
    );
  }
  const type = value === null ? "null" : typeof value;
  return h("div", { class: "json-line" }, keyPart, h("span", { class: `json-${type}` }, JSON.stringify(value)));
}

function jsonPreview(text) {
  const value = JSON.parse(text);
  const budget = { left: JSON_NODES };
  return [
    h("div", { class: "json-tree mono", dataset: { preview: "json" } }, jsonNode(null, value, 0, budget)),
    budget.left < 0 ? h("p", { class: "muted small" }, `Only the first ${JSON_NODES} values are shown.`) : null,
  ];
}

function tablePreview(text, delimiter, truncated) {
  const { rows, complete } = parseDelimited(text, delimiter);
  const shown = rows.slice(0, CSV_ROWS + 1);
  if (truncated && complete && shown.length > 1) shown.pop(); // the cut line
  const [head = [], ...body] = shown;
  const cols = Math.min(CSV_COLS, Math.max(head.length, ...body.map((r) => r.length)));
  const cells = (r, tag) => Array.from({ length: cols }, (_, i) => h(tag, {}, r[i] ?? ""));
  return [
    h(
      "div",
      { class: "csv-wrap" },
      h(
        "table",
        { class: "grid csv-table mono", dataset: { preview: delimiter === "\t" ? "tsv" : "csv" } },
        h("thead", {}, h("tr", {}, cells(head, "th"))),
        h("tbody", {}, body.map((r) => h("tr", {}, cells(r, "td")))),
      ),
    ),
    h(
      "p",
      { class: "muted small" },
      `${body.length} row${body.length === 1 ? "" : "s"} shown${!complete || truncated ? " (the first of more)" : ""}`,
    ),
  ];
}

function textPreview(text) {
  return h("pre", { class: "artifact-text mono", dataset: { preview: "text" } }, text);
}

// --- the browser -------------------------------------------------------------------------------

/** The artifact browser of a run: {element, open(path)} (open previews a file by its path). */
export function artifactBrowser(runId) {
  const tree = h(
    "div",
    { class: "artifact-tree", id: "artifact-tree", role: "tree" },
    h("p", { class: "muted" }, "Loading artifacts…"),
  );
  const preview = h(
    "div",
    { class: "artifact-preview card", id: "artifact-preview" },
    h("p", { class: "muted" }, "Choose a file to preview it."),
  );
  const element = h("div", { class: "artifact-browser", id: "artifacts" }, tree, preview);
  const files = new Map(); // path -> entry
  let selected = null;
  let generation = 0;

  async function listing(path) {
    const body = await api(`/api/v1/runs/${encodeURIComponent(runId)}/artifacts`, { query: { path } });
    const entries = body.files.slice().sort((a, b) => Number(b.is_dir) - Number(a.is_dir) || a.path.localeCompare(b.path));
    return entries;
  }

  function entryRow(entry, depth) {
    const name = entry.path.split("/").pop();
    if (entry.is_dir) {
      const children = h("div", { class: "artifact-children", hidden: true });
      let loaded = false;
      const toggle = h(
        "button",
        {
          type: "button",
          class: "artifact-dir",
          "aria-expanded": "false",
          onclick: async () => {
            const open = toggle.getAttribute("aria-expanded") !== "true";
            toggle.setAttribute("aria-expanded", String(open));
            toggle.firstChild.textContent = open ? "▾ " : "▸ ";
            children.hidden = !open;
            if (open && !loaded) {
              loaded = true;
              mount(children, h("p", { class: "muted small" }, "Loading…"));
              try {
                mount(children, rows(await listing(entry.path), depth + 1));
              } catch (err) {
                loaded = false;
                mount(children, errorBox(err));
              }
            }
          },
        },
        h("span", { class: "twisty" }, "▸ "),
        `${name}/`,
      );
      return h(
        "div",
        { class: "artifact-entry", role: "treeitem", dataset: { path: entry.path, kind: "dir" } },
        h("div", { class: "artifact-line", style: { paddingLeft: `${depth * 14}px` } }, toggle),
        children,
      );
    }
    files.set(entry.path, entry);
    return h(
      "div",
      { class: "artifact-entry", role: "treeitem", dataset: { path: entry.path, kind: "file", size: entry.file_size ?? "" } },
      h(
        "div",
        { class: "artifact-line", style: { paddingLeft: `${depth * 14}px` } },
        h("button", { type: "button", class: "artifact-file", title: entry.path, onclick: () => open(entry.path) }, name),
        h("span", { class: "muted small artifact-size" }, fmtBytes(entry.file_size)),
        h(
          "a",
          { class: "small artifact-download", href: artifactUrl(runId, entry.path), download: name, title: `Download ${entry.path}` },
          "download",
        ),
      ),
    );
  }

  function rows(entries, depth) {
    if (!entries.length) return h("p", { class: "muted small" }, "Empty.");
    return [
      entries.slice(0, MAX_ENTRIES).map((e) => entryRow(e, depth)),
      entries.length > MAX_ENTRIES ? h("p", { class: "muted small" }, `The first ${MAX_ENTRIES} of ${entries.length} entries.`) : null,
    ];
  }

  async function open(path) {
    const mine = ++generation;
    selected = path;
    for (const el of tree.querySelectorAll(".artifact-entry.selected")) el.classList.remove("selected");
    for (const el of tree.querySelectorAll(".artifact-entry[data-kind=file]")) if (el.dataset.path === path) el.classList.add("selected");
    let entry = files.get(path);
    if (!entry) {
      // Not listed yet (e.g. the code diff, linked from elsewhere): its directory's listing has it.
      const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
      try {
        entry = (await listing(dir)).find((e) => e.path === path && !e.is_dir);
      } catch {
        entry = null;
      }
      if (!entry) entry = { path, is_dir: false, file_size: null, media_type: "" };
    }
    const url = artifactUrl(runId, path);
    const name = path.split("/").pop();
    const kind = previewKind(path, entry.media_type);
    const body = h("div", { class: "artifact-preview-body" }, h("p", { class: "muted" }, "Loading preview…"));
    preview.dataset.path = path;
    preview.dataset.loaded = "false";
    delete preview.dataset.preview;
    delete preview.dataset.truncated;
    mount(
      preview,
      h(
        "div",
        { class: "artifact-preview-head" },
        h("strong", { class: "mono" }, path),
        h("span", { class: "muted small" }, [fmtBytes(entry.file_size), entry.media_type].filter(Boolean).join(" · ")),
        h("a", { href: url, download: name, class: "artifact-preview-download" }, "Download"),
      ),
      body,
    );
    const done = (shown, truncated = false, note = null, content = null) => {
      if (mine !== generation) return;
      preview.dataset.preview = shown;
      preview.dataset.truncated = String(truncated);
      preview.dataset.loaded = "true";
      mount(body, note ? h("p", { class: "muted small artifact-note" }, note) : null, content);
    };
    try {
      if (kind === "image") {
        if (entry.file_size !== null && entry.file_size > MAX_IMAGE_BYTES) {
          done("none", true, `A ${fmtBytes(entry.file_size)} image is not previewed; download it.`);
          return;
        }
        const img = h("img", { class: "artifact-image", src: url, alt: path });
        const dimensions = h("p", { class: "muted small artifact-note" });
        img.addEventListener("load", () => {
          if (mine !== generation) return;
          dimensions.textContent = `${img.naturalWidth} × ${img.naturalHeight} px`;
          preview.dataset.loaded = "true";
        });
        img.addEventListener("error", () => {
          if (mine === generation) mount(body, errorBox(new Error(`the image ${path} cannot be shown`)));
        });
        preview.dataset.preview = "image";
        preview.dataset.truncated = "false";
        mount(body, img, dimensions);
        return;
      }
      const limit = kind === "json" || kind === "csv" || kind === "tsv" ? STRUCTURED_PREVIEW_BYTES : TEXT_PREVIEW_BYTES;
      const head = await fetchHead(url, entry.file_size, limit);
      if (mine !== generation) return;
      const cut = head.complete ? null : `The first ${fmtBytes(head.bytes.length)} of ${fmtBytes(head.total)}.`;
      if (looksBinary(head.bytes)) {
        done("none", !head.complete, `Binary file (${fmtBytes(head.total)}): no preview; download it.`);
        return;
      }
      const text = decode(head.bytes);
      if (kind === "json" && head.complete) {
        try {
          done("json", false, null, jsonPreview(text));
          return;
        } catch (err) {
          done("text", false, `Not valid JSON (${err.message}); shown as text.`, textPreview(text.slice(0, TEXT_PREVIEW_BYTES)));
          return;
        }
      }
      if (kind === "csv" || kind === "tsv") {
        done(kind, !head.complete, cut, tablePreview(text, kind === "tsv" ? "\t" : ",", !head.complete));
        return;
      }
      const shown = text.length > TEXT_PREVIEW_BYTES ? text.slice(0, TEXT_PREVIEW_BYTES) : text;
      const truncated = !head.complete || shown.length < text.length;
      let note = null;
      if (kind === "json") note = `Too large to format: the first ${fmtBytes(TEXT_PREVIEW_BYTES)} as text.`;
      else if (truncated) note = cut || `The first ${fmtBytes(TEXT_PREVIEW_BYTES)}.`;
      done("text", truncated, note, textPreview(shown));
    } catch (err) {
      if (mine === generation) {
        preview.dataset.loaded = "true";
        preview.dataset.preview = "error";
        mount(body, errorBox(err));
      }
    }
  }

  listing("")
    .then((entries) => {
      mount(tree, rows(entries, 0));
      tree.dataset.loaded = "true";
    })
    .catch((err) => mount(tree, errorBox(err)));

  return { element, open, selected: () => selected };
}
