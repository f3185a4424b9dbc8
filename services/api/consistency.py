"""Read-your-writes: wait until the projector has applied an event we produced.

The projector advances `projector_checkpoints.committed` for (group, incarnation,
topic, partition) in the same Postgres transaction that applies a batch, and
NOTIFYs `runledger_projected` with JSON {group, incarnation, topic, partition, committed}. A write
knows the (partition, offset) of its events, so it waits for committed >= offset.
Notifications are fast but can be missed (listener reconnecting, a NOTIFY sent
before we listened), so pending waits also poll the checkpoint table.

When the embedded broker is replaced, what it held unprojected is carried over to the new
incarnation, at its first offsets (libs/runledger/embedded/rotation.py, table
`broker_carry_over`): a token of the old incarnation then stands for "the new one's
checkpoint has passed the carried records" (`carried_token`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from runledger.incarnation import carried_over
from services.api.errors import InvalidParameter

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "runledger_projected"
_PartitionKey = tuple[str, str, int]  # incarnation, topic, partition


@dataclass(frozen=True, slots=True)
class ConsistencyToken:
    """Where a write's events sit in the log: the highest offset per partition."""

    incarnation: str
    topic: str
    offsets: tuple[tuple[int, int], ...]  # (partition, offset), one per partition

    @classmethod
    def from_positions(
        cls, incarnation: str, topic: str, positions: Iterable[tuple[int, int]]
    ) -> ConsistencyToken:
        """The token of a set of (partition, offset) positions: the highest per partition."""
        highest: dict[int, int] = {}
        for partition, offset in positions:
            highest[partition] = max(offset, highest.get(partition, -1))
        return cls(incarnation, topic, tuple(sorted(highest.items())))

    def encode(self) -> str:
        """The opaque string clients pass back as `?consistency_token=`."""
        body = {
            "incarnation": self.incarnation,
            "topic": self.topic,
            "positions": [{"partition": p, "offset": o} for p, o in self.offsets],
        }
        return base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str) -> ConsistencyToken:
        """Parse a client's token; InvalidParameter when it is not one of ours."""
        try:
            body = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            offsets = tuple((int(p["partition"]), int(p["offset"])) for p in body["positions"])
            incarnation, topic = body["incarnation"], body["topic"]
        except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            raise InvalidParameter("invalid consistency_token") from None
        if not isinstance(incarnation, str) or not isinstance(topic, str):
            raise InvalidParameter("invalid consistency_token")
        return cls(incarnation, topic, offsets)


def parse_notification(payload: str, group: str) -> tuple[_PartitionKey, int] | None:
    """(incarnation, topic, partition), committed from a NOTIFY payload of `group`; else None."""
    try:
        body = orjson.loads(payload)
        if body["group"] != group:
            return None
        return (str(body["incarnation"]), str(body["topic"]), int(body["partition"])), int(body["committed"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


#: Per topic and partition of a new incarnation, the offset below which its records were
#: carried over from the incarnation before it.
CarriedPositions = dict[tuple[str, int], int]


def carried_token(
    token: ConsistencyToken, current: str, carried: CarriedPositions | None
) -> ConsistencyToken | None:
    """`token` as a position in the incarnation `current`; None when it can never be projected
    more than it is (its broker's log is gone) or needs nothing.

    Same incarnation: the token itself. An incarnation that `current` carried over (and whose
    carried positions are known): the end of the carried records of the token's partitions.
    Any other (a broker that restarted empty): None.
    """
    if token.incarnation == current:
        return token
    if carried is None or not carried_over(token.incarnation, current):
        return None
    positions = [
        (p, carried[(token.topic, p)] - 1) for p, _ in token.offsets if carried.get((token.topic, p), 0) > 0
    ]
    return ConsistencyToken.from_positions(current, token.topic, positions) if positions else None


class ProjectionWaiter:
    """Tracks projector checkpoints (LISTEN + polling) and resolves waits on them."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, group: str, *, poll_interval_s: float = 0.05) -> None:
        """Wait on the checkpoints of consumer `group`; `pool` serves the polls."""
        self._dsn = dsn
        self._pool = pool
        self._group = group
        self._poll_interval_s = poll_interval_s
        self._committed: dict[_PartitionKey, int] = {}
        self._waiters: dict[_PartitionKey, list[tuple[int, asyncio.Future[None]]]] = {}
        self._listener: asyncpg.Connection[Any] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._carried: dict[str, CarriedPositions] = {}  # by new incarnation
        self._loading: set[asyncio.Task[CarriedPositions]] = set()

    async def start(self) -> None:
        """Open the LISTEN connection and start the polling loop."""
        await self._listen()
        self._task = asyncio.create_task(self._poll_loop(), name="projection-waiter")

    async def close(self) -> None:
        """Stop polling, close the listener and fail nothing: pending waits just time out."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def position_now(self, token: ConsistencyToken, current: str) -> ConsistencyToken | None:
        """`token` in the incarnation `current` (see carried_token); None: nothing to wait for."""
        carried = await self._load_carried(current) if carried_over(token.incarnation, current) else None
        return carried_token(token, current, carried)

    def position_if_known(
        self, token: ConsistencyToken, current: str
    ) -> tuple[bool, ConsistencyToken | None]:
        """(known, position_now) without waiting; not known while the carried positions of
        `current` are being loaded (the load starts here)."""
        if token.incarnation == current or not carried_over(token.incarnation, current):
            return True, carried_token(token, current, None)
        carried = self._carried.get(current)
        if carried is None:
            if not self._loading:
                task = asyncio.get_running_loop().create_task(self._load_carried(current))
                self._loading.add(task)
                task.add_done_callback(self._loaded)
            return False, None
        return True, carried_token(token, current, carried)

    def _loaded(self, task: asyncio.Task[CarriedPositions]) -> None:
        self._loading.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # PostgreSQL away: the next look starts another load.
            log.warning("projection waiter: loading carried positions failed: %r", task.exception())

    async def _load_carried(self, incarnation: str) -> CarriedPositions:
        carried = self._carried.get(incarnation)
        if carried is None:
            rows = await self._pool.fetch(
                "SELECT topic, partition, carried_until FROM broker_carry_over WHERE incarnation = $1",
                incarnation,
            )
            carried = {(r["topic"], r["partition"]): r["carried_until"] for r in rows}
            if len(self._carried) >= 16:  # a few replacements' worth is all that matters
                self._carried.clear()
            self._carried[incarnation] = carried
        return carried

    def committed(self, incarnation: str, topic: str, partition: int) -> int:
        """The highest committed offset seen for a partition (-1 when unknown)."""
        return self._committed.get((incarnation, topic, partition), -1)

    async def wait(self, token: ConsistencyToken, timeout_s: float) -> bool:
        """True once every position of `token` is projected; False after `timeout_s`."""
        loop = asyncio.get_running_loop()
        pending: list[tuple[_PartitionKey, asyncio.Future[None]]] = []
        for partition, offset in token.offsets:
            key = (token.incarnation, token.topic, partition)
            if self._committed.get(key, -1) >= offset:
                continue
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, []).append((offset, future))
            pending.append((key, future))
        if not pending:
            return True
        self._wake.set()  # an idle poll loop polls at once: a notification may have been missed
        try:
            await asyncio.wait_for(asyncio.gather(*(f for _, f in pending)), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            for key, future in pending:
                self._forget(key, future)

    # ------------------------------------------------------------------ internals

    def _forget(self, key: _PartitionKey, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            return
        waiters[:] = [(o, f) for o, f in waiters if f is not future]
        if not waiters:
            del self._waiters[key]

    def _advance(self, key: _PartitionKey, committed: int) -> None:
        if committed <= self._committed.get(key, -1):
            return
        self._committed[key] = committed
        for offset, future in self._waiters.get(key, ()):
            if offset <= committed and not future.done():
                future.set_result(None)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        parsed = parse_notification(str(payload), self._group)
        if parsed is not None:
            self._advance(*parsed)

    async def _listen(self) -> None:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(self._dsn)
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listener = conn

    async def _poll_once(self) -> None:
        keys = list(self._waiters)
        if not keys:
            return
        rows = await self._pool.fetch(
            "SELECT c.incarnation, c.topic, c.partition, c.committed FROM projector_checkpoints c"
            " JOIN unnest($2::text[], $3::text[], $4::int[]) AS w(incarnation, topic, partition)"
            " USING (incarnation, topic, partition) WHERE c.consumer_group = $1",
            self._group,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
        for row in rows:
            self._advance((row["incarnation"], row["topic"], row["partition"]), row["committed"])

    async def _poll_loop(self) -> None:
        while not self._closed:
            try:
                if self._listener is None or self._listener.is_closed():
                    # A lost listener (Postgres restart) is re-opened; polls cover the gap.
                    self._listener = None
                    await self._listen()
                await self._poll_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("projection waiter: %r (retrying)", exc)
            if self._waiters:
                # Busy: a steady poll rate however many writes wait (notifications do the fast part).
                await asyncio.sleep(self._poll_interval_s)
            else:
                # Idle: sleep until a wait registers, checking the listener now and then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
