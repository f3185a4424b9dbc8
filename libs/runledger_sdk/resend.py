"""Acknowledged events kept for a while, to send again if the broker that acknowledged them is replaced.

An embedded broker (tansu with memory storage) that restarts comes back empty under a new
cluster id (its *incarnation*): whatever it had acknowledged but the projector and the
analysis service had not consumed yet is gone. The Kafka transport therefore keeps every
acknowledged record, labelled with the incarnation that acknowledged it, for a window
(time and bytes); when it next finds a different incarnation, it sends the records of the
old one again before anything newer. Consumers drop the repeats by event id (ADR 0003).
Against a real, replicated Kafka the cluster id never changes and records simply age out.

A planned replacement of the embedded broker carries everything the old incarnation held
over into the new one and says so in the new cluster id (libs/runledger/incarnation.py):
the records of that old incarnation are then not sent again, but kept as the new one's,
since it holds them now: if it restarts empty before the consumers took them, they are
sent again with its own.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from runledger.incarnation import carried_over
from runledger_sdk.transport import Record


class ResendWindow:
    """Records acknowledged within the last `window_s` seconds (at most `max_bytes`), by incarnation."""

    def __init__(self, window_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._items: deque[tuple[float, str, Record]] = deque()
        self._bytes = 0
        self._per_incarnation: Counter[str] = Counter()  # so the usual check costs nothing
        self.dropped = 0  # aged out or over the byte bound (what a restart then loses)
        self.carried = 0  # not sent again because a planned replacement carried them over

    def __len__(self) -> int:
        return len(self._items)

    @property
    def enabled(self) -> bool:
        """Whether anything is kept at all."""
        return self._window_s > 0 and self._max_bytes > 0

    def add(self, incarnation: str, records: list[Record]) -> None:
        """Keep `records`, acknowledged by `incarnation`."""
        if not self.enabled or not records:
            return
        now = self._clock()
        for record in records:
            self._items.append((now, incarnation, record))
            self._bytes += record.size
        self._per_incarnation[incarnation] += len(records)
        self._prune(now)

    def orphans(self, incarnation: str) -> list[Record]:
        """Remove and return, in seq order, the records acknowledged by another incarnation.

        Those of an incarnation that `incarnation` declares carried over are kept as its own.
        """
        self._prune(self._clock())
        if len(self._items) == self._per_incarnation[incarnation]:
            return []
        kept: deque[tuple[float, str, Record]] = deque()
        out: list[Record] = []
        for stamp, inc, record in self._items:
            if inc == incarnation:
                kept.append((stamp, inc, record))
            elif carried_over(inc, incarnation):
                kept.append((stamp, incarnation, record))
                self.carried += 1
            else:
                out.append(record)
        self._items = kept
        self._bytes = sum(r.size for _, _, r in kept)
        self._per_incarnation = Counter({incarnation: len(kept)})
        return sorted(out, key=lambda r: r.seq)

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        while self._items and (self._items[0][0] < horizon or self._bytes > self._max_bytes):
            _, incarnation, record = self._items.popleft()
            self._bytes -= record.size
            self._per_incarnation[incarnation] -= 1
            self.dropped += 1
