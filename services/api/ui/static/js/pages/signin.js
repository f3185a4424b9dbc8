// Sign-in: an API key (rlk_<id>_<secret>), or its id and secret, starts a browser session.

import { signIn } from "../api.js";
import { h } from "../dom.js";

export function signInPage(done) {
  const message = h("div", { class: "error", role: "alert", hidden: true });
  const token = h("input", { id: "api-key", name: "api_key", type: "password", autocomplete: "current-password", placeholder: "rlk_…", size: 60 });
  const keyId = h("input", { id: "key-id", name: "key_id", autocomplete: "username", placeholder: "key id", size: 20 });
  const secret = h("input", { id: "key-secret", name: "secret", type: "password", autocomplete: "off", placeholder: "secret", size: 40 });
  async function submit(event) {
    event.preventDefault();
    message.hidden = true;
    const credentials = token.value.trim()
      ? { api_key: token.value.trim() }
      : { key_id: keyId.value.trim(), secret: secret.value.trim() };
    try {
      await signIn(credentials);
      token.value = secret.value = "";
      done();
    } catch (err) {
      message.textContent = err.message;
      message.hidden = false;
    }
  }
  return h(
    "form",
    { id: "sign-in", class: "card narrow", onsubmit: submit },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "With an API key; the browser keeps only a session cookie, never the key."),
    h("label", {}, "API key", token),
    h("p", { class: "muted" }, "or"),
    h("div", { class: "row" }, h("label", {}, "Key id", keyId), h("label", {}, "Secret", secret)),
    message,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
}
