// Admin: role grants per principal. viewer / engineer / admin, tenant-wide or (viewer,
// engineer) narrowed to one experiment; grant and revoke.

import { api } from "../api.js";
import { h, mount } from "../dom.js";
import {
  confirmButton,
  fmtIso,
  grid,
  labelled,
  loadExperiments,
  loadPrincipals,
  messages,
  principalCell,
  principalNames,
  principalSelect, adminForm } from "./admin-common.js";

const ROLES = ["viewer", "engineer", "admin"];

export async function adminRolesPage() {
  const message = messages("roles-message");
  const body = h("tbody");
  const count = h("p", { class: "muted", id: "grants-status" });
  const [principals, experiments] = await Promise.all([loadPrincipals(), loadExperiments()]);
  const names = principalNames(principals);
  const experimentNames = new Map(experiments.map((e) => [e.experiment_id, e.name]));

  const filter = principalSelect("grants-filter", principals, { enabledOnly: false, empty: "every principal" });
  filter.required = false;
  filter.addEventListener("change", () => load().catch((err) => message.error(err)));

  let generation = 0; // a slower earlier answer (another filter) must not replace a newer one
  async function load() {
    const mine = ++generation;
    const { grants } = await api("/api/v1/grants", { query: { principal_id: filter.value || null } });
    if (mine !== generation) return;
    mount(body, grants.map(row));
    count.textContent = `${grants.length} grants`;
  }

  function row(g) {
    const scope = g.experiment_id
      ? h("span", {}, "experiment ", h("a", { href: `#/experiments/${encodeURIComponent(g.experiment_id)}` }, experimentNames.get(g.experiment_id) || g.experiment_id), h("div", { class: "mono muted" }, g.experiment_id))
      : h("span", {}, "whole tenant");
    return h(
      "tr",
      { dataset: { principalId: g.principal_id, role: g.role, experimentId: g.experiment_id || "" } },
      principalCell(names, g.principal_id),
      h("td", {}, h("span", { class: "tag" }, g.role)),
      h("td", {}, scope),
      h("td", {}, fmtIso(g.granted_at)),
      h("td", { class: "mono" }, g.granted_by),
      h(
        "td",
        {},
        confirmButton("Revoke", {
          className: "revoke-grant",
          action: async () => {
            message.clear();
            try {
              await api("/api/v1/grants", {
                method: "DELETE",
                query: { principal_id: g.principal_id, role: g.role, experiment_id: g.experiment_id || null },
              });
              message.ok(`Revoked ${g.role} from ${names.get(g.principal_id) || g.principal_id}.`);
              await load();
            } catch (err) {
              message.error(err);
            }
          },
        }),
      ),
    );
  }

  const who = principalSelect("grant-principal", principals);
  const role = h("select", { id: "grant-role", name: "role" }, ROLES.map((r) => h("option", { value: r }, r)));
  const experiment = h(
    "select",
    { id: "grant-experiment", name: "experiment_id" },
    h("option", { value: "" }, "whole tenant"),
    experiments.map((e) => h("option", { value: e.experiment_id }, `${e.name} · ${e.experiment_id}`)),
  );
  // The admin role is tenant-wide (the API says so too).
  role.addEventListener("change", () => {
    experiment.disabled = role.value === "admin";
    if (experiment.disabled) experiment.value = "";
  });
  const form = adminForm(
    "new-grant",
    message,
    async () => {
      const answer = await api("/api/v1/grants", {
        method: "POST",
        body: { principal_id: who.value, role: role.value, experiment_id: experiment.value || null },
      });
      const where = experiment.value ? `on experiment ${experimentNames.get(experiment.value) || experiment.value}` : "on the whole tenant";
      message.ok(answer.changed ? `Granted ${role.value} ${where}.` : `That grant existed already (${role.value} ${where}).`);
      await load();
    },
    h("h2", {}, "Grant a role"),
    h(
      "div",
      { class: "row wrap" },
      labelled("Principal", who),
      labelled("Role", role),
      labelled("Scope", experiment),
      h("button", { type: "submit", class: "primary" }, "Grant"),
    ),
    h("p", { class: "muted small" }, "viewer reads; engineer reads and writes; admin also manages users, keys, roles and policies (tenant-wide only)."),
  );

  await load();
  return {
    element: h(
      "div",
      {},
      h("h1", {}, "Roles"),
      form,
      message.element,
      h("div", { class: "toolbar" }, labelled("Show", filter, { class: "field inline" }), count),
      grid("grants", ["Principal", "Role", "Scope", "Granted", "By", ""], body),
    ),
  };
}
