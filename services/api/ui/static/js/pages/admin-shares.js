// Admin: federated sharing. Experiments this tenant shares read-only with other tenants
// (share, withdraw), and those other tenants share with it.

import { api } from "../api.js";
import { h, mount } from "../dom.js";
import { confirmButton, fmtIso, grid, labelled, loadExperiments, messages, adminForm } from "./admin-common.js";

export async function adminSharesPage() {
  const message = messages("shares-message");
  const outgoing = h("tbody");
  const incoming = h("tbody");
  const experiments = (await loadExperiments()).filter((e) => e.experiment_id !== "0"); // Default cannot be shared

  async function load() {
    const shares = await api("/api/v1/shares");
    mount(outgoing, shares.outgoing.length ? shares.outgoing.map(outRow) : empty(4, "This tenant shares no experiment."));
    mount(incoming, shares.incoming.length ? shares.incoming.map(inRow) : empty(3, "No experiment is shared with this tenant."));
  }

  function empty(span, text) {
    return h("tr", { class: "empty" }, h("td", { colspan: span, class: "muted" }, text));
  }

  function experimentCell(s, link) {
    return h(
      "td",
      {},
      link ? h("a", { href: `#/experiments/${encodeURIComponent(s.experiment_id)}` }, s.experiment_name || s.experiment_id) : s.experiment_name || s.experiment_id,
      h("div", { class: "mono muted" }, s.experiment_id),
    );
  }

  function outRow(s) {
    return h(
      "tr",
      { dataset: { experimentId: s.experiment_id, grantee: s.grantee_tenant } },
      experimentCell(s, true),
      h("td", { class: "mono" }, s.grantee_tenant),
      h("td", {}, fmtIso(s.created_at)),
      h(
        "td",
        {},
        confirmButton("Withdraw", {
          className: "unshare",
          action: async () => {
            message.clear();
            try {
              await api(`/api/v1/shares/${encodeURIComponent(s.experiment_id)}/${encodeURIComponent(s.grantee_tenant)}`, { method: "DELETE" });
              message.ok(`Withdrew the share of ${s.experiment_name || s.experiment_id} with ${s.grantee_tenant}.`);
              await load();
            } catch (err) {
              message.error(err);
            }
          },
        }),
      ),
    );
  }

  function inRow(s) {
    return h(
      "tr",
      { dataset: { experimentId: s.experiment_id, owner: s.owner_tenant } },
      experimentCell(s, false),
      h("td", { class: "mono" }, s.owner_tenant),
      h("td", {}, fmtIso(s.created_at)),
    );
  }

  const experiment = h(
    "select",
    { id: "share-experiment", required: true },
    experiments.map((e) => h("option", { value: e.experiment_id }, `${e.name} · ${e.experiment_id}`)),
  );
  const grantee = h("input", { id: "share-tenant", required: true, placeholder: "tenant id", size: 20 });
  const form = adminForm(
    "new-share",
    message,
    async () => {
      const answer = await api("/api/v1/shares", {
        method: "POST",
        body: { experiment_id: experiment.value, grantee_tenant: grantee.value.trim() },
      });
      message.ok(answer.changed ? `Shared with ${grantee.value.trim()} (read-only).` : `Already shared with ${grantee.value.trim()}.`);
      grantee.value = "";
      await load();
    },
    h("h2", {}, "Share an experiment"),
    experiments.length
      ? h("div", { class: "row wrap" }, labelled("Experiment", experiment), labelled("With tenant", grantee), h("button", { type: "submit", class: "primary" }, "Share"))
      : h("p", { class: "muted" }, "No experiment to share."),
    h("p", { class: "muted small" }, "The other tenant's members read the experiment and its runs; nobody there can change them. Both audit logs record it."),
  );

  await load();
  return {
    element: h(
      "div",
      {},
      h("h1", {}, "Shared experiments"),
      form,
      message.element,
      h("h2", {}, "Shared by this tenant"),
      grid("shares-outgoing", ["Experiment", "With tenant", "Since", ""], outgoing),
      h("h2", {}, "Shared with this tenant"),
      grid("shares-incoming", ["Experiment", "Owner tenant", "Since"], incoming),
    ),
  };
}
