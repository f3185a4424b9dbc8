// Admin: the tenant's audit log, read-only. Newest first, a page at a time (the API's cursor),
// filtered by action prefix, actor and outcome; the filters live in the hash (#/admin/audit?...).

import { api } from "../api.js";
import { h, mount } from "../dom.js";
import { fmtIso, grid, labelled, loadPrincipals, messages } from "./admin-common.js";

const PAGE = 50;

/** Details as one short line: k=v, objects as JSON. */
export function detailText(details) {
  return Object.entries(details || {})
    .map(([k, v]) => `${k}=${v !== null && typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
}

export async function adminAuditPage() {
  const message = messages("audit-message");
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const action = h("input", { id: "audit-action", type: "search", placeholder: "e.g. key.", value: params.get("action") || "", size: 18 });
  const actor = h("input", { id: "audit-actor", type: "search", placeholder: "principal id", value: params.get("actor") || "", size: 22 });
  const outcome = h(
    "select",
    { id: "audit-outcome" },
    h("option", { value: "" }, "any"),
    h("option", { value: "ok" }, "ok"),
    h("option", { value: "denied" }, "denied"),
  );
  outcome.value = params.get("outcome") || "";
  const body = h("tbody");
  const status = h("p", { class: "muted", id: "audit-status" });
  const newer = h("button", { type: "button", id: "audit-newer" }, "← Newer");
  const older = h("button", { type: "button", id: "audit-older" }, "Older →");
  // cursors[i] is the cursor of page i (null: the newest page).
  let cursors = [null];
  let next = null;
  let generation = 0;
  // Names next to the actors' ids (actors of other tenants, e.g. a superadmin, stay ids).
  const names = new Map((await loadPrincipals()).map((p) => [p.principal_id, p.name]));

  function filters() {
    return { action: action.value.trim() || null, actor: actor.value.trim() || null, outcome: outcome.value || null };
  }

  async function load() {
    const mine = ++generation;
    const at = cursors.length - 1;
    try {
      const page = await api("/api/v1/audit", { query: { ...filters(), limit: PAGE, cursor: cursors[at] } });
      if (mine !== generation) return;
      message.clear();
      mount(body, page.entries.map(row));
      next = page.next_cursor;
      newer.disabled = at === 0;
      older.disabled = !next;
      status.textContent = page.entries.length
        ? `Page ${at + 1}: entries ${page.entries[0].seq} to ${page.entries[page.entries.length - 1].seq}${next ? "" : " (the oldest)"}`
        : "No audit entries match.";
    } catch (err) {
      if (mine === generation) message.error(err);
    }
  }

  function row(e) {
    return h(
      "tr",
      { dataset: { seq: e.seq, action: e.action, outcome: e.outcome } },
      h("td", { class: "mono" }, e.seq),
      h("td", { class: "nowrap" }, fmtIso(e.at)),
      h(
        "td",
        {},
        h("span", { class: "mono audit-actor" }, e.actor),
        names.has(e.actor) ? h("div", { class: "muted small" }, names.get(e.actor)) : null,
      ),
      h("td", { class: "mono audit-action" }, e.action),
      h("td", { class: "mono audit-target" }, e.target),
      h("td", {}, h("span", { class: `status status-${e.outcome === "ok" ? "finished" : "failed"}` }, e.outcome)),
      h("td", { class: "mono audit-source" }, e.source),
      h("td", { class: "mono small audit-details" }, detailText(e.details)),
    );
  }

  function apply(event) {
    if (event) event.preventDefault();
    const query = new URLSearchParams(Object.entries(filters()).filter(([, v]) => v));
    history.replaceState(null, "", `#/admin/audit${query.toString() ? `?${query}` : ""}`);
    cursors = [null];
    load();
  }

  newer.addEventListener("click", () => {
    if (cursors.length > 1) cursors.pop();
    load();
  });
  older.addEventListener("click", () => {
    if (!next) return;
    cursors.push(next);
    load();
  });
  outcome.addEventListener("change", () => apply());

  await load();
  return {
    element: h(
      "div",
      {},
      h("h1", {}, "Audit log"),
      h("p", { class: "muted" }, "Every admin change and every refused request of this tenant, newest first. Entries are never changed or deleted."),
      h(
        "form",
        { id: "audit-filter", class: "toolbar", onsubmit: apply },
        labelled("Action starts with", action, { class: "field inline" }),
        labelled("Actor", actor, { class: "field inline" }),
        labelled("Outcome", outcome, { class: "field inline" }),
        h("button", { type: "submit" }, "Filter"),
      ),
      message.element,
      status,
      grid("audit", ["#", "When", "Who", "What", "Target", "Outcome", "From", "Details"], body),
      h("div", { class: "row pager" }, newer, older),
    ),
  };
}
