// Admin: users and service accounts of the tenant. List with their roles, create, disable
// (a disabled principal's keys stop working; the API has no re-enable).

import { api, me } from "../api.js";
import { h, mount } from "../dom.js";
import { confirmButton, fmtIso, grid, labelled, loadPrincipals, messages, adminForm } from "./admin-common.js";

export async function adminUsersPage() {
  const message = messages("users-message");
  const body = h("tbody");
  const count = h("p", { class: "muted", id: "users-status" });

  async function load() {
    const principals = await loadPrincipals();
    mount(body, principals.map(row));
    count.textContent = `${principals.length} principals`;
  }

  function row(p) {
    const self = me() && me().principal_id === p.principal_id;
    const roles = (p.roles || []).map((r) =>
      h("span", { class: "tag" }, r.experiment_id ? `${r.role} on ${r.experiment_id}` : r.role),
    );
    let action = null;
    if (!p.disabled_at && !self) {
      action = confirmButton("Disable", {
        className: "disable-principal",
        action: async () => {
          message.clear();
          try {
            await api(`/api/v1/principals/${encodeURIComponent(p.principal_id)}/disable`, { method: "POST" });
            message.ok(`Disabled ${p.name}: none of its keys is accepted any more.`);
            await load();
          } catch (err) {
            message.error(err);
          }
        },
      });
    }
    return h(
      "tr",
      { dataset: { principalId: p.principal_id, name: p.name, kind: p.kind } },
      h("td", {}, p.name, self ? h("span", { class: "muted" }, " (you)") : null),
      h("td", {}, p.kind === "user" ? "user" : "service account"),
      h("td", { class: "mono" }, p.principal_id),
      h("td", {}, roles.length ? roles : h("span", { class: "muted" }, "no role")),
      h("td", {}, fmtIso(p.created_at)),
      h(
        "td",
        { class: "principal-state" },
        p.disabled_at ? h("span", { class: "status status-failed" }, `disabled ${fmtIso(p.disabled_at)}`) : "active",
      ),
      h("td", {}, action),
    );
  }

  const kind = h(
    "select",
    { id: "new-principal-kind", name: "kind" },
    h("option", { value: "user" }, "user"),
    h("option", { value: "service_account" }, "service account"),
  );
  const name = h("input", { id: "new-principal-name", name: "name", required: true, maxlength: 200, placeholder: "name", size: 28 });
  const form = adminForm(
    "new-principal",
    message,
    async () => {
      const created = await api("/api/v1/principals", {
        method: "POST",
        body: { kind: kind.value, name: name.value.trim() },
      });
      name.value = "";
      message.ok(`Created ${created.name} (${created.principal_id}). It has no role yet: grant one under Roles, and give it a key under API keys.`);
      await load();
    },
    h("h2", {}, "New user or service account"),
    h("div", { class: "row wrap" }, labelled("Kind", kind), labelled("Name", name), h("button", { type: "submit", class: "primary" }, "Create")),
  );

  await load();
  return {
    element: h(
      "div",
      {},
      h("h1", {}, "Users and service accounts"),
      form,
      message.element,
      count,
      grid("principals", ["Name", "Kind", "Id", "Roles", "Created", "State", ""], body),
    ),
  };
}
