"""The `runledger` command: a thin argparse front; each subcommand calls a function elsewhere.

Add a subcommand by writing `_add_<name>(subparsers)`, which registers its parser with
`set_defaults(handler=...)`, and listing it in SUBCOMMANDS. Handlers receive the parsed
arguments and the settings (environment + overrides) and return the exit code. Heavy
modules are imported inside the handlers so that `runledger --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runledger.config import Settings, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings with the common command-line overrides applied."""
    overrides: dict[str, Any] = {}
    if getattr(args, "state_dir", None) is not None:
        overrides["state_dir"] = Path(args.state_dir)
    if getattr(args, "api_host", None) is not None:
        overrides["api_host"] = args.api_host
    if getattr(args, "api_port", None) is not None:
        overrides["api_port"] = args.api_port
    settings = get_settings()
    # model_validate re-runs validation on the merged values (model_copy would not).
    return Settings.model_validate({**settings.model_dump(), **overrides}) if overrides else settings


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", help="state directory (default: $RUNLEDGER_STATE_DIR or .runledger)")


def _add_api_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-host", help="address the API listens on (default: $RUNLEDGER_API_HOST)")
    parser.add_argument("--api-port", type=int, help="API port (default: $RUNLEDGER_API_PORT or 8765)")


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.embedded.supervisor import run_up

    return run_up(settings)


def _add_up(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the embedded stack (PostgreSQL, Kafka broker, API + projector) in the foreground",
        description="Start PostgreSQL, the tansu broker and the services under one supervisor; "
        "Ctrl-C stops them. Parts with an external URL/DSN configured are not started.",
    )
    _add_state_dir(parser)
    _add_api_address(parser)
    parser.set_defaults(handler=_cmd_up)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.serve import serve

    serve(args.role, settings)
    return 0


def _add_serve(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run one service process against configured stores (distributed mode)",
        description="all = API + projector + analysis in one process (what `up` runs); api, ingest or"
        " analysis alone for the distributed mode, with RUNLEDGER_KAFKA_BOOTSTRAP, _POSTGRES_DSN and"
        " _CLICKHOUSE_URL set (analysis also needs RUNLEDGER_ANALYSIS_API_KEY, a superadmin key).",
    )
    parser.add_argument("role", choices=["all", "api", "ingest", "analysis"])
    _add_state_dir(parser)
    _add_api_address(parser)
    parser.set_defaults(handler=_cmd_serve)


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.events.schema_export import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def _add_schemas(subparsers: Any) -> None:
    parser = subparsers.add_parser("schemas", help="write the JSON Schema of every event under schemas/")
    parser.add_argument("--out", default="schemas", help="root directory (default: schemas)")
    parser.set_defaults(handler=_cmd_schemas)


def _cmd_config_doc(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.config_doc import render

    Path(args.out).write_text(render())
    print(args.out)
    return 0


def _add_config_doc(subparsers: Any) -> None:
    parser = subparsers.add_parser("config-doc", help="write docs/configuration.md from the settings models")
    parser.add_argument("--out", default="docs/configuration.md")
    parser.set_defaults(handler=_cmd_config_doc)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.admin_client import replay

    return replay(settings, args.url)


def _add_replay(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="rebuild every projection (Postgres, ClickHouse) from the event archive",
        description="Asks the running services (url from connection.json, or --url) to pause the "
        "projector, wipe the projections and re-apply the archive.",
    )
    _add_state_dir(parser)
    parser.add_argument("--url", help="API base URL (default: from <state dir>/connection.json)")
    parser.set_defaults(handler=_cmd_replay)


def _cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from runledger_sdk.sync import sync_command

    return sync_command(
        Path(args.dir) if args.dir is not None else None,
        url=args.url,
        kafka_bootstrap=args.kafka_bootstrap,
        api_key=args.api_key,
        topic=args.topic,
        state_dir=settings.state_dir,
        force=args.force,
        skip_rejected=args.skip_rejected,
    )


def _add_sync(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="send the events that offline mode (RUNLEDGER_MODE=offline) wrote to DIR",
        description="Sends every offline segment of DIR in order through the SDK's HTTP or Kafka "
        "transport (default target: RUNLEDGER_URL / RUNLEDGER_KAFKA_BOOTSTRAP, else <state dir>/"
        "connection.json, as the SDK resolves it). Safe to repeat: events keep their event ids and "
        "duplicates are dropped; segments already acknowledged are marked (.synced) and skipped. "
        "Exit code 1 when something could not be sent (it is left for the next sync).",
    )
    parser.add_argument(
        "dir",
        nargs="?",
        metavar="DIR",
        help="offline directory (default: $RUNLEDGER_OFFLINE_DIR or .runledger/offline)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="API base URL: send over HTTP (POST {URL}/api/v1/events)")
    target.add_argument("--kafka-bootstrap", metavar="HOST:PORT", help="send to Kafka directly")
    parser.add_argument(
        "--api-key", help="API key for --url (default: $RUNLEDGER_API_KEY or connection.json)"
    )
    parser.add_argument("--topic", help="events topic for Kafka (default: $RUNLEDGER_EVENTS_TOPIC)")
    parser.add_argument("--force", action="store_true", help="ignore the markers: send every segment again")
    parser.add_argument(
        "--skip-rejected",
        action="store_true",
        help="count events the target refuses for good as done (default: stop there, exit 1)",
    )
    _add_state_dir(parser)
    parser.set_defaults(handler=_cmd_sync)


def _cmd_admin(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.admin_client import run_admin

    return run_admin(args.admin_command, args, settings)


def _admin_connection_options() -> argparse.ArgumentParser:
    """Options every `admin` command takes (a parent parser, so they go after the command)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="API base URL (default: $RUNLEDGER_URL, else connection.json)")
    common.add_argument("--api-key", help="API key (default: $RUNLEDGER_API_KEY, else connection.json)")
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    _add_state_dir(common)
    return common


def _add_admin(subparsers: Any) -> None:
    from runledger.admin_client import parse_tag_requirement

    parser = subparsers.add_parser(
        "admin",
        help="administer tenants, users, service accounts, keys, roles, sharing, tagging; read the audit log",
        description="Talks to a running API with an admin key. Tenants are for the platform superadmin;"
        " everything else acts on the key's own tenant and needs its admin role. Exit code 1 with the"
        " server's message when a request is refused.",
    )
    parser.set_defaults(handler=_cmd_admin)
    common = [_admin_connection_options()]
    groups = parser.add_subparsers(dest="admin_group", metavar="GROUP", required=True)

    def command(group: Any, name: str, action: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, parents=common)
        sub.set_defaults(admin_command=action)
        return sub

    tenants = groups.add_parser("tenants", help="tenants (superadmin)").add_subparsers(
        metavar="COMMAND", required=True
    )
    create = command(tenants, "create", "tenants.create", "create a tenant (and its first admin)")
    create.add_argument("tenant_id")
    create.add_argument("--name", help="display name (default: the id)")
    create.add_argument("--admin-user", help="create this user as the tenant's admin and print its key")
    command(tenants, "list", "tenants.list", "list tenants")
    command(tenants, "suspend", "tenants.suspend", "suspend a tenant (its keys stop working)").add_argument(
        "tenant_id"
    )
    command(tenants, "resume", "tenants.resume", "re-activate a tenant").add_argument("tenant_id")
    quota = command(tenants, "quota", "tenants.quota", "set a tenant's limits (an omitted limit = unlimited)")
    quota.add_argument("tenant_id")
    quota.add_argument("--events-per-second", type=int)
    quota.add_argument("--points-per-second", type=int, help="metric points a second")
    quota.add_argument("--max-points", type=int)
    quota.add_argument("--max-artifact-bytes", type=int)

    principals = groups.add_parser("principals", help="users and service accounts").add_subparsers(
        metavar="COMMAND", required=True
    )
    create = command(principals, "create", "principals.create", "create a user or service account")
    create.add_argument("name")
    create.add_argument("--kind", choices=["user", "service_account"], default="user")
    command(principals, "list", "principals.list", "list users and service accounts with their roles")
    command(
        principals, "disable", "principals.disable", "disable a principal (its keys stop working)"
    ).add_argument("principal_id")

    keys = groups.add_parser("keys", help="API keys").add_subparsers(metavar="COMMAND", required=True)
    create = command(keys, "create", "keys.create", "create a key for a principal (shown once)")
    create.add_argument("principal_id")
    create.add_argument("--name", default="")
    create.add_argument("--expires-in-days", type=int)
    command(keys, "list", "keys.list", "list keys (never their secrets)").add_argument(
        "--principal", help="only this principal's keys"
    )
    command(keys, "revoke", "keys.revoke", "revoke a key").add_argument("key_id")

    grants = groups.add_parser("grants", help="role grants").add_subparsers(metavar="COMMAND", required=True)
    for name, action, text in (
        ("add", "grants.add", "grant a role (optionally on one experiment)"),
        ("remove", "grants.remove", "remove a grant"),
    ):
        grant = command(grants, name, action, text)
        grant.add_argument("principal_id")
        grant.add_argument("role", choices=["viewer", "engineer", "admin"])
        grant.add_argument("--experiment", help="narrow the grant to this experiment id")
    command(grants, "list", "grants.list", "list role grants").add_argument(
        "--principal", help="only this principal's grants"
    )

    shares = groups.add_parser("shares", help="read-only sharing of experiments with other tenants")
    share_commands = shares.add_subparsers(metavar="COMMAND", required=True)
    for name, action, text in (
        ("add", "shares.add", "share an experiment read-only with another tenant"),
        ("remove", "shares.remove", "withdraw a share"),
    ):
        share = command(share_commands, name, action, text)
        share.add_argument("experiment_id")
        share.add_argument("tenant", help="the grantee tenant")
    command(share_commands, "list", "shares.list", "list outgoing and incoming shares")

    tagging = groups.add_parser("tagging", help="the tenant's tagging policy").add_subparsers(
        metavar="COMMAND", required=True
    )
    policy = command(tagging, "set", "tagging.set", "require run tags (replaces the policy)")
    policy.add_argument(
        "requirements",
        nargs="+",
        type=parse_tag_requirement,
        metavar="KEY[=V1,V2]",
        help="a required tag key, optionally with its allowed values",
    )
    policy.add_argument("--reject", action="store_true", help="reject runs that miss them (default: flag)")
    command(tagging, "show", "tagging.show", "show the tagging policy")
    command(tagging, "clear", "tagging.clear", "remove the tagging policy")

    audit = command(groups, "audit", "audit", "read the tenant's audit log, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--cursor", type=int, help="continue with entries older than this seq")
    audit.add_argument("--outcome", choices=["ok", "denied"])
    audit.add_argument("--action", help="action prefix, e.g. key.")
    audit.add_argument("--actor", help="principal or key id")
    audit.add_argument("--platform", action="store_true", help="platform entries (superadmin)")


def _cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest import dlq_tools

    try:
        if args.dlq_command == "list":
            return dlq_tools.list_command(
                settings,
                bootstrap=args.kafka_bootstrap,
                reason=args.reason,
                limit=args.limit,
                as_json=args.json,
                out=sys.stdout,
            )
        if args.dlq_command == "show":
            return dlq_tools.show_command(
                settings, bootstrap=args.kafka_bootstrap, letter_id=args.id, raw=args.raw, out=sys.stdout
            )
        return dlq_tools.replay_command(
            settings,
            bootstrap=args.kafka_bootstrap,
            reason=args.reason,
            ids=args.ids,
            replay_all=args.all,
            dry_run=args.dry_run,
            out=sys.stdout,
        )
    except dlq_tools.DlqError as exc:
        print(f"runledger dlq: {exc}", file=sys.stderr)
        return 1


def _add_dlq(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="inspect the dead-letter topic and re-drive dead letters after a fix",
        description="Reads RUNLEDGER_DLQ_TOPIC on the broker (--kafka-bootstrap, else"
        " RUNLEDGER_KAFKA_BOOTSTRAP, else connection.json). A letter's id is PARTITION:OFFSET in that"
        " topic. Format and workflow: docs/dead-letters.md.",
    )
    parser.set_defaults(handler=_cmd_dlq)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kafka-bootstrap", metavar="HOST:PORT", help="the broker (default: see above)")
    _add_state_dir(common)
    commands = parser.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)
    listing = commands.add_parser(
        "list", parents=[common], help="dead letters: id, time, size, source@offset, reason"
    )
    listing.add_argument("--reason", help="only letters whose reason starts with this (e.g. 'clock skew')")
    listing.add_argument("--limit", type=int, default=50, help="the newest N (default 50; 0 = all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per letter")
    show = commands.add_parser("show", parents=[common], help="one dead letter with its message")
    show.add_argument("id", help="PARTITION:OFFSET (as `list` prints it)")
    show.add_argument("--raw", action="store_true", help="write the exact bytes of the message to stdout")
    replay = commands.add_parser(
        "replay",
        parents=[common],
        help="send dead letters' original messages back onto the events topic",
        description="Re-sends the exact bytes, keyed as before. The projector judges them again:"
        " events that now pass are projected, others are dead-lettered again, and events already"
        " applied are dropped by event id (replaying twice is harmless).",
    )
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--reason", help="every letter whose reason starts with this")
    which.add_argument("--all", action="store_true", help="every letter of the topic")
    replay.add_argument("ids", nargs="*", metavar="ID", help="these letters (PARTITION:OFFSET)")
    replay.add_argument("--dry-run", action="store_true", help="print what would be sent, send nothing")


def _cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from runledger.retention_cli import run_retention

    return run_retention(args, settings)


def _add_retention(subparsers: Any) -> None:
    from runledger.retention_cli import add_arguments

    parser = subparsers.add_parser(
        "retention",
        help="the tenant's retention policy: show, set, plan (what would go), apply",
        description="Talks to a running API. Metric points and artifacts older than the tenant's policy"
        " are deleted (each deletion recorded as an event first); `plan` lists them before they go.",
    )
    parser.set_defaults(handler=_cmd_retention)
    add_arguments(
        parser.add_subparsers(dest="retention_command", metavar="COMMAND", required=True),
        [_admin_connection_options()],
    )


SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_up,
    _add_serve,
    _add_schemas,
    _add_config_doc,
    _add_replay,
    _add_sync,
    _add_admin,
    _add_dlq,
    _add_retention,
]


def build_parser() -> argparse.ArgumentParser:
    """The `runledger` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="runledger", description="RunLedger: event-sourced ML tracking.")
    parser.add_argument("--log-level", help="logging level (default: $RUNLEDGER_LOG_LEVEL or INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `runledger` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every dropped connection at ERROR; a broker restart is ours to report.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per health check otherwise
    handler: Handler = args.handler
    return handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
