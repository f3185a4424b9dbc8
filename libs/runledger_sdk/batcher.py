"""Batching: per-run columnar buffers, and the thread that cuts them into events.

The training thread appends points straight into typed arrays (array.array: no object
per point) under a per-run lock. The batcher thread swaps the arrays out at least every
`interval` (or as soon as a buffer holds a full batch) and turns them into
MetricsLogged events of at most `max_points` points, with ParamsLogged / TagsSet events
for the params and tags coalesced meanwhile. Every event of a run passes through
`Batcher.emit`/`cut` under one lock, so a run's events are enqueued in the order they
were formed: RunStarted first, buffered data before the StatusChanged that ends it.
"""

from __future__ import annotations

import logging
import operator
import threading
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, SupportsIndex, cast

import numpy as np

from runledger.events.codec import envelope_dict, metric_columns
from runledger.events.models import EventType, Producer
from runledger_sdk.delivery import Delivery
from runledger_sdk.signing import Signer
from runledger_sdk.validation import check_key

log = logging.getLogger("runledger_sdk.batcher")

MAX_ITEMS_PER_EVENT = 100  # params/tags per event, as MLflow's log-batch limit


@dataclass(slots=True)
class _Taken:
    kidx: array[int]
    values: array[float]
    steps: array[int]
    timestamps: array[int]
    params: dict[str, str]
    tags: dict[str, str]


class RunBuffer:
    """What one run logged since the last cut, in columns."""

    __slots__ = (
        "experiment_id",
        "key_to_idx",
        "keys",
        "kidx",
        "lock",
        "next_step",
        "params",
        "run_id",
        "run_key",
        "steps",
        "tags",
        "timestamps",
        "values",
    )

    def __init__(self, run_id: str, experiment_id: str) -> None:
        self.lock = threading.Lock()
        self.run_id = run_id
        self.run_key = run_id.encode()
        self.experiment_id = experiment_id
        # Keys get a run-wide index once (validated then), so the hot path is one dict lookup.
        self.keys: list[str] = []
        self.key_to_idx: dict[str, int] = {}
        self.next_step: list[int] = []  # per key: the step an auto-stepped point gets next
        self.kidx: array[int] = array("i")
        self.values: array[float] = array("d")
        self.steps: array[int] = array("q")
        self.timestamps: array[int] = array("q")
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def _new_key(self, key: Any) -> int:
        check_key(key, "metric key")
        idx = len(self.keys)
        self.keys.append(key)
        self.key_to_idx[key] = idx
        self.next_step.append(0)
        return idx

    def _rollback(self, n: int) -> None:
        # Keep the four columns the same length when a conversion fails midway.
        for column in (self.kidx, self.values, self.steps, self.timestamps):
            del column[n:]

    def add_metric(self, key: str, value: Any, step: int | None, timestamp: int) -> int:
        """Append one point; return the number of buffered points."""
        with self.lock:
            idx = self.key_to_idx.get(key)
            if idx is None:
                idx = self._new_key(key)
            n = len(self.values)
            following = self.next_step[idx]
            if step is None:
                step = following
            try:
                self.values.append(value)
                self.steps.append(step)
                self.timestamps.append(timestamp)
                self.kidx.append(idx)
            except BaseException:
                self._rollback(n)
                raise
            # Only once the point is in: a failed call must not move the key's counter.
            if step >= following:
                self.next_step[idx] = step + 1
            return n + 1

    def add_metrics(self, metrics: Mapping[str, Any], step: int | None, timestamp: int) -> int:
        """Append one point per key (all with `timestamp`); return the number of buffered points."""
        count = len(metrics)
        with self.lock:
            get = self.key_to_idx.get
            found = [get(k) for k in metrics]
            if None in found:  # a key seen for the first time: validate it (slow path)
                idxs = [self.key_to_idx[k] if k in self.key_to_idx else self._new_key(k) for k in metrics]
            else:
                idxs = cast(list[int], found)
            next_step = self.next_step
            n = len(self.values)
            try:
                # fromlist converts in C and leaves the array unchanged when an item fails.
                self.values.fromlist(list(metrics.values()))
                if step is None:
                    self.steps.fromlist([next_step[i] for i in idxs])
                else:
                    self.steps.fromlist([step] * count)
                self.timestamps.fromlist([timestamp] * count)
                self.kidx.fromlist(idxs)
            except BaseException:
                self._rollback(n)
                raise
            # Only once the points are in: a failed call must not move the keys' counters.
            if step is None:
                for i in idxs:
                    next_step[i] += 1
            else:
                following = step + 1
                for i in idxs:
                    if next_step[i] < following:
                        next_step[i] = following
            return n + count

    def add_params(self, params: Mapping[str, str]) -> None:
        """Coalesce already validated params into the next ParamsLogged event."""
        with self.lock:
            self.params.update(params)

    def add_tags(self, tags: Mapping[str, str]) -> None:
        """Coalesce already validated tags into the next TagsSet event."""
        with self.lock:
            self.tags.update(tags)

    def take(self) -> _Taken | None:
        """Swap out everything buffered (None when empty)."""
        with self.lock:
            if not self.values and not self.params and not self.tags:
                return None
            taken = _Taken(self.kidx, self.values, self.steps, self.timestamps, self.params, self.tags)
            self.kidx, self.values = array("i"), array("d")
            self.steps, self.timestamps = array("q"), array("q")
            self.params, self.tags = {}, {}
            return taken


def normalize_step(step: SupportsIndex | None) -> int | None:
    """`step` as an int (numpy ints welcome); TypeError for floats and other non-integers."""
    return None if step is None else operator.index(step)


class Batcher:
    """Forms events from run buffers and hands them to delivery, in per-run order."""

    def __init__(
        self,
        delivery: Delivery,
        *,
        tenant_id: str,
        producer: Producer,
        max_points: int,
        interval_s: float,
        signer: Signer | None = None,
    ) -> None:
        self._delivery = delivery
        # Every event is signed as it is encoded (once): spool, offline files and resends
        # carry the signed bytes.
        self._encode = (signer or Signer(None)).encode
        self._tenant_id = tenant_id
        self._producer = producer
        self.max_points = max_points
        # A buffer this large is cut by the logging thread itself: the bound on memory
        # when the batcher thread cannot keep up (CPU starved).
        self.hard_limit = max_points * 50
        self._interval = interval_s
        self._lock = threading.RLock()  # formation + enqueue: keeps each run's events in order
        self._buffers: dict[str, RunBuffer] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="runledger-batcher", daemon=True)
        self._thread.start()

    def register(self, buffer: RunBuffer) -> None:
        """Cut this run's buffer periodically from now on."""
        with self._lock:
            self._buffers[buffer.run_id] = buffer

    def unregister(self, buffer: RunBuffer) -> None:
        """Stop cutting this buffer (the run ended)."""
        with self._lock:
            self._buffers.pop(buffer.run_id, None)

    def buffer_full(self, buffer: RunBuffer, points: int) -> None:
        """Called by a logging thread whose buffer holds a full batch or more."""
        if points >= self.hard_limit:
            self.cut(buffer)
        elif not self._wake.is_set():
            self._wake.set()

    def emit(
        self,
        buffer: RunBuffer | None,
        type: EventType,
        payload: dict[str, Any],
        *,
        key: bytes,
        run_id: str | None = None,
        experiment_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> int:
        """Enqueue one event after whatever `buffer` holds; return its delivery seq."""
        with self._lock:
            items = self._form(buffer) if buffer is not None else []
            event = envelope_dict(
                tenant_id=self._tenant_id,
                type=type,
                payload=payload,
                producer=self._producer,
                run_id=run_id,
                experiment_id=experiment_id,
                occurred_at=occurred_at,
            )
            items.append((key, self._encode(event)))
            return self._delivery.enqueue(items)

    def cut(self, buffer: RunBuffer) -> int:
        """Turn what `buffer` holds into events now; return the last delivery seq."""
        with self._lock:
            return self._delivery.enqueue(self._form(buffer))

    def cut_all(self) -> int:
        """Cut every registered buffer; return the last delivery seq."""
        with self._lock:
            items: list[tuple[bytes, bytes]] = []
            for buffer in list(self._buffers.values()):
                items.extend(self._form(buffer))
            return self._delivery.enqueue(items)

    def stop(self, timeout: float) -> None:
        """Stop the thread (callers cut what is left with cut_all)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.cut_all()
            except Exception:  # pragma: no cover - a bug; keep batching the other runs
                log.exception("cutting metric batches failed")

    def _envelope(self, buffer: RunBuffer, type: EventType, payload: dict[str, Any]) -> tuple[bytes, bytes]:
        event = envelope_dict(
            tenant_id=self._tenant_id,
            type=type,
            payload=payload,
            producer=self._producer,
            run_id=buffer.run_id,
            experiment_id=buffer.experiment_id,
        )
        return buffer.run_key, self._encode(event)

    def _form(self, buffer: RunBuffer) -> list[tuple[bytes, bytes]]:
        taken = buffer.take()
        if taken is None:
            return []
        items: list[tuple[bytes, bytes]] = []
        for field, type in (("params", EventType.PARAMS_LOGGED), ("tags", EventType.TAGS_SET)):
            data: dict[str, str] = getattr(taken, field)
            entries = list(data.items())
            for start in range(0, len(entries), MAX_ITEMS_PER_EVENT):
                chunk = dict(entries[start : start + MAX_ITEMS_PER_EVENT])
                items.append(self._envelope(buffer, type, {field: chunk}))
        n = len(taken.values)
        if n:
            # Zero-copy views of the swapped-out arrays (kept alive by `taken`).
            kidx = np.frombuffer(taken.kidx, dtype=np.int32)
            values = np.frombuffer(taken.values, dtype=np.float64)
            steps = np.frombuffer(taken.steps, dtype=np.int64)
            stamps = np.frombuffer(taken.timestamps, dtype=np.int64)
            for start in range(0, n, self.max_points):
                part = slice(start, start + self.max_points)
                # The event lists only the keys it uses, indexed from 0.
                used, local = np.unique(kidx[part], return_inverse=True)
                keys = [buffer.keys[i] for i in used.tolist()]
                payload = metric_columns(
                    keys, local.astype(np.int32).ravel(), values[part], steps[part], stamps[part]
                )
                items.append(self._envelope(buffer, EventType.METRICS_LOGGED, payload))
        return items
