"""`runledger retention show|set|plan|apply`: a tenant's retention over the running API.

The API is found like the admin commands' (--url / --api-key, else RUNLEDGER_URL /
RUNLEDGER_API_KEY, else connection.json). `plan` prints what `apply` would delete;
`apply` records every deletion as an event, then deletes.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from runledger.admin_client import API, AdminClient, AdminError, resolve_connection
from runledger.config import Settings


def parse_days(value: str) -> int | None:
    """`N` days, or `forever` (None)."""
    if value.lower() in ("forever", "never", "none"):
        return None
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of days or 'forever'") from None
    if days < 1:
        raise argparse.ArgumentTypeError("days must be at least 1")
    return days


def parse_as_of(value: str) -> int:
    """An ISO date or date-time (UTC unless it says otherwise) -> milliseconds since the epoch."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not an ISO date (YYYY-MM-DD[THH:MM[:SS]])") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def _when(value: int | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _days(value: int | None) -> str:
    return "forever" if value is None else f"{value} days"


def _policy_text(view: dict[str, Any]) -> str:
    origin = (
        "defaults"
        if view.get("is_default")
        else f"set {_when(view.get('updated_at'))} by {view.get('updated_by')}"
    )
    return (
        f"tenant {view['tenant_id']} ({origin})\n"
        f"  metric points:           {_days(view['metric_points_days'])}\n"
        f"  artifacts:               {_days(view['artifacts_days'])} after the run ended\n"
        f"  production model binaries: {'kept forever' if view['keep_production_models'] else 'expire like artifacts'}"
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def plan_text(plan: dict[str, Any]) -> str:
    """A plan as a person reads it: totals, then every series, artifact and blob."""
    totals = plan["totals"]
    lines = [
        f"retention plan of tenant {plan['tenant_id']} as of {_when(plan['as_of'])} UTC",
        f"  metric points logged before {_when(plan['metric_cutoff'])}: {totals['points']} points"
        f" in {totals['series']} series",
        f"  artifacts of runs ended before {_when(plan['artifact_cutoff'])}: {totals['artifacts']} files,"
        f" {_size(totals['artifact_bytes'])}",
        f"  blobs freed: {totals['blobs']} ({_size(totals['freed_bytes'])}); production model files kept:"
        f" {totals['kept_production_artifacts']}",
    ]
    if plan["series"]:
        lines.append("\nmetric points that go (run, key, points, oldest .. newest):")
        lines += [
            f"  {s['run_id']}  {s['key']}  {s['points']}  {_when(s['first_timestamp'])} .. {_when(s['last_timestamp'])}"
            for s in plan["series"]
        ]
    if plan["artifacts"]:
        lines.append("\nartifacts that go (run, path, bytes, digest):")
        lines += [f"  {a['run_id']}  {a['path']}  {a['size']}  {a['digest']}" for a in plan["artifacts"]]
    if plan["blobs"]:
        lines.append("\nblobs deleted from the store (no remaining reference):")
        lines += [f"  {b['digest']}  {b['size']}" for b in plan["blobs"]]
    if plan["kept"]:
        lines.append("\nkept on purpose:")
        lines += [f"  {k['run_id']}  {k['path']}  ({k['reason']})" for k in plan["kept"]]
    if not plan["series"] and not plan["artifacts"]:
        lines.append("\nnothing to delete")
    return "\n".join(lines)


def run_retention(args: argparse.Namespace, settings: Settings) -> int:
    """Run one `runledger retention` command; 0 on success, 1 with the server's message otherwise."""
    try:
        client = AdminClient(resolve_connection(settings, args.url, args.api_key), timeout=None)
        params: dict[str, Any] = {
            "tenant": getattr(args, "tenant", None),
            "as_of": getattr(args, "as_of", None),
        }
        if args.retention_command == "show":
            result = client.request("GET", f"{API}/retention-policy")
            text = _policy_text(result)
        elif args.retention_command == "set":
            current = client.request("GET", f"{API}/retention-policy")
            body = {
                "metric_points_days": current["metric_points_days"],
                "artifacts_days": current["artifacts_days"],
                "keep_production_models": current["keep_production_models"],
            }
            for name in ("metric_points_days", "artifacts_days", "keep_production_models"):
                value = getattr(args, name)
                if value is not _UNSET:
                    body[name] = value
            result = client.request("PUT", f"{API}/retention-policy", body=body)
            text = _policy_text(result)
        elif args.retention_command == "plan":
            for name in ("metric_points_days", "artifacts_days"):
                value = getattr(args, name)
                if value is not _UNSET:
                    params[name] = 0 if value is None else value  # 0 = forever in a query
            result = client.request("GET", f"{API}/retention/plan", params=params)
            text = plan_text(result)
        else:
            result = client.request("POST", f"{API}/retention/sweep", params=params)
            text = (
                f"tenant {result['tenant_id']}: {result['points']} points of {result['runs_with_metrics_expired']}"
                f" runs, {result['artifacts']} artifacts ({_size(result['artifact_bytes'])}) expired in"
                f" {result['events']} events; {len(result['blobs_deleted'])} blobs deleted"
                + (
                    ""
                    if result["projected"]
                    else " (events not projected yet: deletions wait for the next sweep)"
                )
            )
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0


_UNSET: Any = object()


def add_arguments(subparsers: Any, common: list[argparse.ArgumentParser]) -> None:
    """The show/set/plan/apply subcommands (registered by runledger.cli)."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text, parents=common)
        sub.set_defaults(retention_command=name)
        return sub

    command("show", "show the tenant's retention policy")
    setter = command("set", "change the tenant's retention policy (tenant admin; unnamed parts stay)")
    setter.add_argument("--metric-points-days", type=parse_days, default=_UNSET, metavar="N|forever")
    setter.add_argument("--artifacts-days", type=parse_days, default=_UNSET, metavar="N|forever")
    setter.add_argument(
        "--keep-production-models",
        action=argparse.BooleanOptionalAction,
        default=_UNSET,
        help="keep binaries of model versions ever in Production forever",
    )
    for name, text in (
        ("plan", "show what would be deleted, before it is (nothing changes)"),
        ("apply", "delete what the plan lists, recording each deletion as an event"),
    ):
        sub = command(name, text)
        sub.add_argument("--tenant", help="another tenant (platform superadmin)")
        sub.add_argument(
            "--as-of",
            type=parse_as_of,
            metavar="DATE",
            help="plan as of this ISO date/time, UTC (apply: not later than now); default now",
        )
        if name == "plan":
            for flag in ("--metric-points-days", "--artifacts-days"):
                sub.add_argument(
                    flag,
                    type=parse_days,
                    default=_UNSET,
                    metavar="N|forever",
                    help="preview another retention",
                )
