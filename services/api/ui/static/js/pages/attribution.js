// An attribution report (#/attribution/<id>): why a metric moved between baseline and
// candidate runs. Factors ranked by contribution (the API's order) with their intervals drawn
// as bars on one shared scale, the dowhy refutation outcomes, and the plain sentence per
// factor. A pending or running attribution is polled until it is done.
// #/attribution lists the newest attributions (?experiment=<id> for one experiment's).
//
// Requests come from the compare view (POST /api/v1/attributions); reads are
// GET /api/v1/attributions/{id} and GET /api/v1/attributions.

import { api } from "../api.js";
import { errorBox, fmtNumber, fmtTime, h, mount } from "../dom.js";

const POLL_MS = 1000;
const REFUTERS = { placebo: "placebo treatment", random_common_cause: "random common cause", data_subset: "data subset" };

function signed(v) {
  if (v === null || v === undefined) return "n/a";
  const text = fmtNumber(v);
  return v > 0 ? `+${text}` : text;
}

function shown(v) {
  if (v === null || v === undefined) return "—";
  return typeof v === "number" ? fmtNumber(v) : String(v);
}

function compareLink(ids, text) {
  if (!ids.length) return null;
  return h("a", { href: `#/compare?runs=${ids.slice(0, 200).map(encodeURIComponent).join(",")}` }, text);
}

/** The shared horizontal scale of every factor's bar: [lo, hi] always holding 0. */
export function barScale(factors) {
  let lo = 0;
  let hi = 0;
  for (const f of factors) {
    for (const v of [f.contribution, f.ci_low, f.ci_high]) {
      if (typeof v === "number" && Number.isFinite(v)) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
  }
  if (hi === lo) hi = lo + 1;
  const pad = (hi - lo) * 0.04;
  return { lo: lo - pad, hi: hi + pad, at: (v) => ((v - (lo - pad)) / (hi - lo + 2 * pad)) * 100 };
}

function refutationChips(refutations) {
  if (!refutations) return h("span", { class: "muted small" }, "not refuted (only the top factors are)");
  return Object.entries(refutations).map(([name, r]) => {
    const outcome = r.passed === true ? "passed" : r.passed === false ? "failed" : "error";
    const detail =
      outcome === "error"
        ? r.error || "the refuter failed"
        : `new effect ${fmtNumber(r.new_effect)} (expected ${fmtNumber(r.expected)} ± ${fmtNumber(r.tolerance)})${r.p_value !== null && r.p_value !== undefined ? `, p = ${fmtNumber(r.p_value)}` : ""}, ${r.simulations} simulations`;
    return h(
      "span",
      { class: `refutation ${outcome}`, dataset: { refuter: name, outcome }, title: detail },
      `${outcome === "passed" ? "✓" : outcome === "failed" ? "✗" : "!"} ${REFUTERS[name] || name.replaceAll("_", " ")}`,
    );
  });
}

function factorItem(f, index, scale) {
  const at = scale.at;
  const zero = at(0);
  const c = typeof f.contribution === "number" ? f.contribution : 0;
  const bar = h("span", { class: `attr-bar ${c >= 0 ? "pos" : "neg"}`, style: { left: `${Math.min(zero, at(c))}%`, width: `${Math.abs(at(c) - zero)}%` } });
  const ci =
    typeof f.ci_low === "number" && typeof f.ci_high === "number"
      ? h("span", { class: "attr-ci", style: { left: `${at(f.ci_low)}%`, width: `${Math.max(0.3, at(f.ci_high) - at(f.ci_low))}%` }, title: `interval ${fmtNumber(f.ci_low)} to ${fmtNumber(f.ci_high)}` })
      : null;
  return h(
    "li",
    { class: "attr-factor", dataset: { factor: f.factor, rank: String(index + 1), contribution: String(f.contribution) } },
    h(
      "div",
      { class: "attr-head" },
      h("strong", { class: "attr-name" }, f.factor),
      f.members && f.members.length > 1 ? h("span", { class: "muted small" }, ` (inseparable: ${f.members.join(", ")})`) : null,
      h("span", { class: "muted small" }, ` ${shown(f.baseline_value)} → ${shown(f.candidate_value)}`),
      h("span", { class: "attr-value" }, signed(f.contribution), f.share !== null && f.share !== undefined ? h("span", { class: "muted small" }, ` (${Math.round(f.share * 100)}%)`) : null),
    ),
    h("div", { class: "attr-track" }, h("span", { class: "attr-zero", style: { left: `${zero}%` } }), bar, ci),
    h("div", { class: "attr-refutations" }, refutationChips(f.refutations)),
    h("p", { class: "attr-sentence" }, f.sentence || ""),
  );
}

function report(a) {
  const r = a.result || {};
  const factors = a.factors || [];
  const scale = barScale(factors);
  return h(
    "div",
    { id: "attribution-report" },
    h(
      "table",
      { class: "grid kv", id: "attribution-summary" },
      h(
        "tbody",
        {},
        h("tr", {}, h("th", {}, "Baseline mean"), h("td", { dataset: { value: r.baseline_mean ?? "" } }, `${shown(r.baseline_mean)} (${r.n_baseline ?? "?"} runs)`)),
        h("tr", {}, h("th", {}, "Candidate mean"), h("td", { dataset: { value: r.candidate_mean ?? "" } }, `${shown(r.candidate_mean)} (${r.n_candidate ?? "?"} runs)`)),
        h("tr", {}, h("th", {}, "Shift"), h("td", { id: "attribution-shift", dataset: { value: r.shift ?? "" } }, signed(r.shift))),
        h("tr", {}, h("th", {}, "Unexplained"), h("td", {}, signed(r.unexplained))),
        h("tr", {}, h("th", {}, "Method"), h("td", { class: "small" }, r.method || "")),
      ),
    ),
    r.warnings && r.warnings.length ? h("ul", { class: "attr-warnings" }, r.warnings.map((w) => h("li", {}, w))) : null,
    h("h2", {}, "Factors, ranked by contribution"),
    h(
      "div",
      { class: "attr-axis muted small" },
      h("span", { style: { left: "0%" } }, fmtNumber(scale.lo)),
      h("span", { class: "attr-axis-zero", style: { left: `${scale.at(0)}%` } }, "0"),
      h("span", { style: { right: "0%" } }, fmtNumber(scale.hi)),
    ),
    factors.length ? h("ol", { class: "attr-factors", id: "attribution-factors" }, factors.map((f, i) => factorItem(f, i, scale))) : h("p", { class: "muted" }, "No factor changed."),
    r.unchanged && r.unchanged.length ? h("p", { class: "muted small", id: "attribution-unchanged" }, `Unchanged between the sets: ${r.unchanged.join(", ")}`) : null,
    r.naive_ranking && r.naive_ranking.length
      ? h(
          "details",
          { class: "attr-naive" },
          h("summary", {}, "Naive ranking (correlation only, for comparison)"),
          h("ol", {}, r.naive_ranking.map((n) => h("li", {}, `${n.factor}: r = ${fmtNumber(n.correlation)}`))),
        )
      : null,
  );
}

export async function attributionPage(attributionId) {
  let timer = null;
  let stopped = false;
  const body = h("div", { id: "attribution-body" });
  const element = h("section", { class: "attribution", dataset: { attributionId } }, h("p", { class: "muted" }, "Loading…"));

  function render(a) {
    element.dataset.status = a.status;
    mount(
      element,
      h(
        "div",
        { class: "toolbar" },
        h("h1", {}, `Why did ${a.metric} move?`, " ", h("span", { class: `status status-${a.status}`, id: "attribution-status" }, a.status)),
        h("a", { href: `#/experiments/${encodeURIComponent(a.experiment_id)}` }, `experiment ${a.experiment_id}`),
        h("a", { href: `#/attribution?experiment=${encodeURIComponent(a.experiment_id)}` }, "all attributions"),
      ),
      h(
        "p",
        { class: "muted" },
        `Requested ${fmtTime(a.requested_at)}${a.finished_at ? ` · finished ${fmtTime(a.finished_at)}` : ""} · `,
        a.baseline_run_ids.length ? compareLink(a.baseline_run_ids, `${a.baseline_run_ids.length} baseline runs`) : "baseline: the experiment's recent runs",
        " → ",
        compareLink(a.candidate_run_ids, `${a.candidate_run_ids.length} candidate runs`),
        " · ",
        compareLink([...a.baseline_run_ids, ...a.candidate_run_ids], "compare them all"),
      ),
      body,
    );
    if (a.status === "done") mount(body, report(a));
    else if (a.status === "failed") mount(body, errorBox(a.error || "the attribution failed"));
    else mount(body, h("p", { class: "muted", id: "attribution-pending" }, `${a.status === "running" ? "Running" : "Waiting for the analysis service"}… (this page updates by itself)`));
  }

  async function poll() {
    try {
      const a = await api(`/api/v1/attributions/${encodeURIComponent(attributionId)}`);
      if (stopped) return;
      render(a);
      if (a.status === "pending" || a.status === "running") timer = setTimeout(poll, POLL_MS);
    } catch (err) {
      if (!stopped) mount(body, errorBox(err));
    }
  }

  const first = await api(`/api/v1/attributions/${encodeURIComponent(attributionId)}`);
  render(first);
  if (first.status === "pending" || first.status === "running") timer = setTimeout(poll, POLL_MS);
  return {
    element,
    cleanup: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

export async function attributionsPage() {
  const experiment = new URLSearchParams(location.hash.split("?")[1] || "").get("experiment");
  const answer = await api("/api/v1/attributions", { query: { experiment_id: experiment, limit: 200 } });
  const list = answer.attributions;
  return {
    element: h(
      "section",
      { class: "attributions" },
      h("h1", {}, "Attributions", experiment ? h("span", { class: "muted mono" }, ` ${experiment}`) : null),
      list.length
        ? h(
            "table",
            { class: "grid", id: "attributions" },
            h("thead", {}, h("tr", {}, ["Requested", "Metric", "Status", "Baseline", "Candidate", "Top factor"].map((t) => h("th", {}, t)))),
            h(
              "tbody",
              {},
              list.map((a) =>
                h(
                  "tr",
                  { dataset: { attributionId: a.attribution_id } },
                  h("td", {}, h("a", { href: `#/attribution/${encodeURIComponent(a.attribution_id)}` }, fmtTime(a.requested_at))),
                  h("td", {}, a.metric),
                  h("td", {}, h("span", { class: `status status-${a.status}` }, a.status)),
                  h("td", { class: "num" }, a.baseline_run_ids.length || "recent"),
                  h("td", { class: "num" }, a.candidate_run_ids.length),
                  h("td", {}, a.factors && a.factors.length ? a.factors[0].factor : ""),
                ),
              ),
            ),
          )
        : h("p", { class: "muted" }, "No attributions yet: request one from the compare view."),
    ),
  };
}
