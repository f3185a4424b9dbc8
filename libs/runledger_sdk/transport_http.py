"""HTTP transport: POST {url}/api/v1/events with a JSON array of envelopes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import httpx

from runledger_sdk.config import SdkSettings
from runledger_sdk.transport import Outcome, Record, Transport

log = logging.getLogger("runledger_sdk.http")

# 4xx that mean "later", not "never".
_RETRYABLE_4XX = frozenset({408, 425, 429})


class HttpTransport(Transport):
    """For clients that cannot reach Kafka: 2xx acknowledges, 4xx rejects, 5xx retries."""

    name = "http"

    def __init__(self, settings: SdkSettings) -> None:
        self._endpoint = settings.url.rstrip("/") + "/api/v1/events"
        self._max_bytes = settings.http_max_request_bytes
        self._attempts = settings.http_retries
        headers = {"Content-Type": "application/json", "User-Agent": "runledger-python-sdk"}
        api_key = settings.api_key.get_secret_value()
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=settings.send_timeout_s)

    def send(self, records: Sequence[Record], timeout: float) -> list[Outcome]:
        """POST `records` in bodies of at most http_max_request_bytes, in order."""
        deadline = time.monotonic() + timeout
        outcomes: list[Outcome] = []
        for group in self._groups(records):
            outcome = self._post(group, deadline)
            outcomes.extend([outcome] * len(group))
            if outcome is Outcome.FAILED:
                # Stop at the first failure so that later events are not delivered ahead.
                outcomes.extend([Outcome.FAILED] * (len(records) - len(outcomes)))
                break
        return outcomes

    def _groups(self, records: Sequence[Record]) -> Iterator[Sequence[Record]]:
        start, size = 0, 2
        for i, record in enumerate(records):
            if i > start and size + len(record.value) + 1 > self._max_bytes:
                yield records[start:i]
                start, size = i, 2
            size += len(record.value) + 1
        if start < len(records):
            yield records[start:]

    def _post(self, group: Sequence[Record], deadline: float) -> Outcome:
        body = b"[" + b",".join(r.value for r in group) + b"]"
        delay = 0.2
        for attempt in range(1, self._attempts + 1):
            wait = 0.0
            remaining = max(deadline - time.monotonic(), 0.5)
            try:
                response = self._client.post(self._endpoint, content=body, timeout=remaining)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return Outcome.ACKED
                if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                    log.error(
                        "the API rejected %d event(s) with %d: %s", len(group), status, response.text[:1000]
                    )
                    return Outcome.REJECTED
                reason = f"HTTP {status}"
                wait = _retry_after(response)
            if attempt == self._attempts or time.monotonic() + max(delay, wait) > deadline:
                self.last_error = f"POST {self._endpoint}: {reason}"
                break
            time.sleep(max(delay, wait))  # a 429's Retry-After: the tenant's quota refills by then
            delay *= 2
        return Outcome.FAILED

    def close(self, timeout: float) -> None:
        """Close the connection pool."""
        self._client.close()


def _retry_after(response: httpx.Response) -> float:
    """Seconds the server asked to wait (Retry-After in seconds), else 0."""
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
