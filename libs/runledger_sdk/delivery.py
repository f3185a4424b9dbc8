"""Delivery: one background thread that moves encoded events to the transport, in order.

Events arrive through `enqueue` (never blocks on the network) and wait in a memory queue.
The thread sends them in chunks. Whatever a send does not get acknowledged goes to the
spool; while this process has anything spooled, new events are appended to the spool too
(behind the older ones) and the thread drains the spool head first, with backoff, until
the broker is back. If the memory queue outgrows its bound (slow broker), it is spilled
to the spool rather than dropped: backpressure costs disk writes, never lost events.

Every event gets a process-wide sequence number when enqueued; `wait_for(seq)` (flush)
waits until every event up to it is acknowledged or rejected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from runledger_sdk.spool import Spool, SpoolBatch, SpoolError
from runledger_sdk.transport import Outcome, Record, Transport

log = logging.getLogger("runledger_sdk.delivery")

CHUNK_MAX_RECORDS = 1000
CHUNK_MAX_BYTES = 16 << 20
ORPHAN_SCAN_INTERVAL_S = 60.0


class Delivery:
    """Ordered, at-least-once delivery of encoded events through a transport and a spool."""

    def __init__(
        self,
        transport: Transport,
        spool: Spool,
        *,
        send_timeout_s: float,
        max_queue_bytes: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        chunk_max_bytes: int = CHUNK_MAX_BYTES,
    ) -> None:
        self._transport = transport
        self._spool = spool
        self._send_timeout = send_timeout_s
        self._max_queue_bytes = max_queue_bytes
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._chunk_max_bytes = chunk_max_bytes

        self._cond = threading.Condition()
        self._queue: deque[Record] = deque()
        self._queue_bytes = 0
        self._next_seq = 0
        self._inflight_min: int | None = None  # lowest seq of the live chunk being sent
        self._stopping = False
        self._backoff = backoff_initial_s
        self._drain_at = 0.0
        self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL_S
        self._outage_logged = False

        self.acked = 0
        self.rejected = 0
        self.spooled = 0

        self._thread = threading.Thread(target=self._run, name="runledger-delivery", daemon=True)
        self._thread.start()

    # --- producer side (any thread) ---------------------------------------------------------

    def enqueue(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Queue (key, value) events in order; return the seq of the last one (-1 if none)."""
        if not items:
            return self._next_seq - 1
        with self._cond:
            seq = self._next_seq
            for key, value in items:
                record = Record(seq, key, value)
                self._queue.append(record)
                self._queue_bytes += record.size
                seq += 1
            self._next_seq = seq
            if self._queue_bytes > self._max_queue_bytes:
                # The sender is behind (slow or unreachable broker): keep memory bounded by
                # moving the backlog to disk. Order holds: the spool is drained before any
                # newer event is sent.
                self._spill_locked()
            self._cond.notify_all()
            return seq - 1

    def last_seq(self) -> int:
        """The seq of the most recently enqueued event (-1 if none)."""
        with self._cond:
            return self._next_seq - 1

    def wait_for(self, seq: int, timeout: float | None) -> bool:
        """Block until every event up to `seq` is acknowledged/rejected; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._min_unresolved_locked() <= seq:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
            return True

    def spill(self, inflight_timeout: float) -> None:
        """Make everything not yet acknowledged durable: queue to spool, then await the live send."""
        deadline = time.monotonic() + inflight_timeout
        with self._cond:
            self._spill_locked()
            # A live chunk is neither acknowledged nor spooled until its send returns; the
            # send is bounded by the send timeout, after which failures go to the spool.
            while self._inflight_min is not None and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("a send is still in flight; its events are not durable until it returns")
                    break
                self._cond.wait(min(remaining, 0.5))

    def stop(self, timeout: float) -> None:
        """Stop the thread (what is queued goes to the spool) and wait up to `timeout` s."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- internals (caller holds self._cond) -----------------------------------------------------

    def _min_unresolved_locked(self) -> int:
        candidates = [self._next_seq]
        if self._queue:
            candidates.append(self._queue[0].seq)
        if self._inflight_min is not None:
            candidates.append(self._inflight_min)
        spooled = self._spool.min_own_seq()
        if spooled is not None:
            candidates.append(spooled)
        return min(candidates)

    def _spill_locked(self) -> None:
        if not self._queue:
            return
        records = list(self._queue)
        try:
            self._spool.append(records)
        except SpoolError as exc:
            # Nowhere durable to put them: keep them in memory (never drop) and say why.
            log.error("cannot spill %d events to the spool, keeping them in memory: %s", len(records), exc)
            return
        self._queue.clear()
        self._queue_bytes = 0
        self.spooled += len(records)

    def _take_chunk_locked(self) -> list[Record]:
        chunk: list[Record] = []
        size = 0
        while self._queue and len(chunk) < CHUNK_MAX_RECORDS:
            record = self._queue[0]
            if chunk and size + record.size > self._chunk_max_bytes:
                break
            self._queue.popleft()
            self._queue_bytes -= record.size
            size += record.size
            chunk.append(record)
        return chunk

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # pragma: no cover - a bug; events stay in memory/spool
            log.exception("the delivery thread died")
        finally:
            with self._cond:
                self._spill_locked()
                self._cond.notify_all()

    def _step(self) -> bool:
        """One round: send a live chunk and/or try the spool head. False when stopped."""
        live: list[Record] = []
        drain = False
        with self._cond:
            while True:
                own_spooled = self._spool.own_pending()
                if self._stopping:
                    self._spill_locked()
                    return False
                if own_spooled and self._queue:
                    self._spill_locked()
                if not own_spooled and self._queue:
                    live = self._take_chunk_locked()
                    self._inflight_min = live[0].seq
                now = time.monotonic()
                drain = now >= self._drain_at and self._spool.has_pending()
                if live or drain:
                    break
                if now >= self._next_orphan_scan:
                    self._next_orphan_scan = now + ORPHAN_SCAN_INTERVAL_S
                    self._cond.release()
                    try:
                        self._spool.adopt_orphans()
                    finally:
                        self._cond.acquire()
                    continue
                wait = self._next_orphan_scan - now
                if self._spool.has_pending():
                    wait = min(wait, max(self._drain_at - now, 0.01))
                self._cond.wait(wait)
        if live:
            self._send_live(live)
        if drain:
            self._drain_once()
        return True

    def _send(self, records: Sequence[Record]) -> list[Outcome]:
        try:
            outcomes = self._transport.send(records, self._send_timeout)
        except Exception as exc:
            log.warning("%s transport failed: %s", self._transport.name, exc)
            return [Outcome.FAILED] * len(records)
        if len(outcomes) != len(records):  # pragma: no cover - a transport bug
            log.error(
                "%s transport returned %d outcomes for %d records",
                self._transport.name,
                len(outcomes),
                len(records),
            )
            return [Outcome.FAILED] * len(records)
        return outcomes

    def _send_live(self, chunk: list[Record]) -> None:
        outcomes = self._send(chunk)
        failed = [r for r, o in zip(chunk, outcomes, strict=True) if o is Outcome.FAILED]
        with self._cond:
            self._count(outcomes)
            if failed:
                try:
                    # Older than anything spilled meanwhile: the spool sorts them first.
                    self._spool.append(failed)
                    self.spooled += len(failed)
                except SpoolError as exc:
                    log.error("cannot spool %d unsent events, keeping them in memory: %s", len(failed), exc)
                    self._queue.extendleft(reversed(failed))
                    self._queue_bytes += sum(r.size for r in failed)
                self._note_failure_locked(len(failed))
            self._inflight_min = None
            self._cond.notify_all()

    def _drain_once(self) -> None:
        batch: SpoolBatch | None = self._spool.peek(CHUNK_MAX_RECORDS, self._chunk_max_bytes)
        if batch is None:
            return
        outcomes = self._send(batch.records)
        done = 0
        for outcome in outcomes:
            if outcome is Outcome.FAILED:
                break
            done += 1
        # Only the delivered prefix leaves the spool: anything after the first failure is
        # sent again later (at-least-once; the projector drops duplicates by event_id).
        self._spool.ack(batch, done)
        with self._cond:
            self._count(outcomes[:done])
            if done < len(outcomes):
                self._note_failure_locked(len(outcomes) - done)
            else:
                self._backoff = self._backoff_initial
                self._drain_at = 0.0
                if self._outage_logged and not self._spool.has_pending():
                    log.warning("%s reachable again: the spool is drained", self._transport.name)
                    self._outage_logged = False
            self._cond.notify_all()

    def _note_failure_locked(self, count: int) -> None:
        if not self._outage_logged:
            reason = self._transport.last_error
            log.warning(
                "%s unreachable%s: %d events spooled to %s; they are resent when it is back",
                self._transport.name,
                f" ({reason})" if reason else "",
                count,
                self._spool.directory,
            )
            self._outage_logged = True
        self._drain_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome is Outcome.ACKED:
                self.acked += 1
            elif outcome is Outcome.REJECTED:
                self.rejected += 1
