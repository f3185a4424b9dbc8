"""The dead-letter topic: rejected events with the reason, never blocking the pipeline."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from kafka import KafkaProducer

from services.observability import DEAD_LETTERS

log = logging.getLogger(__name__)


def reason_class(reason: str) -> str:
    """The stable part of a dead-letter reason ("bad envelope: type: ..." -> "bad envelope")."""
    return reason.split(":", 1)[0]


class DeadLetters:
    """Sends rejected messages to the DLQ topic (the batch writer counts them in Postgres)."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def reject(self, raw: bytes | None, reason: str, source: str, offset: int, key: bytes | None) -> None:
        """Queue one dead letter; `flush` makes it durable."""
        record: dict[str, Any] = {
            "reason": reason,
            "source": source,
            "offset": offset,
            "value": (raw or b"").decode("utf-8", errors="replace"),
        }
        log.warning("dead letter at %s@%d: %s", source, offset, reason)
        DEAD_LETTERS.labels(reason_class(reason)).inc()
        # The key keeps redelivered dead letters recognisable as the same source message.
        self._producer.send(
            self._topic,
            key=key,
            value=orjson.dumps(record),
            headers=[("runledger-source", f"{source}@{offset}".encode())],
        )

    def flush(self) -> None:
        """Wait until every queued dead letter is acknowledged."""
        self._producer.flush()
