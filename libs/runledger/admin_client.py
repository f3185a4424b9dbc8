"""Client side of the admin commands: `runledger replay` and `runledger admin ...` over HTTP.

The API is found from --url / --api-key, else RUNLEDGER_URL / RUNLEDGER_API_KEY, else
the `url` and `api_key` that `runledger up` wrote to <state dir>/connection.json.
Every command prints a short human-readable answer, or with --json the server's JSON;
a refusal prints the server's message and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from runledger.config import Settings

API = "/api/v1"


class AdminError(Exception):
    """A request the server refused (or could not be reached): the message is for the user."""


@dataclass(frozen=True, slots=True)
class Connection:
    url: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def resolve_connection(settings: Settings, url: str | None = None, api_key: str | None = None) -> Connection:
    """Flag, else environment, else connection.json, for the URL and the key independently."""
    try:
        info = json.loads(settings.connection_file.read_text())
    except (OSError, ValueError):
        info = {}
    base = url or os.environ.get("RUNLEDGER_URL") or info.get("url")
    key = api_key or os.environ.get("RUNLEDGER_API_KEY") or info.get("api_key") or ""
    if not base:
        raise AdminError(
            f"no API URL: pass --url, set RUNLEDGER_URL, or start `runledger up` (writes {settings.connection_file})"
        )
    return Connection(str(base).rstrip("/"), str(key))


class AdminClient:
    """JSON requests to the API; AdminError carrying the server's message when it refuses."""

    def __init__(self, connection: Connection, timeout: float | None = 30.0) -> None:
        self._connection = connection
        self._timeout = timeout

    def request(
        self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = httpx.request(
                method,
                f"{self._connection.url}{path}",
                json=body,
                params=query,
                headers=self._connection.headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach {self._connection.url}: {exc}") from None
        if response.is_success:
            return response.json()
        try:
            error = response.json()
            message = f"{error['message']} ({response.status_code} {error['error_code']})"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}: {response.text[:500]}"
        raise AdminError(message)


def replay(settings: Settings, url: str | None) -> int:
    """Run a replay on the server and print what it re-applied."""
    try:
        result = AdminClient(resolve_connection(settings, url), timeout=None).request(
            "POST", f"{API}/admin/replay"
        )
    except AdminError as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


# --- `runledger admin ...` -------------------------------------------------------------------


def _seg(value: str) -> str:
    """One path segment, escaped (an id never spills into the next segment)."""
    return quote(value, safe="")


Command = Callable[[AdminClient, argparse.Namespace], tuple[Any, str]]


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "(none)") -> str:
    """Aligned columns; None shows as '-'."""
    if not rows:
        return empty
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _changed(result: dict[str, Any], done: str, already: str) -> str:
    return done if result.get("changed", True) else already


def _new_key_text(key: dict[str, Any]) -> str:
    expires = key.get("expires_at") or "never"
    return (
        f"key {key['key_id']} of {key['principal_id']} (expires: {expires})\n"
        f"API key (shown only now, store it safely):\n{key['api_key']}"
    )


def _tenants_create(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body = {"tenant_id": a.tenant_id, "name": a.name or a.tenant_id, "admin_user": a.admin_user}
    r = c.request("POST", f"{API}/tenants", body=body)
    text = f"tenant {r['tenant']['tenant_id']} created"
    if r.get("admin"):
        text += f"\nadmin user {r['admin']['name']} ({r['admin']['principal_id']})\n" + _new_key_text(
            r["api_key"]
        )
    return r, text


def _tenants_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("GET", f"{API}/tenants")
    return r, _table(r["tenants"], ["tenant_id", "name", "status", "created_at"])


def _tenant_status(action: str) -> Command:
    def run(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
        r = c.request("POST", f"{API}/tenants/{_seg(a.tenant_id)}/{action}")
        return r, f"tenant {r['tenant_id']} is {r['status']}"

    return run


def _tenants_quota(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body = {
        "events_per_second": a.events_per_second,
        "points_per_second": a.points_per_second,
        "max_points": a.max_points,
        "max_artifact_bytes": a.max_artifact_bytes,
    }
    r = c.request("PUT", f"{API}/tenants/{_seg(a.tenant_id)}/quotas", body=body)
    return r, _quota_text(r)


def _quota_text(r: dict[str, Any]) -> str:
    def limit(v: int | None) -> str:
        return "unlimited" if v is None else str(v)

    return (
        f"tenant {r['tenant_id']}: events/s {limit(r['events_per_second'])}, "
        f"points/s {limit(r.get('points_per_second'))}, "
        f"points {r['points_used']} of {limit(r['max_points'])}, "
        f"artifact bytes {r['artifact_bytes_used']} of {limit(r['max_artifact_bytes'])}"
    )


def _principals_create(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("POST", f"{API}/principals", body={"kind": a.kind, "name": a.name})
    return (
        r,
        f"{r['kind']} {r['name']} created: {r['principal_id']} (no role yet: `runledger admin grants add`)",
    )


def _principals_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("GET", f"{API}/principals")
    rows = [
        {
            **p,
            "roles": ",".join(
                g["role"] + (f"@{g['experiment_id']}" if g.get("experiment_id") else "") for g in p["roles"]
            )
            or None,
            "disabled": "yes" if p.get("disabled_at") else "",
        }
        for p in r["principals"]
    ]
    return r, _table(rows, ["principal_id", "kind", "name", "roles", "disabled"])


def _principals_disable(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("POST", f"{API}/principals/{_seg(a.principal_id)}/disable")
    return r, _changed(r, f"{a.principal_id} disabled", f"{a.principal_id} was disabled already")


def _keys_create(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body = {"name": a.name, "expires_in_days": a.expires_in_days}
    r = c.request("POST", f"{API}/principals/{_seg(a.principal_id)}/keys", body=body)
    return r, _new_key_text(r)


def _keys_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("GET", f"{API}/keys", params={"principal_id": a.principal})
    return r, _table(r["keys"], ["key_id", "principal_id", "name", "created_at", "expires_at", "revoked_at"])


def _keys_revoke(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("DELETE", f"{API}/keys/{_seg(a.key_id)}")
    return r, f"key {r['key_id']} revoked" if r["revoked"] else f"key {r['key_id']} was revoked already"


def _grant_body(a: argparse.Namespace) -> dict[str, Any]:
    return {"principal_id": a.principal_id, "role": a.role, "experiment_id": a.experiment}


def _grant_text(a: argparse.Namespace) -> str:
    return f"{a.role} for {a.principal_id}" + (f" on experiment {a.experiment}" if a.experiment else "")


def _grants_add(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("POST", f"{API}/grants", body=_grant_body(a))
    return r, _changed(r, f"granted {_grant_text(a)}", f"{_grant_text(a)} was granted already")


def _grants_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("GET", f"{API}/grants", params={"principal_id": a.principal})
    return r, _table(r["grants"], ["principal_id", "role", "experiment_id", "granted_by", "granted_at"])


def _grants_remove(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("DELETE", f"{API}/grants", params=_grant_body(a))
    return r, f"removed {_grant_text(a)}"


def _shares_add(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request(
        "POST", f"{API}/shares", body={"experiment_id": a.experiment_id, "grantee_tenant": a.tenant}
    )
    what = f"experiment {a.experiment_id} with tenant {a.tenant}"
    return r, _changed(r, f"shared {what} (read-only)", f"{what} was shared already")


def _shares_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("GET", f"{API}/shares")
    columns = ["experiment_id", "experiment_name", "owner_tenant", "grantee_tenant", "created_at"]
    text = "outgoing:\n" + _table(r["outgoing"], columns) + "\nincoming:\n" + _table(r["incoming"], columns)
    return r, text


def _shares_remove(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("DELETE", f"{API}/shares/{_seg(a.experiment_id)}/{_seg(a.tenant)}")
    return r, f"experiment {a.experiment_id} is no longer shared with tenant {a.tenant}"


def parse_tag_requirement(spec: str) -> tuple[str, list[str]]:
    """`stage=dev,prod` -> ("stage", ["dev", "prod"]); `owner` -> ("owner", []) (any value)."""
    key, _, values = spec.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY or KEY=V1,V2, got {spec!r}")
    return key, [v for v in values.split(",") if v]


def _policy_text(r: dict[str, Any]) -> str:
    lines = [f"enforcement: {r['enforcement']}"]
    for key, allowed in sorted(r["required"].items()):
        lines.append(f"  {key}: {', '.join(allowed) if allowed else '(any value)'}")
    return "\n".join(lines)


def _tagging_set(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body = {"required": dict(a.requirements), "enforcement": "reject" if a.reject else "flag"}
    r = c.request("PUT", f"{API}/policies/tagging", body=body)
    return r, _policy_text(r)


def _tagging_show(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("GET", f"{API}/policies/tagging")
    return r, _policy_text(r)


def _tagging_clear(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    r = c.request("DELETE", f"{API}/policies/tagging")
    return r, _changed(r, "tagging policy removed", "there was no tagging policy")


def _audit(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    params = {
        "limit": a.limit,
        "outcome": a.outcome,
        "action": a.action,
        "actor": a.actor,
        "cursor": a.cursor,
        "scope": "platform" if a.platform else None,
    }
    r = c.request("GET", f"{API}/audit", params=params)
    rows = [
        {**e, "details": json.dumps(e["details"], sort_keys=True) if e["details"] else None}
        for e in r["entries"]
    ]
    text = _table(rows, ["seq", "at", "actor", "action", "target", "outcome", "source", "details"])
    if r.get("next_cursor"):
        text += f"\n(older entries: --cursor {r['next_cursor']})"
    return r, text


COMMANDS: dict[str, Command] = {
    "tenants.create": _tenants_create,
    "tenants.list": _tenants_list,
    "tenants.suspend": _tenant_status("suspend"),
    "tenants.resume": _tenant_status("resume"),
    "tenants.quota": _tenants_quota,
    "principals.create": _principals_create,
    "principals.list": _principals_list,
    "principals.disable": _principals_disable,
    "keys.create": _keys_create,
    "keys.list": _keys_list,
    "keys.revoke": _keys_revoke,
    "grants.add": _grants_add,
    "grants.list": _grants_list,
    "grants.remove": _grants_remove,
    "shares.add": _shares_add,
    "shares.list": _shares_list,
    "shares.remove": _shares_remove,
    "tagging.set": _tagging_set,
    "tagging.show": _tagging_show,
    "tagging.clear": _tagging_clear,
    "audit": _audit,
}


def run_admin(command: str, args: argparse.Namespace, settings: Settings) -> int:
    """Run one `runledger admin` command; 0 on success, 1 with the server's message otherwise."""
    try:
        client = AdminClient(resolve_connection(settings, args.url, args.api_key))
        result, text = COMMANDS[command](client, args)
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0
