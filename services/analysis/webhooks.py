"""Delivers findings to the tenants' webhooks: signed JSON POSTs, retried, every attempt recorded.

The projector enqueues a `webhook_deliveries` row per (webhook, finding) in the finding's
own transaction (services/ingest/metadata_writer.py), so each finding is enqueued once
per webhook however often its event is applied. This dispatcher drains that queue:

- Claim: one short transaction picks due pending rows `FOR UPDATE SKIP LOCKED` (so any
  number of replicas share the queue), counts the attempt and moves `next_attempt_at`
  forward by a lease longer than the HTTP calls can take. No transaction is open while
  a receiver is called; a replica that dies mid-delivery leaves a row that becomes due
  again when its lease ends (the receiver may then see the finding twice: delivery is
  at-least-once, receivers dedupe by X-RunLedger-Event-Id).
- Deliver: POST with a bounded concurrency; the body is signed with the webhook's secret
  (X-RunLedger-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>).
- Record: one UPDATE per attempt, fenced by the attempt number the claim gave out, so a
  slow replica whose lease ran out cannot overwrite a newer attempt's result.

2xx: delivered. 408, 429, 5xx, timeouts and connection errors: retried with exponential
backoff and jitter (Retry-After honoured), failed after `max_attempts`. Any other
answer (4xx, redirects: never followed) fails at once.

Destinations (server-side request forgery): the URL is checked again before each attempt
(scheme, no userinfo, a literal IP's range), and the connection is opened by
GuardedBackend, which resolves the host itself, checks every address against the
DestinationPolicy (runledger.analysis.webhook_policy) and connects to a checked address,
never to the name: a DNS answer that changes between the check and the connect
(rebinding) cannot redirect it. TLS still verifies the URL's hostname (httpcore passes
it to start_tls as server_hostname, apart from the address it connected to). A refused
destination fails the delivery at once, like an invalid URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import asyncpg
import httpcore
import httpx
import orjson

from runledger.analysis.webhook_policy import DestinationPolicy, DestinationRefused, url_problem
from runledger.auth.sealing import SecretBox, SecretUnreadable, load_box

log = logging.getLogger(__name__)

USER_AGENT = "RunLedger-Webhooks/1"
# Answers worth retrying (besides every 5xx): the receiver timed out or throttles us.
_RETRYABLE = frozenset({408, 429})
# A Retry-After beyond this is capped (a receiver cannot park a delivery for days).
_MAX_RETRY_AFTER_S = 3600.0
# Kept of a failing receiver's answer in last_error (the rest is not read at all).
_ERROR_BODY_BYTES = 256

# Due rows of enabled webhooks whose finding exists (a replay may have removed it for a
# moment), oldest first; the attempt is counted and the row leased in the same statement.
_CLAIM = """
WITH due AS (
    SELECT d.tenant_id, d.webhook_id, d.event_id
    FROM webhook_deliveries d
    JOIN webhooks w ON w.tenant_id = d.tenant_id AND w.webhook_id = d.webhook_id AND w.enabled
    JOIN findings f ON f.tenant_id = d.tenant_id AND f.event_id = d.event_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND d.attempts < $1
    ORDER BY d.next_attempt_at
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $3)
FROM due, webhooks w, findings f
WHERE d.tenant_id = due.tenant_id AND d.webhook_id = due.webhook_id AND d.event_id = due.event_id
  AND w.tenant_id = d.tenant_id AND w.webhook_id = d.webhook_id
  AND f.tenant_id = d.tenant_id AND f.event_id = d.event_id
RETURNING d.tenant_id, d.webhook_id, d.event_id::text AS event_id, d.attempts, w.url, w.secret,
          f.run_id, f.experiment_id, f.kind, f.body, f.occurred_at
"""

# A row whose last attempt was claimed but never recorded (its replica died) and that has
# no attempt left: failed, not sent again.
_EXPIRE = """
UPDATE webhook_deliveries SET status = 'failed',
    last_error = COALESCE(last_error || '; ', '') || 'no attempt left after an unrecorded attempt'
WHERE status = 'pending' AND next_attempt_at <= now() AND attempts >= $1
"""

_RECORD = """
UPDATE webhook_deliveries
SET status = $5, last_status_code = $6, last_error = $7,
    next_attempt_at = CASE WHEN $5 = 'pending' THEN now() + make_interval(secs => $8) ELSE next_attempt_at END,
    delivered_at = CASE WHEN $5 = 'delivered' THEN now() ELSE delivered_at END
WHERE tenant_id = $1 AND webhook_id = $2 AND event_id = $3::uuid AND attempts = $4 AND status = 'pending'
"""


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claimed delivery: where to send which finding, and the attempt number it is."""

    tenant_id: str
    webhook_id: str
    event_id: str
    attempt: int
    url: str
    secret: str  # as stored: sealed (runledger.auth.sealing)
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to."""

    status: str  # delivered | pending (retry) | failed
    status_code: int | None
    error: str | None
    retry_in_s: float = 0.0


def sign(secret: str, body: bytes) -> str:
    """The X-RunLedger-Signature value of `body`: sha256=<hex HMAC-SHA256 keyed by the secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def payload(row: asyncpg.Record) -> bytes:
    """The JSON body a webhook receives for a claimed row (finding + delivery metadata)."""
    raw = row["body"]
    body: dict[str, Any] = orjson.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    evidence = body.get("evidence")
    message = evidence.get("message") if isinstance(evidence, dict) else None
    severity = body.get("severity")
    return orjson.dumps(
        {
            "event_id": row["event_id"],
            "tenant_id": row["tenant_id"],
            "run_id": row["run_id"],
            "experiment_id": row["experiment_id"],
            "kind": row["kind"],
            "occurred_at": _ms(row["occurred_at"]),
            # The same derivation as GET /findings, so both views agree.
            "severity": float(severity) if isinstance(severity, int | float) else None,
            "message": message if isinstance(message, str) else None,
            "body": body,
            "webhook_id": row["webhook_id"],
            "attempt": row["attempts"],
        }
    )


def retry_after_s(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), _MAX_RETRY_AFTER_S)


# --- destinations: resolve, check, connect to the checked address ------------------------------

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to for TCP, in the system's order of preference, deduplicated."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the destination policy allows.

    httpcore asks it for a TCP connection to the URL's host; it resolves the host once,
    drops every forbidden address and connects to the first allowed one that answers, by
    its IP. httpcore then starts TLS with the URL's hostname as server_hostname, so the
    certificate is verified against the name, not against the address."""

    def __init__(
        self,
        policy: DestinationPolicy,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        """`inner` connects (httpcore's default backend); `resolver` resolves (tests pass fakes)."""
        self._policy = policy
        self._inner: httpcore.AsyncNetworkBackend = inner or httpcore.AnyIOBackend()
        self._resolve = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, check every address, connect to an allowed one (DestinationRefused if none is)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except (
            OSError
        ) as exc:  # socket.gaierror: unknown name, no DNS answer (retried like any connect error)
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        allowed = [a for a in addresses if self._policy.allows(a)]
        if not allowed:
            if not addresses:
                raise httpcore.ConnectError(f"{host} resolves to no address")
            problem = self._policy.problem(addresses[0])
            named = f"{host} resolves to {', '.join(addresses[:4])}: " if host not in addresses else ""
            raise DestinationRefused(named + (problem or "refused"))
        error: Exception | None = None
        for address in allowed:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # the next address may answer (dual stack, several A records)
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # Never used (no uds= on the pool): a webhook reaches TCP destinations only.
        raise DestinationRefused("webhooks do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions as httpx's, most specific first (what the delivery code catches).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _httpx_errors():
                await self._stream.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections GuardedBackend opens.

    Written out (httpx.AsyncHTTPTransport takes no network backend, and swapping its
    private pool would break silently on an upgrade). No proxy, no environment."""

    def __init__(
        self,
        policy: DestinationPolicy,
        *,
        max_connections: int,
        keepalive_expiry_s: float = 5.0,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`resolver` and `inner` are the backend's, `ssl_context` replaces the system CAs (tests)."""
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
            network_backend=GuardedBackend(policy, inner=inner, resolver=resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class WebhookDispatcher:
    """Drains the webhook delivery queue of every tenant (run one or more per deployment)."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        http_timeout_s: float = 10.0,
        max_attempts: int = 8,
        backoff_base_s: float = 10.0,
        backoff_cap_s: float = 600.0,
        concurrency: int = 16,
        batch_size: int = 100,
        poll_interval_s: float = 0.3,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: DestinationPolicy | None = None,
        secrets: SecretBox | None = None,
    ) -> None:
        """`policy`: where webhooks may connect (default: RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS and
        RUNLEDGER_WEBHOOK_ALLOW_PRIVATE_NETWORKS). `transport` is for an in-process receiver
        (tests): it replaces the guarded transport, so only the URL checks of the policy apply.
        `secrets`: opens the stored signing secrets (default: RUNLEDGER_SECRETS_KEY's box)."""
        if max_attempts < 1 or concurrency < 1 or batch_size < 1:
            raise ValueError("max_attempts, concurrency and batch_size must be at least 1")
        self._pool = pool
        self._timeout_s = http_timeout_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._poll_s = poll_interval_s
        self._slots = asyncio.Semaphore(concurrency)
        if policy is None or secrets is None:
            from runledger.config import get_settings

            settings = get_settings()
            if policy is None:
                policy = DestinationPolicy.of(
                    settings.webhook_allowed_networks, settings.webhook_allow_private_networks
                )
            if secrets is None:
                secrets = load_box(settings.secrets_key, settings.state_dir)
        self._policy = policy
        self._secrets = secrets
        if transport is None:
            transport = GuardedTransport(policy, max_connections=concurrency)
        # trust_env=False: no proxy or netrc of the environment applies to tenants' URLs.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(http_timeout_s),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=concurrency),
        )

    async def aclose(self) -> None:
        """Close the HTTP client (run() does it on its way out)."""
        await self._client.aclose()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; claims only as many rows as it has free slots, so a slow
        receiver holds one slot, not a whole round. In-flight deliveries finish before it returns."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                free = self._concurrency - len(in_flight)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await self._claim(min(free, self._batch_size))
                    except Exception as exc:  # the loop outlives a database outage (or a bug): log, retry
                        log.warning("webhook claim failed (retrying): %r", exc)
                for item in claimed:
                    task = asyncio.create_task(self._deliver_and_record(item), name="webhook-delivery")
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if len(in_flight) >= self._concurrency:
                    # Every slot busy: claim again as soon as one frees.
                    await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                if claimed and len(claimed) == min(free, self._batch_size):
                    continue  # a full claim: more may be due now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_s)
        finally:
            if in_flight:
                await asyncio.wait(set(in_flight))
            await self.aclose()

    async def deliver_due(self) -> int:
        """One round: claim up to batch_size due deliveries, attempt each, record; the number attempted."""
        claimed = await self._claim(self._batch_size)
        await asyncio.gather(*(self._deliver_and_record(c) for c in claimed))
        return len(claimed)

    # --- steps -------------------------------------------------------------------------------

    def _lease_s(self, rows: int) -> float:
        """Long enough for every claimed row to be attempted through the concurrency bound."""
        return self._timeout_s * math.ceil(rows / self._concurrency) + 30.0

    async def _claim(self, limit: int) -> list[Claimed]:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_EXPIRE, self._max_attempts)
            rows = await conn.fetch(_CLAIM, self._max_attempts, limit, self._lease_s(limit))
        return [
            Claimed(
                tenant_id=r["tenant_id"],
                webhook_id=r["webhook_id"],
                event_id=r["event_id"],
                attempt=r["attempts"],
                url=r["url"],
                secret=r["secret"],
                body=payload(r),
            )
            for r in rows
        ]

    async def _deliver_and_record(self, item: Claimed) -> None:
        async with self._slots:
            try:
                outcome = await self._attempt(item)
            except Exception as exc:  # a bug must not lose the row: it is retried like a failure
                log.exception("webhook %s: attempt %d crashed", item.webhook_id, item.attempt)
                outcome = self._retry(item, None, f"internal error: {type(exc).__name__}", None)
        try:
            result = await self._pool.execute(
                _RECORD,
                item.tenant_id,
                item.webhook_id,
                item.event_id,
                item.attempt,
                outcome.status,
                outcome.status_code,
                outcome.error,
                outcome.retry_in_s,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The lease runs out and the row is attempted again: at-least-once.
            log.warning("webhook %s: recording attempt %d failed: %s", item.webhook_id, item.attempt, exc)
            return
        if result.endswith(" 0"):
            log.info(
                "webhook %s: attempt %d of %s superseded or deleted",
                item.webhook_id,
                item.attempt,
                item.event_id,
            )

    async def _attempt(self, item: Claimed) -> Outcome:
        try:
            secret = self._secrets.open(item.secret)
        except SecretUnreadable as exc:  # retried: a key missing from this process's settings can come back
            return self._retry(item, None, f"the webhook's signing secret cannot be opened: {exc}", None)
        headers = {
            "Content-Type": "application/json",
            "X-RunLedger-Event-Id": item.event_id,
            "X-RunLedger-Signature": sign(secret, item.body),
            "X-RunLedger-Timestamp": str(int(time.time())),
        }
        # Rows registered before the policy (or under a laxer one) are judged as they are sent.
        problem = url_problem(item.url, self._policy)
        if problem is not None:
            return Outcome("failed", None, problem[:500])
        try:
            # A bound on the whole attempt (httpx's timeouts are per operation: a receiver dripping
            # bytes could outlast the lease). Streamed: only the first bytes of a failing answer are read.
            async with (
                asyncio.timeout(self._timeout_s),
                self._client.stream("POST", item.url, content=item.body, headers=headers) as response,
            ):
                code = response.status_code
                if 200 <= code < 300:
                    return Outcome("delivered", code, None)
                detail = await _head(response)
                retry_after = retry_after_s(response.headers.get("retry-after"))
        except (httpx.TimeoutException, TimeoutError) as exc:
            return self._retry(item, None, f"timeout: {type(exc).__name__}", None)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return Outcome("failed", None, f"{type(exc).__name__}: {exc}"[:500])
        except DestinationRefused as exc:  # permanent: the same answer on every attempt
            return Outcome("failed", None, str(exc)[:500])
        except httpx.TransportError as exc:  # connection refused, reset, DNS, TLS, ...
            return self._retry(item, None, f"{type(exc).__name__}: {exc}"[:500], None)
        error = f"HTTP {code}" + (f": {detail}" if detail else "")
        if code >= 500 or code in _RETRYABLE:
            return self._retry(item, code, error, retry_after)
        if 300 <= code < 400:
            error += " (redirects are not followed)"
        return Outcome("failed", code, error)

    def _retry(self, item: Claimed, code: int | None, error: str, retry_after: float | None) -> Outcome:
        if item.attempt >= self._max_attempts:
            return Outcome("failed", code, f"{error} (gave up after {item.attempt} attempts)")
        if retry_after is not None:
            delay = retry_after
        else:
            # Exponential, with jitter in [50%, 100%] so failing receivers are not hit in lockstep.
            ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (item.attempt - 1))
            delay = ceiling * random.uniform(0.5, 1.0)
        return Outcome("pending", code, error, delay)


async def _head(response: httpx.Response) -> str:
    """The first bytes of an answer's body, as text (for last_error)."""
    data = b""
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= _ERROR_BODY_BYTES:
                break
    return data[:_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
