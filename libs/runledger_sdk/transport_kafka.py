"""Kafka transport: kafka-python's KafkaProducer, keyed by run id (per-run ordering)."""

from __future__ import annotations

import atexit
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from runledger_sdk.config import SdkSettings
from runledger_sdk.transport import Outcome, Record, Transport

log = logging.getLogger("runledger_sdk.kafka")

# Errors that a retry later can fix even though Kafka calls them non-retriable: a
# permission fixed by an admin must not turn into lost events.
_RETRY_ANYWAY = ("TopicAuthorizationFailedError", "ClusterAuthorizationFailedError", "KafkaTimeoutError")


class KafkaTransport(Transport):
    """Sends records to the events topic; the producer is created on first use (lazily),
    so a broker that is down at start costs a spooled batch, not a failing start_run."""

    name = "kafka"

    def __init__(self, settings: SdkSettings) -> None:
        self._settings = settings
        self._topic = settings.events_topic
        self._producer: Any = None

    def _config(self) -> dict[str, Any]:
        s = self._settings
        delivery_ms = max(int(s.send_timeout_s * 1000), 1000)
        return {
            "bootstrap_servers": [b.strip() for b in s.kafka_bootstrap.split(",") if b.strip()],
            "client_id": "runledger-sdk",
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
        """Produce `records` and wait for every acknowledgement (bounded by the delivery timeout)."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        try:
            producer = self._connect()
        except Exception as exc:
            self.last_error = f"cannot connect to {self._settings.kafka_bootstrap}: {exc}"
            log.debug("%s", self.last_error)
            return [Outcome.FAILED] * len(records)

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
        """Close the producer, waiting at most `timeout` s for pending sends."""
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception as exc:
                log.debug("closing the Kafka producer: %s", exc)
            self._producer = None
