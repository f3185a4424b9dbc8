// The API as the pages use it: same-origin fetch with the session cookie, the CSRF token on
// unsafe methods, JSON errors turned into ApiError. Nothing here knows about pages.

let session = null; // {csrf_token, expires_at, me}
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error_code;
  }
}

export function onSignedOut(fn) {
  listeners.add(fn);
}

function signedOut() {
  session = null;
  for (const fn of listeners) fn();
}

export function me() {
  return session ? session.me : null;
}

export function can(permission) {
  const m = me();
  return Boolean(m && m.permissions && m.permissions[permission]);
}

async function parse(response) {
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** The current session (null when not signed in). */
export async function loadSession() {
  const response = await fetch("/ui/session", { credentials: "same-origin" });
  session = response.ok ? await response.json() : null;
  return session;
}

/** Sign in with {api_key} or {key_id, secret}. */
export async function signIn(credentials) {
  const response = await fetch("/ui/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(credentials),
  });
  session = await parse(response);
  return session;
}

export async function signOut() {
  if (session) {
    await fetch("/ui/session", {
      method: "DELETE",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": session.csrf_token },
    }).catch(() => null);
  }
  signedOut();
}

function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v === null || v === undefined || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) u.searchParams.append(k, String(item));
  }
  return u.pathname + u.search;
}

/** Call the API: api("/api/v1/runs", {query: {...}}) or {method: "POST", body: {...}}. */
export async function api(path, { method = "GET", query, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") {
    headers["X-CSRF-Token"] = session ? session.csrf_token : "";
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url(path, query), {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (response.status === 401) {
    signedOut();
  }
  return parse(response);
}

/** Every page of a paged list: calls onPage(items) as pages arrive; stops at `limit` items. */
export async function allPages(path, field, { query = {}, limit = 50000, onPage, signal } = {}) {
  const items = [];
  let token = null;
  do {
    const page = await api(path, { query: { ...query, page_token: token }, signal });
    items.push(...page[field]);
    if (onPage) onPage(items, Boolean(page.next_page_token));
    token = page.next_page_token;
  } while (token && items.length < limit);
  return items;
}
