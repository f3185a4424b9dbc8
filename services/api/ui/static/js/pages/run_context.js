// The run page's "Code and environment" panel and lineage section.
// Code state and environment come from GET /api/v1/runs/{id}/documents (the SDK's
// CodeStateCaptured / EnvironmentCaptured events); without them the tags the SDK sets
// (git.commit, git.branch, git.dirty, env.hash) still say the essentials.

import { api } from "../api.js";
import { errorBox, h, mount } from "../dom.js";
import { MAX_DRAWN_NODES, lineageSvg } from "../lineage.js";
import { artifactUrl } from "./run_artifacts.js";

const PACKAGES_SHOWN = 2000;

function kv(id, rows) {
  const present = rows.filter(([, v]) => v !== null && v !== undefined && v !== "");
  if (!present.length) return null;
  return h(
    "table",
    { class: "grid kv", id },
    h(
      "tbody",
      {},
      present.map(([k, v, key]) => h("tr", { dataset: { field: key || k } }, h("th", {}, k), h("td", { class: "mono" }, v))),
    ),
  );
}

/** A browsable link for a git remote and commit (https or scp-like GitHub/GitLab remotes), or null. */
export function commitUrl(remote, commit) {
  if (!remote || !commit) return null;
  let base = remote.trim().replace(/\.git$/, "");
  const scp = base.match(/^[\w.-]+@([\w.-]+):(.+)$/);
  if (scp) base = `https://${scp[1]}/${scp[2]}`;
  if (!/^https:\/\/(github\.com|gitlab\.com|bitbucket\.org)\//.test(base)) return null;
  return /bitbucket/.test(base) ? `${base}/commits/${commit}` : `${base}/commit/${commit}`;
}

function codePanel(runId, code, tags, openArtifact) {
  const commit = (code && code.commit) || tags["git.commit"] || "";
  const branch = (code && code.branch) || tags["git.branch"] || "";
  const dirty = code ? code.dirty : tags["git.dirty"] === undefined ? null : tags["git.dirty"] === "true";
  if (!code && !commit) return h("p", { class: "muted", id: "code-state" }, "No code state captured.");
  const link = commitUrl(code && code.remote_url, commit);
  const diff = code && code.diff_artifact;
  const rows = [
    ["Commit", commit ? (link ? h("a", { href: link, rel: "noopener noreferrer", target: "_blank" }, commit) : commit) : "", "commit"],
    ["Branch", branch, "branch"],
    ["Remote", code && code.remote_url, "remote"],
    ["Working tree", dirty === null ? "" : dirty ? h("span", { class: "dirty" }, "dirty (uncommitted changes)") : "clean", "dirty"],
    ["Entry point", code && code.entry_point, "entry_point"],
    ["Arguments", code && code.args && code.args.length ? code.args.join(" ") : "", "args"],
    [
      "Diff",
      diff
        ? [
            h("button", { type: "button", class: "linkish", id: "view-diff", onclick: () => openArtifact(diff) }, diff),
            " ",
            h("a", { href: artifactUrl(runId, diff), download: diff.split("/").pop(), class: "small" }, "download"),
          ]
        : code && code.diff
          ? `inline in the event${code.diff_truncated ? " (truncated)" : ""}`
          : "",
      "diff",
    ],
  ];
  return [
    kv("code-state", rows),
    code && code.diff && !diff
      ? h(
          "details",
          {},
          h("summary", {}, "Uncommitted diff"),
          h("pre", { class: "artifact-text mono", id: "inline-diff" }, code.diff),
        )
      : null,
  ];
}

function environmentPanel(env, tags) {
  const hash = (env && env.environment_hash) || tags["env.hash"] || "";
  if (!env && !hash) return h("p", { class: "muted", id: "environment" }, "No environment captured.");
  const packages = Object.entries((env && env.packages) || {}).sort(([a], [b]) => a.localeCompare(b));
  const rows = [
    ["Environment hash", hash, "environment_hash"],
    ["Python", env && env.python_version, "python_version"],
    ["Platform", env && env.platform, "platform"],
    ["CUDA", env && env.cuda_version, "cuda_version"],
    ["Driver", env && env.driver_version, "driver_version"],
    ["Conda environment", env && env.conda_env, "conda_env"],
    ["Packages", packages.length ? String(packages.length) : "", "packages"],
  ];
  let packageList = null;
  if (packages.length) {
    const filter = h("input", { type: "search", id: "package-filter", placeholder: "filter packages", size: 20 });
    const body = h("tbody", {});
    const show = () => {
      const q = filter.value.trim().toLowerCase();
      const matching = packages.filter(([name]) => !q || name.includes(q));
      mount(
        body,
        matching
          .slice(0, PACKAGES_SHOWN)
          .map(([name, version]) =>
            h("tr", { dataset: { package: name } }, h("td", {}, name), h("td", { class: "mono" }, version)),
          ),
      );
    };
    filter.addEventListener("input", show);
    show();
    packageList = h(
      "details",
      { id: "packages" },
      h("summary", {}, `Installed packages (${packages.length})`),
      filter,
      h(
        "div",
        { class: "packages-wrap" },
        h("table", { class: "grid" }, h("thead", {}, h("tr", {}, h("th", {}, "Package"), h("th", {}, "Version"))), body),
      ),
    );
  }
  return [
    kv("environment", rows),
    packageList,
    env && env.conda_export
      ? h("details", {}, h("summary", {}, "conda env export"), h("pre", { class: "artifact-text mono" }, env.conda_export))
      : null,
  ];
}

/** The code state and environment panel: fills itself when the documents arrive. */
export function codeEnvironmentPanel(runId, tags, openArtifact) {
  const element = h(
    "div",
    { class: "columns", id: "code-environment" },
    h("div", { class: "card" }, h("h3", {}, "Code"), h("div", { id: "code-box" }, h("p", { class: "muted" }, "Loading…"))),
    h("div", { class: "card" }, h("h3", {}, "Environment"), h("div", { id: "environment-box" }, h("p", { class: "muted" }, "Loading…"))),
  );
  api(`/api/v1/runs/${encodeURIComponent(runId)}/documents`)
    .catch(() => ({ code_state: null, environment: null })) // the tags still tell the essentials
    .then((docs) => {
      mount(element.querySelector("#code-box"), codePanel(runId, docs.code_state, tags, openArtifact));
      mount(element.querySelector("#environment-box"), environmentPanel(docs.environment, tags));
      element.dataset.loaded = "true";
    })
    .catch((err) => mount(element, errorBox(err)));
  return element;
}

/** The lineage section: the graph around the run, `depth` hops (changeable), both directions. */
export function lineagePanel(runId) {
  const box = h("div", { class: "lineage-box", id: "lineage-graph" }, h("p", { class: "muted" }, "Loading lineage…"));
  const note = h("span", { class: "muted small", id: "lineage-note" });
  const depth = h(
    "select",
    { id: "lineage-depth" },
    [1, 2, 3, 4, 5].map((d) => h("option", { value: d, selected: d === 2 }, String(d))),
  );
  let generation = 0;
  async function load() {
    const mine = ++generation;
    box.dataset.loaded = "false";
    try {
      const graph = await api(`/api/v1/lineage/run/${encodeURIComponent(runId)}`, { query: { depth: depth.value } });
      if (mine !== generation) return;
      if (graph.edges.length === 0) {
        mount(box, h("p", { class: "muted", id: "lineage-empty" }, "No lineage: no datasets, models or related runs recorded."));
        note.textContent = "";
      } else {
        mount(box, lineageSvg(graph));
        const cut =
          (graph.truncated ? " · truncated at the server's limit" : "") +
          (graph.nodes.length > MAX_DRAWN_NODES ? ` · the nearest ${MAX_DRAWN_NODES} drawn` : "");
        note.textContent = `${graph.nodes.length} nodes · ${graph.edges.length} edges${cut}`;
      }
      box.dataset.loaded = "true";
    } catch (err) {
      if (mine === generation) mount(box, errorBox(err));
    }
  }
  depth.addEventListener("change", load);
  load();
  return h(
    "div",
    { id: "lineage" },
    h("div", { class: "toolbar" }, h("label", {}, "Depth ", depth), note),
    box,
  );
}
