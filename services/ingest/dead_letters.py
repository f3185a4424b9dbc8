"""The dead-letter topic: rejected events with the reason, never blocking the pipeline.

A dead letter is one JSON object (docs/dead-letters.md):

    {"reason": "...", "source": "<incarnation>.<topic>.<partition>", "offset": 123,
     "time": <ms since the epoch when it was rejected>, "size": <bytes of the message>,
     "value": "<the message as text>",
     "value_b64": "<base64 of the exact bytes>",   # only when they are not valid UTF-8
     "truncated": true, "sha256": "..."}           # only when the message was too large to keep

`value` is the message itself whenever it is valid UTF-8 (every message that parsed as
JSON is); otherwise it is a readable rendering (invalid bytes replaced) and `value_b64`
keeps the exact bytes, so `runledger dlq replay` always re-drives the original message.
The Kafka key of a dead letter is the key of the message it came from.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from services.observability import DEAD_LETTERS

log = logging.getLogger(__name__)

# The producer of dead letters must accept a letter as large as the largest event the
# projector can read (max_partition_fetch_bytes, 16 MiB) plus its JSON escaping.
MAX_LETTER_BYTES = 40 * 1024 * 1024
# What a letter keeps of a message the broker would not take whole.
_TRUNCATED_KEEP = 64 * 1024
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


def reason_class(reason: str) -> str:
    """The stable part of a dead-letter reason ("bad envelope: type: ..." -> "bad envelope")."""
    return reason.split(":", 1)[0]


def letter(
    raw: bytes | None, reason: str, source: str, offset: int, *, truncate: bool = False
) -> dict[str, Any]:
    """The dead-letter record of message `raw` (see the module docstring)."""
    data = raw or b""
    record: dict[str, Any] = {
        "reason": reason,
        "source": source,
        "offset": offset,
        "time": int(time.time() * 1000),
        "size": len(data),
    }
    if truncate:
        record["truncated"] = True
        record["sha256"] = hashlib.sha256(data).hexdigest()
        data = data[:_TRUNCATED_KEEP]
    try:
        record["value"] = data.decode("utf-8")
    except UnicodeDecodeError:
        record["value"] = data.decode("utf-8", errors="replace")
        record["value_b64"] = base64.b64encode(data).decode("ascii")
    return record


def original_bytes(record: dict[str, Any]) -> bytes | None:
    """The exact message a dead letter holds (None when it was truncated)."""
    if record.get("truncated"):
        return None
    encoded = record.get("value_b64")
    if isinstance(encoded, str):
        return base64.b64decode(encoded)
    value = record.get("value")
    return value.encode("utf-8") if isinstance(value, str) else None


@dataclass(slots=True)
class _Pending:
    future: Any
    raw: bytes | None
    reason: str
    source: str
    offset: int
    key: bytes | None


class DeadLetters:
    """Sends rejected messages to the DLQ topic (the batch writer counts them in Postgres)."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._pending: list[_Pending] = []
        self._since_flush: Counter[str] = Counter()
        self._partitions: list[int] | None = None
        self._examples: dict[str, str] = {}

    def reject(self, raw: bytes | None, reason: str, source: str, offset: int, key: bytes | None) -> None:
        """Queue one dead letter; `flush` makes it durable. Never raises for the message's size:
        a letter the producer refuses as too large is sent truncated (with its sha256)."""
        # One line per letter only at DEBUG: a flood of bad input must not flood the log too
        # (flush logs a summary per batch).
        log.debug("dead letter at %s@%d: %s", source, offset, reason)
        cls = reason_class(reason)
        DEAD_LETTERS.labels(cls).inc()
        self._since_flush[cls] += 1
        if cls not in self._examples:
            self._examples[cls] = f"{source}@{offset}: {reason[:300]}"
        try:
            future = self._send(letter(raw, reason, source, offset), source, offset, key)
        except _TOO_LARGE:
            future = self._send(letter(raw, reason, source, offset, truncate=True), source, offset, key)
        self._pending.append(_Pending(future, raw, reason, source, offset, key))

    def _partition(self, key: bytes | None) -> int | None:
        """The partition of a letter: by a C hash of its key (kafka-python's murmur2 is pure
        Python, ~65 us a letter), so one key's letters stay in one partition and in order."""
        if self._partitions is None:
            partitions_for = getattr(self._producer, "partitions_for", None)  # test doubles lack it
            try:
                self._partitions = sorted((partitions_for(self._topic) if partitions_for else None) or ())
            except KafkaError:
                return None
        if not self._partitions:
            return None
        return self._partitions[zlib.crc32(key or b"") % len(self._partitions)]

    def _send(self, record: dict[str, Any], source: str, offset: int, key: bytes | None) -> Any:
        # The key keeps redelivered dead letters recognisable as the same source message.
        return self._producer.send(
            self._topic,
            key=key,
            value=orjson.dumps(record),
            headers=[("runledger-source", f"{source}@{offset}".encode())],
            partition=self._partition(key),
        )

    def flush(self) -> None:
        """Wait until every queued dead letter is acknowledged.

        A letter the broker refused as too large is re-sent truncated; any other failure
        raises, so the batch is not committed and its dead letters are sent again.
        """
        self._producer.flush()
        pending, self._pending = self._pending, []
        if self._since_flush:
            log.warning(
                "%d dead letters: %s",
                sum(self._since_flush.values()),
                "; ".join(f"{n} x {self._examples[cls]}" for cls, n in self._since_flush.most_common()),
            )
            self._since_flush.clear()
            self._examples.clear()
        resent: list[Any] = []
        for item in pending:
            exc = item.future.exception if item.future is not None and item.future.is_done else None
            if exc is None:
                continue
            if not isinstance(exc, _TOO_LARGE):
                raise exc if isinstance(exc, KafkaError) else KafkaError(str(exc))
            log.warning(
                "dead letter at %s@%d too large for the broker: sent truncated", item.source, item.offset
            )
            record = letter(item.raw, item.reason, item.source, item.offset, truncate=True)
            resent.append(self._send(record, item.source, item.offset, item.key))
        if resent:
            self._producer.flush()
            for future in resent:
                if future.exception is not None:
                    raise future.exception
