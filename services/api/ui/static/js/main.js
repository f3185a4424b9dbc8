// Entry point: the hash router (#/..., no server routes per page) and the header.

import { loadSession, me, onSignedOut, signOut } from "./api.js";
import { h, mount } from "./dom.js";
import { experimentsPage } from "./pages/experiments.js";
import { experimentPage } from "./pages/experiment.js";
import { runPage } from "./pages/run.js";
import { comparePage } from "./pages/compare.js";
import { attributionPage, attributionsPage } from "./pages/attribution.js";
import { signInPage } from "./pages/signin.js";
import { adminPage } from "./pages/admin.js";

const app = document.getElementById("app");
const routes = [
  [/^#\/experiments\/([^/?]+)$/, (m) => experimentPage(decodeURIComponent(m[1]))],
  [/^#\/runs\/([^/?]+)$/, (m) => runPage(decodeURIComponent(m[1]))],
  [/^#\/admin(?:\/([a-z-]+))?\/?$/, (m) => adminPage(m[1] || "users")],
  [/^#\/compare$/, () => comparePage()],
  [/^#\/attribution\/([^/?]+)$/, (m) => attributionPage(decodeURIComponent(m[1]))],
  [/^#\/attributions?$/, () => attributionsPage()],
  [/^#\/?$/, () => experimentsPage()],
];

let current = null; // the page's cleanup function, if it returned one
// Bumped by every render: a page that finishes loading after the user navigated on is
// dropped (its cleanup run) instead of being mounted over the page they went to.
let generation = 0;

function header() {
  const who = me();
  mount(
    document.getElementById("nav"),
    who ? h("a", { href: "#/" }, "Experiments") : null,
    // Tenant admins only (GET /api/v1/me); the admin pages and the API refuse anyone else.
    who && who.permissions && who.permissions.admin ? h("a", { href: "#/admin/users", id: "nav-admin" }, "Admin") : null,
  );
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
  const mine = ++generation;
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
      const cleanup = await page(match, app).then((view) => {
        if (mine !== generation) return view.cleanup || null;
        mount(app, view.element);
        return view.cleanup || null;
      }, (err) => {
        if (mine === generation) mount(app, h("div", { class: "error", role: "alert" }, err.message || String(err)));
        return null;
      });
      if (mine === generation) current = cleanup;
      else if (typeof cleanup === "function") cleanup(); // a stale page: stop its timers and listeners
      return;
    }
  }
  mount(app, h("p", {}, "No such page. ", h("a", { href: "#/" }, "Experiments")));
}

onSignedOut(() => render());
window.addEventListener("hashchange", () => render());
loadSession().then(render, render);
