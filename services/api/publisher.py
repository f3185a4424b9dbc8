"""Producing events to the log without blocking the event loop.

kafka-python is synchronous: `send()` can block (metadata fetch, full buffer), so
sends run in a worker thread, and acknowledgements come back through the record
futures' callbacks, bridged into asyncio futures.

Writes answered at the broker's acknowledgement (MLflow run writes by default, `?wait=false`)
are kept for a while, as the SDK keeps its own (runledger_sdk.resend): an embedded broker
keeps its log in memory, and one that restarts comes back empty under a new cluster id. The
publisher then sends them again, before anything newer, on its next write or within a second
(a watcher), whichever comes first. A replacement that carried them over declares so in its
cluster id, and they are not sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from runledger.config import Settings
from runledger_sdk.resend import ResendWindow
from runledger_sdk.transport import Record
from services.api.errors import TemporarilyUnavailable
from services.ingest.incarnation import metadata_settled

log = logging.getLogger(__name__)

# Kafka brokers refuse messages over message.max.bytes (1,048,588 by default).
MAX_EVENT_BYTES = 1_000_000
# Without a cluster id (very old brokers) the projector uses this incarnation too.
STATIC_INCARNATION = "static"
# How often an idle publisher looks whether the broker came back as a new incarnation.
_WATCH_INTERVAL_S = 1.0
# The longest a write waits for the broker's metadata after a dropped connection.
_METADATA_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """One encoded event and its partitioning key."""

    key: bytes
    value: bytes
    event_id: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where the broker put a batch: its incarnation and each event's (partition, offset)."""

    incarnation: str
    topic: str
    positions: tuple[tuple[int, int], ...]


class EventPublisher(Protocol):
    """Appends events to the log (Kafka in production, fakes in tests)."""

    topic: str

    @property
    def incarnation(self) -> str:
        """The broker incarnation (cluster id) the publisher currently talks to."""
        ...

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
        """Append events in order and return once the broker has acknowledged all of them."""
        ...

    async def ping(self) -> bool:
        """Whether the broker is reachable now."""
        ...

    async def close(self) -> None:
        """Flush and release the connection."""
        ...


def producer_config(settings: Settings) -> dict[str, Any]:
    """kafka-python producer settings for API writes: durable (acks=all) and bounded in time."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "acks": "all",
        "linger_ms": 2,
        "client_id": "runledger-api",
        "max_request_size": MAX_EVENT_BYTES + 64 * 1024,
        # kafka-python's idempotent producer never recovers when an embedded (in-memory)
        # broker restarts empty (UnknownProducerId). Without it, one request in flight keeps
        # per-run order across retries; a retried duplicate is dropped by event_id downstream.
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": 1,
        # A write must fail (503, retried by clients) rather than hang when Kafka is down.
        "max_block_ms": 10_000,
        "request_timeout_ms": 10_000,
        "delivery_timeout_ms": 30_000,
    }


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any) -> None:
    """Called on the producer's I/O thread: hand the result to the event loop."""

    def _set() -> None:
        if not future.done():
            future.set_result(value)

    loop.call_soon_threadsafe(_set)


def _reject(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], exc: BaseException) -> None:
    def _set() -> None:
        if not future.done():
            future.set_exception(exc)

    loop.call_soon_threadsafe(_set)


class KafkaEventPublisher:
    """EventPublisher on a kafka-python KafkaProducer."""

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        bootstrap: str,
        *,
        resend_window_s: float = 300.0,
        resend_window_bytes: int = 64 << 20,
    ) -> None:
        """Wrap a connected producer (use `connect` to create one without blocking); what it
        acknowledged is kept `resend_window_s` seconds (at most `resend_window_bytes`)."""
        self._producer = producer
        self.topic = topic
        self._hosts = [h.strip() for h in bootstrap.split(",") if h.strip()]
        self._window = ResendWindow(resend_window_s, resend_window_bytes)
        self._seq = 0
        self._resending = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.resent = 0  # events sent again to a new incarnation, since start

    @classmethod
    async def connect(cls, settings: Settings) -> KafkaEventPublisher:
        """Start a producer for settings.events_topic (bootstrapping happens in a thread)."""
        if not settings.kafka_bootstrap:
            raise RuntimeError("RUNLEDGER_KAFKA_BOOTSTRAP is not set: the API needs the broker address")
        producer = await asyncio.to_thread(KafkaProducer, **producer_config(settings))
        # The cluster id arrives with metadata: fetch the topic's now, not on the first write.
        with contextlib.suppress(KafkaError):
            await asyncio.to_thread(producer.partitions_for, settings.events_topic)
        publisher = cls(
            producer,
            settings.events_topic,
            settings.kafka_bootstrap,
            resend_window_s=settings.api_resend_window_s,
            resend_window_bytes=settings.api_resend_window_bytes,
        )
        publisher.start_watching()
        return publisher

    def start_watching(self) -> None:
        """Send the window again within a second of the broker coming back empty, also when
        no write comes (on the running loop, until close)."""
        if self._window.enabled and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="publisher-resend")

    @property
    def incarnation(self) -> str:
        """The cluster id of the broker (the projector keys its checkpoints by it)."""
        # Private but stable in kafka-python 3.x (see runledger.embedded.broker).
        cluster_id: str | None = self._producer._metadata.cluster_id
        return cluster_id or STATIC_INCARNATION

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
        """Send in order, await every acknowledgement; TemporarilyUnavailable on broker errors.

        What an earlier broker incarnation acknowledged and lost goes first."""
        before = await self._resend_if_replaced() or self.incarnation
        metadata = await self._send(events)
        # Labelled with the incarnation seen before the send: if the broker was replaced
        # meanwhile, the next look finds them orphaned and sends them again.
        self._remember(before, events)
        return PublishResult(
            # Read after the acks: the metadata that routed the sends carries this broker's id.
            incarnation=self.incarnation,
            topic=self.topic,
            positions=tuple((md.partition, md.offset) for md in metadata),
        )

    async def _send(self, events: Sequence[OutgoingEvent]) -> list[Any]:
        """Send in order and await every acknowledgement (the records' metadata)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in events]
        try:
            await asyncio.to_thread(self._send_all, events, futures, loop)
            return list(await asyncio.gather(*futures))
        except KafkaError as exc:
            for future in futures:  # acks still in flight have nobody to tell
                future.cancel()
            raise TemporarilyUnavailable(f"the event log refused the write: {exc}") from exc

    def _remember(self, incarnation: str, events: Sequence[OutgoingEvent]) -> None:
        if not self._window.enabled:
            return
        records = [Record(self._seq + i, e.key, e.value) for i, e in enumerate(events)]
        self._seq += len(records)
        self._window.add(incarnation, records)

    async def _resend_if_replaced(self) -> str | None:
        """The broker's incarnation (None: the window is empty or off), after sending again,
        in order, what an incarnation it does not carry over acknowledged."""
        if not len(self._window):
            return None
        # Settled metadata (the usual case) is read here; only a pending refresh (after a
        # dropped connection) is waited for, in a thread.
        cluster = self._producer._metadata  # kafka.cluster.ClusterMetadata (see runledger.embedded.broker)
        if cluster.need_update and not await asyncio.to_thread(
            metadata_settled, cluster, _METADATA_TIMEOUT_S
        ):
            raise TemporarilyUnavailable("the event log is restarting (no metadata yet)")
        current = self.incarnation
        async with self._resending:
            orphans = self._window.orphans(current)
            if not orphans:
                return current
            log.warning(
                "broker replaced (cluster id now %s): sending %d acknowledged events again",
                current,
                len(orphans),
            )
            try:
                await self._send([OutgoingEvent(r.key, r.value, "") for r in orphans])
            except TemporarilyUnavailable:
                self._window.add("", orphans)  # "" is no incarnation: orphaned at the next look
                raise
            self._window.add(current, orphans)
            self.resent += len(orphans)
        return current

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            try:
                await self._resend_if_replaced()
            except TemporarilyUnavailable as exc:
                log.debug("resending to a new broker incarnation: %s", exc)

    def _send_all(
        self,
        events: Sequence[OutgoingEvent],
        futures: list[asyncio.Future[Any]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        for event, future in zip(events, futures, strict=True):
            record = self._producer.send(self.topic, value=event.value, key=event.key)
            record.add_callback(lambda md, f=future: _resolve(loop, f, md))
            record.add_errback(lambda exc, f=future: _reject(loop, f, exc))

    async def ping(self) -> bool:
        """True when a bootstrap broker accepts a TCP connection within a second."""
        for host_port in self._hosts:
            host, _, port = host_port.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host or "127.0.0.1", int(port)), 1.0
                )
            except (OSError, TimeoutError, ValueError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        return False

    async def close(self) -> None:
        """Stop watching, flush pending sends (bounded) and close."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.to_thread(self._producer.close, 5)
