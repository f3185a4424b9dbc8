// Admin pages of a tenant admin: #/admin/<section>, one module per section. Callers without
// the admin role get "not allowed" (the API refuses them regardless).

import { can } from "../api.js";
import { h } from "../dom.js";
import { adminAuditPage } from "./admin-audit.js";
import { SECTIONS, adminTabs, notAllowed } from "./admin-common.js";
import { adminKeysPage } from "./admin-keys.js";
import { adminRetentionPage, adminTaggingPage } from "./admin-policies.js";
import { adminRolesPage } from "./admin-roles.js";
import { adminSharesPage } from "./admin-shares.js";
import { adminUsersPage } from "./admin-users.js";

const PAGES = {
  users: adminUsersPage,
  keys: adminKeysPage,
  roles: adminRolesPage,
  tagging: adminTaggingPage,
  retention: adminRetentionPage,
  audit: adminAuditPage,
  shares: adminSharesPage,
};

/** The router's entry: `section` from #/admin/<section> (default users). */
export async function adminPage(section = "users") {
  if (!can("admin")) return { element: notAllowed() };
  const page = PAGES[section];
  if (!page) {
    return {
      element: h(
        "section",
        { class: "admin" },
        adminTabs(null),
        h("p", {}, `No admin page "${section}". `, SECTIONS.length ? h("a", { href: "#/admin/users" }, "Users") : null),
      ),
    };
  }
  const view = await page();
  return {
    element: h("section", { class: "admin", dataset: { section, loaded: "true" } }, adminTabs(section), view.element),
    cleanup: view.cleanup,
  };
}
