// Experiments: a searchable list (name substring, server-side), newest first.

import { api, can } from "../api.js";
import { debounce, errorBox, fmtTime, h, mount } from "../dom.js";

export async function experimentsPage() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const search = h("input", {
    id: "experiment-search",
    type: "search",
    placeholder: "Search experiments by name",
    value: params.get("q") || "",
    size: 40,
  });
  const body = h("tbody");
  const status = h("p", { class: "muted", id: "experiments-status" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  let token = null;
  let query = search.value;
  let generation = 0;

  async function load(reset) {
    const mine = ++generation;
    if (reset) token = null;
    try {
      const page = await api("/api/v1/experiments", {
        query: { name: query || null, page_size: 100, page_token: token },
      });
      if (mine !== generation) return;
      if (reset) mount(body);
      for (const e of page.experiments) body.append(row(e));
      token = page.next_page_token;
      more.hidden = !token;
      status.textContent = body.children.length ? `${body.children.length}${token ? "+" : ""} experiments` : "No experiments.";
    } catch (err) {
      mount(status, errorBox(err));
    }
  }

  function row(e) {
    const tags = Object.entries(e.tags || {}).filter(([k]) => !k.startsWith("mlflow."));
    return h(
      "tr",
      { dataset: { experimentId: e.experiment_id } },
      h("td", {}, h("a", { href: `#/experiments/${encodeURIComponent(e.experiment_id)}` }, e.name)),
      h("td", { class: "mono" }, e.experiment_id),
      h("td", {}, fmtTime(e.creation_time)),
      h("td", {}, fmtTime(e.last_update_time)),
      h("td", {}, tags.map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`))),
    );
  }

  search.addEventListener(
    "input",
    debounce(() => {
      query = search.value.trim();
      history.replaceState(null, "", query ? `#/?q=${encodeURIComponent(query)}` : "#/");
      load(true);
    }, 250),
  );
  more.addEventListener("click", () => load(false));

  const create = can("write") ? createForm(() => load(true)) : null;
  await load(true);
  return {
    element: h(
      "section",
      {},
      h("div", { class: "toolbar" }, h("h1", {}, "Experiments"), search, create),
      status,
      h(
        "table",
        { class: "grid", id: "experiments" },
        h("thead", {}, h("tr", {}, ["Name", "Id", "Created", "Updated", "Tags"].map((t) => h("th", {}, t)))),
        body,
      ),
      more,
    ),
  };
}

// A write control: shown only to callers who may write (GET /api/v1/me).
function createForm(created) {
  const name = h("input", { id: "new-experiment-name", placeholder: "new experiment name", size: 24 });
  const message = h("span", { class: "error-inline" });
  return h(
    "form",
    {
      id: "new-experiment",
      class: "inline write-control",
      onsubmit: async (event) => {
        event.preventDefault();
        message.textContent = "";
        try {
          await api("/api/v1/experiments", { method: "POST", body: { name: name.value.trim() } });
          name.value = "";
          created();
        } catch (err) {
          message.textContent = err.message;
        }
      },
    },
    name,
    h("button", { type: "submit" }, "Create"),
    message,
  );
}
