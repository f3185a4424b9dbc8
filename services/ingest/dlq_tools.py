"""`runledger dlq list|show|replay`: inspect the dead-letter topic and re-drive its letters.

A dead letter (services/ingest/dead_letters.py, docs/dead-letters.md) keeps the rejected
message exactly, so once the cause is fixed (a grant added, a key provisioned, a tenant
resumed, the clock-skew limit raised, the projector upgraded) `replay` puts the original
bytes back on the events topic, keyed as the producer keyed them. The projector then
judges them afresh: what now passes is projected, what still fails is dead-lettered again
(a new letter), and an event that was already applied is dropped by its event id, so
replaying twice, or replaying what was in fact applied, changes nothing.

A letter's id is `<partition>:<offset>` in the dead-letter topic (`<offset>` alone means
partition 0).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.config import Settings
from services.ingest.dead_letters import MAX_LETTER_BYTES, original_bytes

REPLAYED_HEADER = "runledger-replayed-from"


class DlqError(Exception):
    """A problem for the user (no broker configured, no such letter)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int  # when the broker stored the letter
    key: bytes | None
    record: dict[str, Any]

    @property
    def id(self) -> str:
        """`<partition>:<offset>` in the dead-letter topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return str(self.record.get("reason", ""))

    @property
    def size(self) -> int:
        """Bytes of the rejected message."""
        size = self.record.get("size")
        return size if isinstance(size, int) else len(str(self.record.get("value", "")).encode())

    @property
    def original(self) -> bytes | None:
        """The rejected message, byte for byte (None when the letter kept only its start)."""
        return original_bytes(self.record)

    def summary(self) -> dict[str, Any]:
        """Everything but the message itself."""
        rejected_ms = self.record.get("time")
        return {
            "id": self.id,
            "time": _iso(rejected_ms if isinstance(rejected_ms, int) else self.timestamp_ms),
            "reason": self.reason,
            "source": self.record.get("source", ""),
            "offset": self.record.get("offset"),
            "size": self.size,
            "truncated": bool(self.record.get("truncated", False)),
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def kafka_bootstrap(settings: Settings, override: str | None = None) -> str:
    """--kafka-bootstrap, else RUNLEDGER_KAFKA_BOOTSTRAP, else connection.json's kafka_bootstrap."""
    if override:
        return override
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    try:
        info = json.loads(settings.connection_file.read_text())
    except (OSError, ValueError):
        info = {}
    found = info.get("kafka_bootstrap") if isinstance(info, dict) else None
    if not found:
        raise DlqError(
            "no Kafka broker: pass --kafka-bootstrap, set RUNLEDGER_KAFKA_BOOTSTRAP, or start `runledger up`"
            f" (it writes {settings.connection_file})"
        )
    return str(found)


def read_letters(bootstrap: str, topic: str, *, timeout_s: float = 30.0) -> list[DeadLetter]:
    """Every letter of the dead-letter topic, oldest first per partition (as stored now)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=2 * MAX_LETTER_BYTES,
        fetch_max_bytes=2 * MAX_LETTER_BYTES,
    )
    try:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise DlqError(f"no topic {topic} on {bootstrap}")
        parts = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        # tansu answers the latest offset with the first offset of the newest record batch,
        # not one past its last record: read to that, then on until a poll comes back empty.
        ends = consumer.end_offsets(parts)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise DlqError(f"timed out reading {topic} after {len(letters)} letters")
            at_end = all(consumer.position(tp) >= ends[tp] for tp in parts)
            polled = consumer.poll(timeout_ms=300 if at_end else 200)
            if at_end and not polled:
                break
            for tp, records in polled.items():
                for r in records:
                    try:
                        record = orjson.loads(r.value)
                    except orjson.JSONDecodeError:
                        record = {"reason": "(not a dead letter)", "value": r.value.decode(errors="replace")}
                    if not isinstance(record, dict):
                        record = {"reason": "(not a dead letter)", "value": repr(record)}
                    letters.append(DeadLetter(tp.partition, r.offset, r.timestamp, r.key, record))
        letters.sort(key=lambda letter: (letter.partition, letter.offset))
        return letters
    finally:
        consumer.close()


def parse_id(text: str) -> tuple[int, int]:
    """`P:O` or `O` (partition 0) as (partition, offset)."""
    try:
        if ":" in text:
            partition, offset = text.split(":", 1)
            return int(partition), int(offset)
        return 0, int(text)
    except ValueError:
        raise DlqError(f"not a dead-letter id: {text!r} (expected PARTITION:OFFSET)") from None


def select(
    letters: Iterable[DeadLetter], *, reason: str | None = None, ids: Sequence[str] = ()
) -> list[DeadLetter]:
    """The letters whose reason starts with `reason`, or those with these ids (all must exist)."""
    letters = list(letters)
    if ids:
        wanted = [parse_id(i) for i in ids]
        by_id = {(x.partition, x.offset): x for x in letters}
        missing = [f"{p}:{o}" for p, o in wanted if (p, o) not in by_id]
        if missing:
            raise DlqError(f"no dead letter {', '.join(missing)}")
        return [by_id[w] for w in wanted]
    if reason:
        return [x for x in letters if x.reason.startswith(reason)]
    return letters


def replay_key(letter: DeadLetter, message: bytes) -> bytes | None:
    """The topic key the producer gave the message: the letter's key, else the event's run,
    experiment or event id (what every RunLedger producer keys by)."""
    if letter.key:
        return letter.key
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    for name in ("run_id", "experiment_id", "event_id"):
        value = event.get(name)
        if isinstance(value, str) and value:
            return value.encode()
    return None


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay sent (their ids) and what it could not (truncated letters)."""

    sent: list[str]
    skipped: list[str]


def replay(
    letters: Sequence[DeadLetter], bootstrap: str, events_topic: str, *, dry_run: bool = False
) -> ReplayReport:
    """Send each letter's original message back onto the events topic, in order."""
    sent: list[str] = []
    skipped: list[str] = []
    todo: list[tuple[DeadLetter, bytes]] = []
    for letter in letters:
        message = letter.original
        if message is None:
            skipped.append(letter.id)
        else:
            todo.append((letter, message))
    if dry_run or not todo:
        return ReplayReport([x.id for x, _ in todo], skipped)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks="all",
        linger_ms=5,
        enable_idempotence=False,
        max_in_flight_requests_per_connection=1,  # keeps the letters' order per key
        max_request_size=MAX_LETTER_BYTES,
    )
    try:
        futures = []
        for letter, message in todo:
            headers = [(REPLAYED_HEADER, f"dlq:{letter.id}".encode())]
            key = replay_key(letter, message)
            futures.append((letter, producer.send(events_topic, key=key, value=message, headers=headers)))
        producer.flush()
        for letter, future in futures:
            future.get(timeout=30)  # raises what the broker said
            sent.append(letter.id)
    finally:
        producer.close(5)
    return ReplayReport(sent, skipped)


# --- the command ------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def list_command(
    settings: Settings, *, bootstrap: str | None, reason: str | None, limit: int, as_json: bool, out: TextIO
) -> int:
    """`runledger dlq list`: the newest `limit` letters (matching `reason`), oldest first."""
    letters = select(read_letters(kafka_bootstrap(settings, bootstrap), settings.dlq_topic), reason=reason)
    letters.sort(key=lambda x: (x.timestamp_ms, x.partition, x.offset))
    shown = letters[-limit:] if limit > 0 else letters
    if as_json:
        for letter in shown:
            out.write(orjson.dumps(letter.summary()).decode() + "\n")
        return 0
    out.write(
        f"{len(letters)} dead letters in {settings.dlq_topic}"
        + (f" with reason {reason!r}" if reason else "")
    )
    out.write(f" (showing {len(shown)})\n" if len(shown) < len(letters) else "\n")
    if shown:
        out.write(f"{'ID':<10} {'TIME (UTC)':<24} {'SIZE':>9}  {'SOURCE@OFFSET':<40} REASON\n")
    for letter in shown:
        s = letter.summary()
        size = f"{s['size']}" + ("+" if s["truncated"] else "")
        where = _clip(f"{s['source']}@{s['offset']}", 40)
        out.write(f"{s['id']:<10} {s['time']:<24} {size:>9}  {where:<40} {_clip(s['reason'], 120)}\n")
    return 0


def show_command(settings: Settings, *, bootstrap: str | None, letter_id: str, raw: bool, out: TextIO) -> int:
    """`runledger dlq show ID`: one letter, with its message (pretty JSON when it parses)."""
    letters = read_letters(kafka_bootstrap(settings, bootstrap), settings.dlq_topic)
    (letter,) = select(letters, ids=[letter_id])
    message = letter.original
    if raw:
        if message is None:
            raise DlqError(f"dead letter {letter.id} kept only the start of its message (truncated)")
        sys.stdout.buffer.write(message)
        return 0
    for name, value in letter.summary().items():
        out.write(f"{name + ':':<11}{value}\n")
    if "sha256" in letter.record:
        out.write(f"{'sha256:':<11}{letter.record['sha256']}\n")
    if letter.record.get("value_b64") is not None:
        out.write("(not valid UTF-8: the text below replaces bad bytes; --raw prints the exact bytes)\n")
    out.write("message:\n")
    text = str(letter.record.get("value", ""))
    try:
        out.write(orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode() + "\n")
    except orjson.JSONDecodeError:
        out.write(text + "\n")
    return 0


def replay_command(
    settings: Settings,
    *,
    bootstrap: str | None,
    reason: str | None,
    ids: Sequence[str],
    replay_all: bool,
    dry_run: bool,
    out: TextIO,
) -> int:
    """`runledger dlq replay`: re-drive the selected letters onto the events topic."""
    if not (reason or ids or replay_all):
        raise DlqError("say what to replay: --reason R, letter ids, or --all")
    server = kafka_bootstrap(settings, bootstrap)
    chosen = select(read_letters(server, settings.dlq_topic), reason=reason, ids=ids)
    report = replay(chosen, server, settings.events_topic, dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    out.write(f"{verb} {len(report.sent)} dead letters onto {settings.events_topic}\n")
    for letter_id in report.sent if dry_run else ():
        out.write(f"  {letter_id}\n")
    if report.skipped:
        out.write(
            f"skipped {len(report.skipped)} truncated letters (the broker would not take them whole): "
            + ", ".join(report.skipped[:20])
            + ("..." if len(report.skipped) > 20 else "")
            + "\n"
        )
    return 0
