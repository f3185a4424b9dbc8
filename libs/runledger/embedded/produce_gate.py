"""A Kafka-protocol relay in front of the embedded broker that can hold every produce.

The embedded broker (tansu 0.6.0, memory storage) never deletes a record: DeleteRecords
is unimplemented, retention is not applied. Its memory and its fetch cost grow with the
log, so the supervisor replaces it from time to time (libs/runledger/embedded/rotation.py).
That is lossless only if no produce is acknowledged while the old broker's tail is read:
this relay gives the supervisor that barrier, since clients reach the broker only through
it (the broker advertises the relay's address).

The relay forwards bytes as they are; it parses only the frame boundaries and, on
requests, the API key, the correlation id, the client id and a produce's `acks`. A
connection goes to the broker its first request's client id is routed to (`route`: the
rotation fills the next broker through the same address), else to the current one
(`switch`). It has three states:
  * open: everything passes;
  * holding produces (`hold_produce`): a produce request waits in the relay (and with it
    every later request of that connection, which Kafka answers in order anyway);
    `wait_idle` reports when every forwarded produce has been answered;
  * holding all (`hold_all`): every request waits, so that no client reaches a broker that
    is being replaced before it has its topics and its carried-over records (a client's
    metadata request could otherwise create a topic with the broker's defaults).
Requests of the privileged clients (the rotation's, the topic admin's) always pass. When
the broker behind goes away, so do the connections through it: a held request that was
never forwarded is then failed on the client, which sends it again.

The relay also fences produces by incarnation. A client may name, in its client id, the
incarnation it means to write to (runledger.incarnation.fenced_client_id). A produce that
would reach another incarnation, one that does not declare that one carried over, closes
its connection instead. Without the fence, a produce that the client queued
for the old broker (or that waited here while the broker restarted) lands on a restarted,
empty one ahead of the older records the client sends again once it sees the new
incarnation: a consumer that follows a run's steps in log order (the analysis) then
skips the older steps as replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runledger.incarnation import may_write

log = logging.getLogger(__name__)

_PRODUCE = 0
# Produce v9+ uses flexible ("compact") encodings in its header and body (KIP-482).
_FIRST_FLEXIBLE_PRODUCE = 9
_MAX_FRAME = 256 * 1024 * 1024  # a sanity bound: a larger size prefix is a broken stream
_T = TypeVar("_T")


class FrameError(ValueError):
    """Bytes that are not a Kafka request or response frame."""


def _read_unsigned_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise FrameError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 28:
            raise FrameError("varint too long")


def produce_acks(request: bytes) -> int:
    """The `acks` of a Produce request frame body (without its size prefix).

    Header: api_key, api_version, correlation_id, client_id (nullable int16 string; v9+
    then tagged fields). Body starts with transactional_id (nullable int16 string; compact
    from v9) and acks (v3+; before v3 acks comes first).
    """
    if len(request) < 10:
        raise FrameError("short request header")
    version = struct.unpack_from(">h", request, 2)[0]
    (client_id_len,) = struct.unpack_from(">h", request, 8)
    at = 10 + max(client_id_len, 0)
    if version >= _FIRST_FLEXIBLE_PRODUCE:
        tags, at = _read_unsigned_varint(request, at)
        for _ in range(tags):
            _, at = _read_unsigned_varint(request, at)
            size, at = _read_unsigned_varint(request, at)
            at += size
        txn_len_plus_one, at = _read_unsigned_varint(request, at)
        at += max(txn_len_plus_one - 1, 0)
    elif version >= 3:
        (txn_len,) = struct.unpack_from(">h", request, at)
        at += 2 + max(txn_len, 0)
    if at + 2 > len(request):
        raise FrameError("short produce request")
    acks: int = struct.unpack_from(">h", request, at)[0]
    return acks


def _client_id(request: bytes) -> bytes:
    """The client id of a request (header v1+: a nullable int16 string after the correlation id)."""
    (length,) = struct.unpack_from(">h", request, 8)
    return request[10 : 10 + length] if length >= 0 else b""


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One size-prefixed frame (prefix included), or None at a clean end of stream."""
    try:
        prefix = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a size prefix") from None
        return None
    (size,) = struct.unpack(">i", prefix)
    if size < 0 or size > _MAX_FRAME:
        raise FrameError(f"frame size {size}")
    return prefix + await reader.readexactly(size)


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    privileged: bool  # its requests pass while the gate holds
    incarnation: str | None  # of the broker behind it (None: not known, no fence)
    # Correlation ids of forwarded produce requests that expect a response.
    produces: set[int] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                writer.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class ProduceGate:
    """Relay host:port -> upstream host:port, with a barrier on produce requests."""

    def __init__(
        self,
        upstream_port: int,
        *,
        port: int,
        host: str = "127.0.0.1",
        privileged_client_ids: tuple[str, ...] = (),
    ) -> None:
        """Describe the relay; nothing listens before start(). port 0 = pick one.

        privileged_client_ids: clients whose requests pass while the gate holds (the rotation's).
        """
        self.host = host
        self._privileged = frozenset(c.encode() for c in privileged_client_ids)
        self._routes: dict[bytes, int] = {}  # client id -> upstream port other than the default
        self.port = port
        self.upstream_host = host
        self.upstream_port = upstream_port
        self.upstream_incarnation: str | None = None  # of the broker at upstream_port, once declared
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._open: asyncio.Event | None = None  # nothing held
        self._admitting: asyncio.Event | None = None  # requests other than produces pass
        self._idle: asyncio.Condition | None = None
        self.held_requests = 0  # produce requests that waited at a barrier, since start
        self.fenced_produces = 0  # produces refused for naming another incarnation, since start

    @property
    def bootstrap(self) -> str:
        """Where clients connect: 'host:port'."""
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> None:
        """Listen (in a thread of its own) until stop()."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="produce-gate", daemon=True)
        self._thread.start()
        self._call(self._listen())
        log.info("produce gate on %s relays to %s:%d", self.bootstrap, self.upstream_host, self.upstream_port)

    def stop(self) -> None:
        """Close the listener and every connection; stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout=5.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        loop.close()
        self._loop = self._thread = None

    def hold_produce(self) -> None:
        """From now on, keep produce requests here instead of forwarding them."""
        self._call(self._set_state(is_open=False, admitting=True))

    def hold_all(self) -> None:
        """From now on, keep every request of unprivileged clients here."""
        self._call(self._set_state(is_open=False, admitting=False))

    def release(self) -> None:
        """Forward every request again (the held ones first)."""
        self._call(self._set_state(is_open=True, admitting=True))

    def route(self, client_id: str, port: int | None) -> None:
        """Send new connections of `client_id` to upstream `port` (None: to the default again)."""
        if port is None:
            self._routes.pop(client_id.encode(), None)
        else:
            self._routes[client_id.encode()] = port

    def switch(self, upstream_port: int, incarnation: str | None) -> None:
        """Send new connections to upstream `upstream_port`, a broker of `incarnation` (None:
        not known, produces are not fenced); open connections stay where they are."""
        self._call(self._switch(upstream_port, incarnation))

    def wait_idle(self, timeout: float) -> bool:
        """Whether every forwarded produce has been answered within `timeout` s."""
        return self._call(self._wait_idle(within_s=timeout), timeout=timeout + 5.0)

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        assert self._loop is not None, "the produce gate is not started"
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # ------------------------------------------------------------------ on the relay's loop

    async def _listen(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._admitting = asyncio.Event()
        self._admitting.set()
        self._idle = asyncio.Condition()
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _switch(self, upstream_port: int, incarnation: str | None) -> None:
        # On the loop, so that a connection never pairs one broker's port with another's incarnation.
        self.upstream_port = upstream_port
        self.upstream_incarnation = incarnation

    async def _set_state(self, *, is_open: bool, admitting: bool) -> None:
        assert self._open is not None and self._admitting is not None
        for event, value in ((self._open, is_open), (self._admitting, admitting)):
            if value:
                event.set()
            else:
                event.clear()

    def _outstanding(self) -> int:
        return sum(len(c.produces) for c in self._connections)

    async def _wait_idle(self, *, within_s: float) -> bool:
        assert self._idle is not None
        async with self._idle:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within_s):
                    await self._idle.wait_for(lambda: self._outstanding() == 0)
            return self._outstanding() == 0

    async def _notify_idle(self) -> None:
        assert self._idle is not None
        async with self._idle:
            self._idle.notify_all()

    async def _drop_all(self) -> None:
        for conn in list(self._connections):
            conn.close()
        self._connections.clear()
        await self._notify_idle()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Read the first request, pick the broker by its client id, then relay both ways."""
        try:
            first = await _read_frame(client_reader)
            if first is None:
                client_writer.close()
                return
            if len(first) < 14:
                raise FrameError("short request header")
            client_id = _client_id(first[4:])
            routed = self._routes.get(client_id)
            port = self.upstream_port if routed is None else routed
            incarnation = self.upstream_incarnation if routed is None else None
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, port)
        except (OSError, asyncio.IncompleteReadError, FrameError) as exc:
            # The broker is down (restarting): the client sees a dropped connection, as without us.
            log.debug("produce gate: no upstream for a client: %s", exc)
            client_writer.close()
            return
        conn = _Connection(
            client_writer, upstream_writer, privileged=client_id in self._privileged, incarnation=incarnation
        )
        self._connections.add(conn)
        conn.tasks = [
            asyncio.create_task(self._requests(conn, client_reader, first)),
            asyncio.create_task(self._responses(conn, upstream_reader)),
        ]

    async def _requests(self, conn: _Connection, reader: asyncio.StreamReader, first: bytes) -> None:
        """Client -> broker, frame by frame; requests wait while the gate holds them."""
        assert self._open is not None and self._admitting is not None
        frame: bytes | None = first
        try:
            while frame is not None:
                body = frame[4:]
                if len(body) < 10:
                    raise FrameError("short request header")
                is_produce = struct.unpack_from(">h", body)[0] == _PRODUCE
                # A produce waits while anything is held, any other request while all is.
                barrier = self._open if is_produce else self._admitting
                if not conn.privileged and not barrier.is_set():
                    self.held_requests += 1
                    while not barrier.is_set():  # held again between the wake-up and now
                        await barrier.wait()
                if is_produce and not conn.privileged and conn.incarnation is not None:
                    client_id = _client_id(body).decode("utf-8", "replace")
                    if not may_write(client_id, conn.incarnation):
                        # The client learns the new incarnation from its next metadata request
                        # and sends the older records first (runledger_sdk.resend); Kafka
                        # clients take a dropped connection as retriable.
                        self.fenced_produces += 1
                        log.info(
                            "produce gate: %s may not write to incarnation %s; closing its connection",
                            client_id,
                            conn.incarnation,
                        )
                        break
                if is_produce and produce_acks(body) != 0:
                    conn.produces.add(struct.unpack_from(">i", body, 4)[0])
                conn.upstream.write(frame)
                await conn.upstream.drain()
                frame = await _read_frame(reader)
        except (OSError, asyncio.IncompleteReadError, FrameError) as exc:
            log.debug("produce gate: client stream ended: %s", exc)
        finally:
            await self._close(conn)

    async def _responses(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Broker -> client, frame by frame; notes when a produce is answered."""
        try:
            while (frame := await _read_frame(reader)) is not None:
                if conn.produces and len(frame) >= 8:
                    correlation_id = struct.unpack_from(">i", frame, 4)[0]
                    if correlation_id in conn.produces:
                        conn.produces.discard(correlation_id)
                        if not conn.produces:
                            await self._notify_idle()
                conn.client.write(frame)
                await conn.client.drain()
        except (OSError, asyncio.IncompleteReadError, FrameError) as exc:
            log.debug("produce gate: broker stream ended: %s", exc)
        finally:
            await self._close(conn)

    async def _close(self, conn: _Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            conn.close()
            # A produce whose connection went away is no longer awaited: the client gets an
            # error and sends it again; whether the broker stored it, the rotation reads.
            await self._notify_idle()
