"""Kafka transport: kafka-python's KafkaProducer, keyed by run id (per-run ordering)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from runledger.incarnation import fenced_client_id
from runledger_sdk.config import SdkSettings
from runledger_sdk.resend import ResendWindow
from runledger_sdk.transport import Outcome, Record, Transport

log = logging.getLogger("runledger_sdk.kafka")

_CLIENT_ID = "runledger-sdk"

# Errors that a retry later can fix even though Kafka calls them non-retriable: a
# permission fixed by an admin must not turn into lost events; UNKNOWN_SERVER_ERROR is what
# the embedded broker (tansu 0.6.0) answers a produce that lost a race for its offsets, with
# nothing stored (libs/runledger/embedded/rotation.py, `start_behind_gate`).
_RETRY_ANYWAY = (
    "TopicAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "KafkaTimeoutError",
    "UnknownError",
)


class KafkaTransport(Transport):
    """Sends records to the events topic; the producer is created on first use (lazily),
    so a broker that is down at start costs a spooled batch, not a failing start_run.

    Acknowledged records are kept for RUNLEDGER_KAFKA_RESEND_WINDOW_S and sent again, ahead
    of newer ones, when the broker turns out to be a new incarnation (runledger_sdk.resend).
    The producer is fenced to the incarnation it last saw, so that nothing newer reaches a
    new one ahead of them (`_fenced_producer`).
    """

    name = "kafka"

    def __init__(self, settings: SdkSettings) -> None:
        self._settings = settings
        self._topic = settings.events_topic
        self._producer: Any = None
        # The incarnation the producer is fenced to (named in its client id), once known.
        self._fence: str | None = None
        self._resend = ResendWindow(settings.kafka_resend_window_s, settings.kafka_resend_window_bytes)

    def _config(self) -> dict[str, Any]:
        s = self._settings
        delivery_ms = max(int(s.send_timeout_s * 1000), 1000)
        return {
            "bootstrap_servers": [b.strip() for b in s.kafka_bootstrap.split(",") if b.strip()],
            "client_id": _CLIENT_ID if self._fence is None else fenced_client_id(_CLIENT_ID, self._fence),
            "acks": "all",
            "compression_type": "lz4",
            "linger_ms": s.kafka_linger_ms,
            "batch_size": s.kafka_batch_size,
            "max_request_size": s.kafka_max_request_size,
            # Retries are bounded by delivery_timeout_ms: then the record's future fails and
            # the record goes to the spool (same bytes, same event_id, sent again later).
            "retry_backoff_ms": 100,
            "delivery_timeout_ms": delivery_ms,
            "request_timeout_ms": max(delivery_ms - s.kafka_linger_ms - 1, 500),
            "max_block_ms": delivery_ms,
            "bootstrap_timeout_ms": delivery_ms,
            "reconnect_backoff_max_ms": 1000,
            # One request in flight per connection keeps a run's events in order across
            # retries. Idempotence is off: producer-id state does not survive a broker that
            # restarts with memory storage, and duplicates are dropped by event_id anyway.
            "enable_idempotence": False,
            "max_in_flight_requests_per_connection": 1,
            # Topics are created by the platform (partition count is its decision).
            "allow_auto_create_topics": False,
        }

    def _connect(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer  # imported late: `import runledger_sdk` stays light

            # kafka-python logs every failed reconnect at ERROR: an outage would flood the
            # training output. The SDK reports outages itself (one warning each), so quiet
            # kafka's loggers unless the application configured them.
            kafka_log = logging.getLogger("kafka")
            if kafka_log.level == logging.NOTSET:
                kafka_log.setLevel(logging.CRITICAL)

            producer = KafkaProducer(**self._config())
            # kafka-python closes its producers in its own atexit hook, which runs before
            # ours (registered earlier) and would cut off the final flush: we close it.
            cleanup = getattr(producer, "_cleanup", None)
            if cleanup is not None:
                atexit.unregister(cleanup)
            self._producer = producer
        return self._producer

    def send(self, records: Sequence[Record], timeout: float) -> list[Outcome]:
        """Produce `records` and wait for every acknowledgement (bounded by the delivery timeout).

        First, when the broker is a new incarnation, the records the old one acknowledged
        within the resend window go again (in order, before these); until they are
        acknowledged, nothing newer is sent.
        """
        try:
            producer = self._connect()
        except Exception as exc:
            self.last_error = f"cannot connect to {self._settings.kafka_bootstrap}: {exc}"
            log.debug("%s", self.last_error)
            return [Outcome.FAILED] * len(records)
        if not self._resend.enabled:
            return self._produce(producer, records, timeout)
        fenced = self._fenced_producer(timeout)
        if fenced is None:
            return [Outcome.FAILED] * len(records)
        producer, incarnation = fenced
        if not self._resend_orphans(producer, incarnation, timeout):
            return [Outcome.FAILED] * len(records)
        outcomes = self._produce(producer, records, timeout)
        # Labelled with the incarnation seen before the send: if the broker was replaced
        # meanwhile, the next send finds them orphaned and sends them again.
        self._resend.add(
            incarnation, [r for r, o in zip(records, outcomes, strict=True) if o is Outcome.ACKED]
        )
        return outcomes

    def _fenced_producer(self, timeout: float) -> tuple[Any, str] | None:
        """A producer that writes only to the broker's current incarnation, and that
        incarnation (None: not known yet).

        The producer names its incarnation in its client id, and the embedded broker's relay
        refuses its produces on any other (libs/runledger/embedded/produce_gate.py). A new
        incarnation gets a new producer: whatever the old one still held queued or retried
        would otherwise reach the new broker ahead of the records sent again."""
        producer = self._connect()
        incarnation = self._incarnation(producer, timeout)
        if incarnation is None:
            return None
        if incarnation != self._fence:
            self._close_producer(0.0)
            self._fence = incarnation
            producer = self._connect()
            if self._incarnation(producer, timeout) != incarnation:
                return None  # replaced again meanwhile: the next send starts over
        return producer, incarnation

    @staticmethod
    def _incarnation(producer: Any, timeout: float) -> str | None:
        """The broker's cluster id, refreshed first when a connection dropped (None: unknown)."""
        cluster = producer._metadata  # kafka.cluster.ClusterMetadata (private, stable across 2.x/3.x)
        if cluster.need_update or cluster.cluster_id is None:
            # A dropped connection flags the metadata for refresh: the broker may be a new
            # one. Wait for the refresh, or the first records would reach the new broker
            # ahead of the ones to send again.
            future = cluster.request_update()
            deadline = time.monotonic() + timeout
            while not future.is_done and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.is_done or future.failed():
                return None
        cluster_id = cluster.cluster_id
        return None if cluster_id is None else str(cluster_id)

    def _resend_orphans(self, producer: Any, incarnation: str, timeout: float) -> bool:
        """Send again what an earlier incarnation acknowledged; False if some did not make it."""
        orphans = self._resend.orphans(incarnation)
        if not orphans:
            return True
        log.warning(
            "Kafka broker replaced (cluster id now %s): sending %d acknowledged events again",
            incarnation,
            len(orphans),
        )
        outcomes = self._produce(producer, orphans, timeout)
        acked = [r for r, o in zip(orphans, outcomes, strict=True) if o is not Outcome.FAILED]
        self._resend.add(incarnation, acked)
        failed = [r for r, o in zip(orphans, outcomes, strict=True) if o is Outcome.FAILED]
        if failed:
            self._resend.add("", failed)  # "" is no incarnation: still orphaned next time
            return False
        return True

    def _produce(self, producer: Any, records: Sequence[Record], timeout: float) -> list[Outcome]:
        """Produce and wait for each record's acknowledgement."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        outcomes: list[Outcome] = [Outcome.FAILED] * len(records)
        futures: list[tuple[int, Any]] = []
        for i, record in enumerate(records):
            try:
                futures.append((i, producer.send(self._topic, key=record.key, value=record.value)))
            except KafkaTimeoutError as exc:
                # No metadata for the topic (broker down, topic missing): the rest would
                # time out the same way.
                self.last_error = f"no metadata for topic {self._topic!r}: {exc}"
                break
            except KafkaError as exc:
                outcomes[i] = self._classify(exc, record)
        # Futures still pending after this count as FAILED below.
        with contextlib.suppress(KafkaTimeoutError):
            producer.flush(timeout=timeout + 1.0)
        for i, future in futures:
            if not future.is_done:
                continue
            if future.succeeded():
                outcomes[i] = Outcome.ACKED
            else:
                outcomes[i] = self._classify(future.exception, records[i])
                self.last_error = f"{type(future.exception).__name__}: {future.exception}"
        return outcomes

    @staticmethod
    def _classify(exc: BaseException | None, record: Record) -> Outcome:
        if exc is None or getattr(exc, "retriable", False) or type(exc).__name__ in _RETRY_ANYWAY:
            return Outcome.FAILED
        name = type(exc).__name__
        if name in ("KafkaConnectionError", "NoBrokersAvailable", "NodeNotReadyError"):
            return Outcome.FAILED
        log.error("Kafka refused an event of run %s for good (%s): %s", record.key.decode(), name, exc)
        return Outcome.REJECTED

    def close(self, timeout: float) -> None:
        """Close the producer, waiting at most `timeout` s for pending sends.

        Records an earlier incarnation acknowledged go again first if the broker was
        replaced since the last send (within `timeout`).
        """
        if self._producer is not None and len(self._resend):
            with contextlib.suppress(Exception):
                fenced = self._fenced_producer(timeout)
                if fenced is not None:
                    self._resend_orphans(*fenced, timeout)
        self._close_producer(timeout)

    def _close_producer(self, timeout: float) -> None:
        """Close the producer (if any), waiting at most `timeout` s for its pending sends."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception as exc:
                log.debug("closing the Kafka producer: %s", exc)
            self._producer = None
