// What the admin pages share: the section tabs, messages, a two-step confirm button, small
// loaders. No page of its own.

import { allPages, api } from "../api.js";
import { fmtTime, h } from "../dom.js";

export const SECTIONS = [
  ["users", "Users"],
  ["keys", "API keys"],
  ["roles", "Roles"],
  ["tagging", "Tagging policy"],
  ["retention", "Retention"],
  ["audit", "Audit log"],
  ["shares", "Shared experiments"],
];

/** The tabs above every admin page; the current one carries aria-current. */
export function adminTabs(current) {
  return h(
    "nav",
    { class: "admin-tabs", "aria-label": "Admin sections" },
    SECTIONS.map(([id, label]) =>
      h("a", { href: `#/admin/${id}`, "aria-current": id === current ? "page" : null, dataset: { section: id } }, label),
    ),
  );
}

/** What a caller without the admin role gets (the API refuses it anyway). */
export function notAllowed() {
  return h(
    "div",
    { id: "not-allowed", class: "error", role: "alert" },
    "Not allowed: the admin pages are for tenant admins. ",
    h("a", { href: "#/" }, "Experiments"),
  );
}

/**
 * A message line: error(err) shows the API's message as an alert, ok(text) a status line,
 * clear() hides it. `element` goes into the page.
 */
export function messages(id) {
  const element = h("div", { id, class: "admin-message", hidden: true });
  function show(kind, text) {
    element.className = `admin-message ${kind === "error" ? "error" : "admin-ok"}`;
    element.setAttribute("role", kind === "error" ? "alert" : "status");
    element.textContent = text;
    element.hidden = false;
  }
  return {
    element,
    error: (err) => show("error", err && err.message ? err.message : String(err)),
    ok: (text) => show("ok", text),
    clear: () => {
      element.hidden = true;
      element.textContent = "";
    },
  };
}

/**
 * A destructive action in two steps: the button first asks ("Revoke?" + Confirm / Cancel),
 * then runs `action`; no native dialog.
 */
export function confirmButton(label, { confirmLabel = `Yes, ${label.toLowerCase()}`, className = "", action }) {
  const wrap = h("span", { class: "confirm" });
  const first = h("button", { type: "button", class: `danger ${className}`.trim() }, label);
  function reset() {
    wrap.replaceChildren(first);
  }
  first.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger confirm-yes" }, confirmLabel);
    const no = h("button", { type: "button", class: "confirm-no" }, "Cancel");
    yes.addEventListener("click", async () => {
      yes.disabled = no.disabled = true;
      try {
        await action();
      } finally {
        reset();
      }
    });
    no.addEventListener("click", reset);
    wrap.replaceChildren(h("span", { class: "muted" }, "Sure? "), yes, no);
    yes.focus();
  });
  reset();
  return wrap;
}

/** An ISO date (as the admin API writes them) for a table cell. */
/** A card form (`id`) whose submit runs `action`: the page's `message` is cleared first and
 * shows the API's error if the action throws. */
export function adminForm(id, message, action, ...children) {
  const onsubmit = async (event) => {
    event.preventDefault();
    message.clear();
    try {
      await action();
    } catch (err) {
      message.error(err);
    }
  };
  return h("form", { id, class: "card admin-form", onsubmit }, ...children);
}

export function fmtIso(value) {
  if (!value) return "";
  const at = Date.parse(value);
  return Number.isNaN(at) ? String(value) : fmtTime(at);
}

export function labelled(text, control, attrs = {}) {
  return h("label", { class: "field", ...attrs }, h("span", {}, text), control);
}

export function grid(id, headers, body) {
  return h(
    "table",
    { class: "grid admin-grid", id },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    body,
  );
}

/** Users and service accounts of the tenant (GET /api/v1/principals). */
export async function loadPrincipals() {
  return (await api("/api/v1/principals")).principals;
}

/** "name (kind)" by principal id, for tables that only hold ids. */
export function principalNames(principals) {
  return new Map(principals.map((p) => [p.principal_id, `${p.name} (${p.kind === "user" ? "user" : "service account"})`]));
}

/** Principal with its name next to its id. */
export function principalCell(names, id) {
  const name = names.get(id);
  return h("td", {}, name ? [name, h("div", { class: "mono muted" }, id)] : h("span", { class: "mono" }, id));
}

/** A <select> of principals; `enabledOnly` leaves the disabled ones out. */
export function principalSelect(id, principals, { enabledOnly = true, empty = null } = {}) {
  return h(
    "select",
    { id, name: "principal_id", required: true },
    empty ? h("option", { value: "" }, empty) : null,
    principals
      .filter((p) => !enabledOnly || !p.disabled_at)
      .map((p) => h("option", { value: p.principal_id }, `${p.name} (${p.kind === "user" ? "user" : "service account"}) · ${p.principal_id}`)),
  );
}

/** The tenant's experiments (name and id), newest first, up to `limit`. */
export async function loadExperiments(limit = 2000) {
  return allPages("/api/v1/experiments", "experiments", { query: { page_size: 500 }, limit });
}
