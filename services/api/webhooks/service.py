"""What the webhook routes do: validate, change the tenant's webhooks, audit.

A URL must pass the destination policy (runledger.analysis.webhook_policy): http(s), no
userinfo, and no literal IP outside the public ranges the operator did not allow. A
hostname is resolved here with a short deadline and refused when every address it has
is forbidden; when resolution fails or is slow the URL is accepted and the dispatcher,
which checks the addresses of every delivery, refuses it then (DNS may change anyway).

Only a tenant admin gets here (the endpoints check). Every change commits with its
audit entry in one transaction. An unknown id, or another tenant's, is a 404 and a
denied attempt in the caller's own audit log, like the org-admin routes.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

from runledger.analysis.webhook_policy import DestinationPolicy, literal_ip, url_problem
from runledger.auth.sealing import SecretBox
from runledger.stores.postgres import directory
from runledger.stores.postgres.directory import AuditEntry
from services.api.audit import AuditSink
from services.api.errors import InvalidParameter, NotFound
from services.api.pagination import fingerprint, split_page, time_id_position
from services.api.principal import Principal
from services.api.webhooks import schemas
from services.api.webhooks.repository import WebhookRepository

MAX_URL_LENGTH = 2048
# How long registration waits for a hostname's addresses before accepting it unjudged
# (the dispatcher judges every delivery's addresses anyway).
RESOLVE_TIMEOUT_S = 1.0
# Every finding is enqueued once per matching webhook: a cap keeps that fan-out bounded.
MAX_WEBHOOKS_PER_TENANT = 100
# Keyset positions past year 9999 do not fit a datetime.
_MAX_MICROS = 253_402_300_799_000_000
_ID = re.compile(r"wh_[0-9a-f]{16}")
# Control characters (NUL above all: PostgreSQL text cannot hold it) and whitespace.
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
_BAD_KIND_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str, limit: int = 300) -> str:
    """`text` safe for a PostgreSQL text column and short: control characters escaped."""
    return _BAD_KIND_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit])


def new_webhook_id() -> str:
    return "wh_" + secrets.token_hex(8)


def new_secret() -> str:
    """32 random bytes, urlsafe base64."""
    return secrets.token_urlsafe(32)


def validate_url(url: str, policy: DestinationPolicy) -> str:
    """The URL if a webhook may call it as far as can be told without DNS; InvalidParameter otherwise.

    http or https, a host, no userinfo, a literal IP only in a range the policy allows."""
    if not url:
        raise InvalidParameter("url must not be empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidParameter(f"url is longer than {MAX_URL_LENGTH} characters")
    if _BAD_URL_CHARS.search(url):
        raise InvalidParameter("url must not contain whitespace or control characters")
    problem = url_problem(url, policy)
    if problem is not None:
        raise InvalidParameter(problem)
    if urlsplit(url).port == 0:
        raise InvalidParameter("url must not name port 0")
    return url


async def check_resolved(url: str, policy: DestinationPolicy, timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
    """InvalidParameter when the URL's hostname resolves, within `timeout_s`, only to forbidden addresses.

    An unknown name, a resolver error or a slow answer passes: delivery resolves again and
    refuses what is forbidden then."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or literal_ip(host) is not None:
        return  # a literal IP was judged by validate_url
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (TimeoutError, OSError, ValueError):  # UnicodeError (IDNA) is a ValueError
        return
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if addresses and not any(policy.allows(a) for a in addresses):
        problem = policy.problem(addresses[0])
        raise InvalidParameter(f"url: {host} resolves to {', '.join(addresses[:4])}: {problem}")


def validate_kinds(kinds: list[str]) -> list[str]:
    """The kinds, deduplicated and sorted; InvalidParameter for a kind with control characters."""
    for kind in kinds:
        if _BAD_KIND_CHARS.search(kind) or not kind.strip():
            raise InvalidParameter(f"invalid finding kind {kind!r}")
    return sorted(set(kinds))


class WebhookService:
    """Webhook administration acting for one tenant admin."""

    def __init__(
        self,
        repository: WebhookRepository,
        audit: AuditSink,
        principal: Principal,
        request: str,
        policy: DestinationPolicy,
        secrets: SecretBox,
    ) -> None:
        """`request` ("METHOD path") names a refused attempt in the audit log; `policy` judges URLs;
        `secrets` seals the signing secrets before they are stored."""
        self._policy = policy
        self._secrets = secrets
        self._repo = repository
        self._audit = audit
        self._principal = principal
        # The path is percent-decoded: a NUL in it would make the audit batch unwritable.
        self._request = _printable(request)

    def _entry(self, action: str, webhook_id: str, details: dict[str, Any]) -> AuditEntry:
        return AuditEntry(
            tenant_id=self._principal.tenant_id,
            actor=self._principal.principal_id,
            action=action,
            outcome="ok",
            target=webhook_id,
            source=self._principal.source,
            details=details,
        )

    def _not_found(self, webhook_id: str) -> NotFound:
        """A 404, recorded as a denied attempt in the caller's tenant."""
        self._audit.record(
            AuditEntry(
                tenant_id=self._principal.tenant_id,
                actor=self._principal.principal_id,
                action=self._request,
                outcome="denied",
                source=self._principal.source,
                details={"reason": f"not found: webhook {_printable(webhook_id, 100)}"},
            )
        )
        return NotFound(f"webhook {webhook_id[:100]!r} does not exist")

    def _known_id(self, webhook_id: str) -> str:
        # Not an id this service makes: answered without a query (and no odd bytes reach SQL).
        if not _ID.fullmatch(webhook_id):
            raise self._not_found(webhook_id)
        return webhook_id

    async def create(self, body: schemas.WebhookCreate) -> schemas.WebhookCreated:
        url = validate_url(body.url, self._policy)
        kinds = validate_kinds(body.kinds)
        await check_resolved(url, self._policy)
        secret = new_secret()
        webhook_id = new_webhook_id()
        async with self._repo.transaction() as conn:
            if await self._repo.count(conn) >= MAX_WEBHOOKS_PER_TENANT:
                raise InvalidParameter(f"a tenant may have at most {MAX_WEBHOOKS_PER_TENANT} webhooks")
            hook = await self._repo.create(
                conn,
                webhook_id,
                url,
                self._secrets.seal(secret),
                kinds,
                body.enabled,
                self._principal.principal_id,
            )
            details = {"url": url, "kinds": kinds, "enabled": body.enabled}  # never the secret
            await directory.append_audit(conn, [self._entry("webhook.create", webhook_id, details)])
        return schemas.WebhookCreated(**hook.model_dump(), secret=secret)

    async def new_secret(self, webhook_id: str) -> schemas.WebhookCreated:
        """Replace the signing secret at once (shown this once); deliveries from now on carry it."""
        webhook_id = self._known_id(webhook_id)
        secret = new_secret()
        async with self._repo.transaction() as conn:
            hook = await self._repo.replace_secret(conn, webhook_id, self._secrets.seal(secret))
            if hook is None:
                raise self._not_found(webhook_id)
            await directory.append_audit(conn, [self._entry("webhook.new_secret", webhook_id, {})])
        return schemas.WebhookCreated(**hook.model_dump(), secret=secret)

    async def list_webhooks(self) -> schemas.WebhookList:
        return schemas.WebhookList(webhooks=await self._repo.list_all())

    async def get(self, webhook_id: str) -> schemas.Webhook:
        hook = await self._repo.get(self._known_id(webhook_id))
        if hook is None:
            raise self._not_found(webhook_id)
        return hook

    async def update(self, webhook_id: str, body: schemas.WebhookUpdate) -> schemas.Webhook:
        self._known_id(webhook_id)
        url = validate_url(body.url, self._policy) if body.url is not None else None
        kinds = validate_kinds(body.kinds) if body.kinds is not None else None
        if url is not None:
            await check_resolved(url, self._policy)
        details = {
            k: v for k, v in {"url": url, "kinds": kinds, "enabled": body.enabled}.items() if v is not None
        }
        async with self._repo.transaction() as conn:
            hook = await self._repo.update(conn, webhook_id, url, kinds, body.enabled)
            if hook is None:
                raise self._not_found(webhook_id)
            await directory.append_audit(conn, [self._entry("webhook.update", webhook_id, details)])
        return hook

    async def delete(self, webhook_id: str) -> schemas.Deleted:
        self._known_id(webhook_id)
        async with self._repo.transaction() as conn:
            if not await self._repo.delete(conn, webhook_id):
                raise self._not_found(webhook_id)
            await directory.append_audit(conn, [self._entry("webhook.delete", webhook_id, {})])
        return schemas.Deleted()

    async def deliveries(
        self, webhook_id: str, status: str | None, page_size: int, page_token: str | None
    ) -> schemas.DeliveryList:
        """One page of the webhook's deliveries, newest first; 404 for an unknown webhook."""
        await self.get(webhook_id)
        scope = fingerprint("webhook-deliveries", webhook_id, status)
        after = time_id_position(page_token, scope)
        if after is not None:
            # The token is the client's to forge: a position out of range must be a 400, not a 500.
            try:
                uuid.UUID(after[1])
            except ValueError:
                raise InvalidParameter("invalid page_token") from None
            if not 0 <= after[0] < _MAX_MICROS:
                raise InvalidParameter("invalid page_token")
        rows = await self._repo.deliveries(webhook_id, status, after, page_size + 1)
        page, next_token = split_page(rows, page_size, lambda r: [r.micros, r.delivery.event_id], scope)
        return schemas.DeliveryList(deliveries=[r.delivery for r in page], next_page_token=next_token)
