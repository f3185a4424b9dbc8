// Admin: the tenant's policies. Tagging (required run tag keys, their allowed values, flag or
// reject) and retention (how long raw metric points and artifacts are kept).

import { ApiError, api } from "../api.js";
import { fmtNumber, fmtTime, h, mount } from "../dom.js";
import { confirmButton, labelled, messages } from "./admin-common.js";

/** "a, b ,, c" -> ["a", "b", "c"] (allowed values; none = any value). */
export function splitValues(text) {
  return [...new Set(text.split(",").map((v) => v.trim()).filter(Boolean))];
}

export async function adminTaggingPage() {
  const message = messages("tagging-message");
  const current = h("div", { id: "tagging-current" });
  const rows = h("tbody", { id: "tagging-rows" });
  const flag = h("input", { type: "radio", name: "enforcement", value: "flag", id: "enforcement-flag", checked: true });
  const reject = h("input", { type: "radio", name: "enforcement", value: "reject", id: "enforcement-reject" });

  async function fetchPolicy() {
    try {
      return await api("/api/v1/policies/tagging");
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  }

  function showCurrent(policy) {
    if (!policy) {
      mount(current, h("p", { class: "muted", dataset: { state: "none" } }, "No tagging policy: runs may carry any tags."));
      return;
    }
    mount(
      current,
      h(
        "p",
        { dataset: { state: "set", enforcement: policy.enforcement } },
        policy.enforcement === "reject" ? "Runs without these tags are rejected." : "Runs without these tags are flagged.",
      ),
      h(
        "table",
        { class: "grid kv", id: "tagging-policy" },
        h("thead", {}, h("tr", {}, h("th", {}, "Required tag"), h("th", {}, "Allowed values"))),
        h(
          "tbody",
          {},
          Object.entries(policy.required).map(([key, values]) =>
            h(
              "tr",
              { dataset: { key } },
              h("td", { class: "mono" }, key),
              h("td", {}, values.length ? values.map((v) => h("span", { class: "tag" }, v)) : h("span", { class: "muted" }, "any value")),
            ),
          ),
        ),
      ),
    );
  }

  function editRow(key = "", values = []) {
    const keyInput = h("input", { class: "policy-key", placeholder: "tag key, e.g. team", value: key, size: 24, "aria-label": "Tag key" });
    const valuesInput = h("input", { class: "policy-values", placeholder: "allowed values, comma-separated (empty: any)", value: values.join(", "), size: 48, "aria-label": "Allowed values" });
    const tr = h("tr", { class: "policy-row" });
    mount(
      tr,
      h("td", {}, keyInput),
      h("td", {}, valuesInput),
      h("td", {}, h("button", { type: "button", class: "remove-row", onclick: () => tr.remove() }, "Remove")),
    );
    return tr;
  }

  function edit(policy) {
    mount(rows, policy ? Object.entries(policy.required).map(([k, v]) => editRow(k, v)) : editRow());
    (policy && policy.enforcement === "reject" ? reject : flag).checked = true;
  }

  async function save(event) {
    event.preventDefault();
    message.clear();
    const required = {};
    for (const tr of rows.querySelectorAll(".policy-row")) {
      const key = tr.querySelector(".policy-key").value.trim();
      if (!key) continue;
      required[key] = splitValues(tr.querySelector(".policy-values").value);
    }
    if (!Object.keys(required).length) {
      message.error("Name at least one required tag key (or remove the policy).");
      return;
    }
    try {
      const saved = await api("/api/v1/policies/tagging", {
        method: "PUT",
        body: { required, enforcement: reject.checked ? "reject" : "flag" },
      });
      showCurrent(saved);
      edit(saved);
      message.ok("Tagging policy saved.");
    } catch (err) {
      message.error(err);
    }
  }

  const clear = confirmButton("Remove policy", {
    className: "clear-policy",
    action: async () => {
      message.clear();
      try {
        await api("/api/v1/policies/tagging", { method: "DELETE" });
        showCurrent(null);
        edit(null);
        message.ok("Tagging policy removed.");
      } catch (err) {
        message.error(err);
      }
    },
  });

  const policy = await fetchPolicy();
  showCurrent(policy);
  edit(policy);
  return {
    element: h(
      "div",
      {},
      h("h1", {}, "Tagging policy"),
      h("h2", {}, "In force"),
      current,
      h(
        "form",
        { id: "tagging-form", class: "card admin-form", onsubmit: save },
        h("h2", {}, "Edit"),
        h("table", { class: "policy-edit" }, h("thead", {}, h("tr", {}, h("th", {}, "Required tag key"), h("th", {}, "Allowed values"), h("th"))), rows),
        h("button", { type: "button", id: "add-tag-key", onclick: () => rows.append(editRow()) }, "Add a tag key"),
        h(
          "fieldset",
          { class: "enforcement" },
          h("legend", {}, "A run without the required tags is"),
          h("label", {}, flag, " flagged (accepted, marked as not compliant)"),
          h("label", {}, reject, " rejected"),
        ),
        h("div", { class: "row" }, h("button", { type: "submit", class: "primary", id: "save-tagging" }, "Save policy"), clear),
      ),
      message.element,
    ),
  };
}

function daysText(days) {
  return days ? `${days} days` : "forever";
}

export async function adminRetentionPage() {
  const message = messages("retention-message");
  const current = h("div", { id: "retention-current" });
  const preview = h("div", { id: "retention-preview" });
  const pointsDays = h("input", { id: "retention-points-days", type: "number", min: 1, max: 36500, placeholder: "forever", size: 8 });
  const artifactDays = h("input", { id: "retention-artifacts-days", type: "number", min: 1, max: 36500, placeholder: "forever", size: 8 });
  const keepModels = h("input", { id: "retention-keep-models", type: "checkbox" });

  function showCurrent(policy) {
    mount(
      current,
      h(
        "table",
        { class: "grid kv", id: "retention-policy", dataset: { default: String(policy.is_default) } },
        h(
          "tbody",
          {},
          h("tr", {}, h("th", {}, "Raw metric points kept"), h("td", { dataset: { field: "metric_points_days" } }, daysText(policy.metric_points_days))),
          h("tr", {}, h("th", {}, "Artifacts kept after the run ended"), h("td", { dataset: { field: "artifacts_days" } }, daysText(policy.artifacts_days))),
          h("tr", {}, h("th", {}, "Production model binaries"), h("td", { dataset: { field: "keep_production_models" } }, policy.keep_production_models ? "kept forever" : "expire like other artifacts")),
          h(
            "tr",
            {},
            h("th", {}, "Set"),
            h("td", {}, policy.is_default ? "never: the defaults apply" : `${fmtTime(policy.updated_at)} with key ${policy.updated_by}`),
          ),
        ),
      ),
    );
    pointsDays.value = policy.metric_points_days ?? "";
    artifactDays.value = policy.artifacts_days ?? "";
    keepModels.checked = Boolean(policy.keep_production_models);
  }

  function body() {
    return {
      metric_points_days: pointsDays.value ? Number(pointsDays.value) : null,
      artifacts_days: artifactDays.value ? Number(artifactDays.value) : null,
      keep_production_models: keepModels.checked,
    };
  }

  async function showPreview() {
    message.clear();
    const b = body();
    try {
      const plan = await api("/api/v1/retention/plan", {
        query: {
          metric_points_days: b.metric_points_days ?? 0,
          artifacts_days: b.artifacts_days ?? 0,
          keep_production_models: b.keep_production_models,
        },
      });
      const t = plan.totals;
      mount(
        preview,
        h(
          "p",
          { class: "muted", dataset: { points: t.points, artifacts: t.artifacts } },
          `Saving this now deletes ${fmtNumber(t.points)} metric points in ${t.series} series and ${t.artifacts} artifacts (${fmtNumber(t.artifact_bytes)} bytes)`,
          t.kept_production_artifacts ? `; ${t.kept_production_artifacts} production model artifacts are kept.` : ".",
        ),
      );
    } catch (err) {
      message.error(err);
    }
  }

  async function save(event) {
    event.preventDefault();
    message.clear();
    try {
      const saved = await api("/api/v1/retention-policy", { method: "PUT", body: body() });
      showCurrent(saved);
      mount(preview);
      const applied = saved.applied;
      message.ok(
        applied
          ? `Retention policy saved and applied: ${fmtNumber(applied.points)} metric points and ${applied.artifacts} artifacts deleted.`
          : "Retention policy saved; the next sweep applies it.",
      );
    } catch (err) {
      message.error(err);
    }
  }

  showCurrent(await api("/api/v1/retention-policy"));
  return {
    element: h(
      "div",
      {},
      h("h1", {}, "Retention policy"),
      h("h2", {}, "In force"),
      current,
      h(
        "form",
        { id: "retention-form", class: "card admin-form", onsubmit: save },
        h("h2", {}, "Edit"),
        h(
          "div",
          { class: "row wrap" },
          labelled("Raw metric points: days (empty = forever)", pointsDays),
          labelled("Artifacts: days after the run ended (empty = forever)", artifactDays),
        ),
        h("label", { class: "check" }, keepModels, " Keep the binaries of model versions ever marked Production forever"),
        h(
          "p",
          { class: "warning" },
          "Saving applies the policy at once: what it expires is deleted now (each deletion recorded as an event). Preview first.",
        ),
        h(
          "div",
          { class: "row" },
          h("button", { type: "button", id: "preview-retention", onclick: showPreview }, "Preview"),
          h("button", { type: "submit", class: "primary", id: "save-retention" }, "Save policy"),
        ),
        preview,
      ),
      message.element,
    ),
  };
}
