// Admin: API keys. The list never holds a secret (the API never returns one); a new key's
// secret is shown once, in this page only, with a copy button, until "Done" or leaving the page.

import { api } from "../api.js";
import { h, mount } from "../dom.js";
import {
  confirmButton,
  fmtIso,
  grid,
  labelled,
  loadPrincipals,
  messages,
  principalCell,
  principalNames,
  principalSelect, adminForm } from "./admin-common.js";

export function keyState(key, now = Date.now()) {
  if (key.revoked_at) return "revoked";
  if (key.expires_at && Date.parse(key.expires_at) <= now) return "expired";
  return "active";
}

export async function adminKeysPage() {
  const message = messages("keys-message");
  const body = h("tbody");
  const count = h("p", { class: "muted", id: "keys-status" });
  const secretSlot = h("div", { id: "new-key-slot" });
  const principals = await loadPrincipals();
  const names = principalNames(principals);
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("principal");

  async function load() {
    const { keys } = await api("/api/v1/keys");
    mount(body, keys.map(row));
    const active = keys.filter((k) => keyState(k) === "active").length;
    count.textContent = `${keys.length} keys, ${active} active`;
  }

  function row(key) {
    const state = keyState(key);
    return h(
      "tr",
      { dataset: { keyId: key.key_id, state } },
      h("td", { class: "mono key-id" }, key.key_id),
      principalCell(names, key.principal_id),
      h("td", {}, key.name || h("span", { class: "muted" }, "—")),
      h("td", {}, fmtIso(key.created_at)),
      h("td", {}, key.expires_at ? fmtIso(key.expires_at) : h("span", { class: "muted" }, "never")),
      h(
        "td",
        { class: "key-state" },
        h("span", { class: `status status-${state === "active" ? "finished" : "failed"}` }, state),
        key.revoked_at ? h("div", { class: "muted small" }, fmtIso(key.revoked_at)) : null,
      ),
      h(
        "td",
        {},
        state === "active"
          ? confirmButton("Revoke", {
              className: "revoke-key",
              action: async () => {
                message.clear();
                try {
                  const answer = await api(`/api/v1/keys/${encodeURIComponent(key.key_id)}`, { method: "DELETE" });
                  message.ok(answer.revoked ? `Revoked key ${answer.key_id}: it is refused within seconds.` : `Key ${answer.key_id} was revoked already.`);
                  await load();
                } catch (err) {
                  message.error(err);
                }
              },
            })
          : null,
      ),
    );
  }

  const owner = principalSelect("new-key-principal", principals);
  if (wanted && principals.some((p) => p.principal_id === wanted && !p.disabled_at)) owner.value = wanted;
  const keyName = h("input", { id: "new-key-name", name: "name", maxlength: 200, placeholder: "e.g. laptop, CI", size: 20 });
  const days = h("input", { id: "new-key-days", name: "expires_in_days", type: "number", min: 1, max: 3650, placeholder: "never", size: 8 });
  const form = adminForm(
    "new-key",
    message,
    async () => {
      const created = await api(`/api/v1/principals/${encodeURIComponent(owner.value)}/keys`, {
        method: "POST",
        body: { name: keyName.value.trim(), expires_in_days: days.value ? Number(days.value) : null },
      });
      keyName.value = days.value = "";
      mount(secretSlot, secretPanel(created, () => mount(secretSlot)));
      await load();
    },
    h("h2", {}, "New API key"),
    principals.some((p) => !p.disabled_at)
      ? h(
          "div",
          { class: "row wrap" },
          labelled("For", owner),
          labelled("Name", keyName),
          labelled("Expires in days", days),
          h("button", { type: "submit", class: "primary" }, "Create key"),
        )
      : h("p", { class: "muted" }, "No enabled principal: create a user or service account first."),
  );

  await load();
  return {
    element: h("div", {}, h("h1", {}, "API keys"), form, secretSlot, message.element, count, grid("keys", ["Key id", "Principal", "Name", "Created", "Expires", "State", ""], body)),
    // Leaving the page drops the secret from the DOM.
    cleanup: () => mount(secretSlot),
  };
}

// The one time a secret is on screen.
function secretPanel(created, done) {
  const secret = h("input", { id: "new-key-secret", class: "mono", readonly: true, value: created.api_key, size: 70, "aria-label": "New API key" });
  const copied = h("span", { id: "copy-status", class: "muted", role: "status" });
  async function copy() {
    try {
      await navigator.clipboard.writeText(secret.value);
      copied.textContent = "Copied.";
    } catch {
      secret.select(); // clipboard API refused (an insecure origin): the older way
      copied.textContent = document.execCommand("copy") ? "Copied." : "Select the key and copy it by hand.";
    }
  }
  return h(
    "div",
    { class: "card secret-panel", role: "region", "aria-label": "New API key", dataset: { keyId: created.key_id } },
    h(
      "p",
      { class: "warning", id: "new-key-warning" },
      h("strong", {}, "Copy this key now: it is shown only this once. "),
      "RunLedger keeps only a hash of it; if it is lost, revoke it and create another.",
    ),
    h("div", { class: "row wrap" }, secret, h("button", { type: "button", id: "copy-key", onclick: copy }, "Copy"), copied),
    h(
      "p",
      { class: "muted small" },
      `Key id ${created.key_id} for ${created.principal_id}`,
      created.expires_at ? `, expires ${created.expires_at}` : "",
      ". Use it as ",
      h("code", {}, "Authorization: Bearer <key>"),
      " or sign in with it.",
    ),
    h("button", { type: "button", id: "new-key-done", onclick: done }, "Done, I have copied it"),
  );
}
