// Entry point: the hash router (#/..., no server routes per page) and the header.

import { loadSession, me, onSignedOut, signOut } from "./api.js";
import { h, mount } from "./dom.js";
import { experimentsPage } from "./pages/experiments.js";
import { experimentPage } from "./pages/experiment.js";
import { runPage } from "./pages/run.js";
import { signInPage } from "./pages/signin.js";

const app = document.getElementById("app");
const routes = [
  [/^#\/experiments\/([^/?]+)$/, (m) => experimentPage(decodeURIComponent(m[1]))],
  [/^#\/runs\/([^/?]+)$/, (m) => runPage(decodeURIComponent(m[1]))],
  [/^#\/?$/, () => experimentsPage()],
];

let current = null; // the page's cleanup function, if it returned one

function header() {
  const who = me();
  mount(document.getElementById("nav"), who ? h("a", { href: "#/" }, "Experiments") : null);
  const role = who ? [...new Set(who.roles.map((r) => r.role))].join(", ") || "no role" : "";
  mount(
    document.getElementById("whoami"),
    who
      ? [
          h("span", { class: "muted", title: `key ${who.key_id}` }, `${who.principal_id} · ${who.tenant_id} · ${role}`),
          h("button", { id: "sign-out", type: "button", onclick: () => signOut() }, "Sign out"),
        ]
      : null,
  );
}

async function render() {
  if (typeof current === "function") current();
  current = null;
  header();
  const hash = location.hash.split("?")[0] || "#/";
  if (!me()) {
    mount(app, signInPage(() => render()));
    return;
  }
  for (const [pattern, page] of routes) {
    const match = hash.match(pattern);
    if (match) {
      mount(app);
      current = await page(match, app).then((view) => {
        mount(app, view.element);
        return view.cleanup || null;
      }, (err) => {
        mount(app, h("div", { class: "error", role: "alert" }, err.message || String(err)));
        return null;
      });
      return;
    }
  }
  mount(app, h("p", {}, "No such page. ", h("a", { href: "#/" }, "Experiments")));
}

onSignedOut(() => render());
window.addEventListener("hashchange", () => render());
loadSession().then(render, render);
