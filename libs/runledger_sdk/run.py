"""A run: what the training code logs to. Also a context manager that ends it."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, SupportsFloat, SupportsIndex

from runledger.events.models import RunStatus
from runledger_sdk import lineage
from runledger_sdk.batcher import RunBuffer, normalize_step
from runledger_sdk.validation import check_key, param_value, tag_value, terminal_status

if TYPE_CHECKING:
    import os

    from runledger_sdk.client import Client


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class RunEndedError(RuntimeError):
    """Logging to a run that has already ended."""


class Run:
    """One run. Log with its methods; end it with `end_run` or by leaving a `with` block.

    Metric steps: `step=None` gives each key its own counter (0, 1, 2, ...); an explicit
    step moves that key's counter past it, so mixing both keeps steps increasing.
    """

    def __init__(
        self,
        client: Client,
        buffer: RunBuffer,
        *,
        experiment_name: str,
        name: str,
        parent_run_id: str | None,
        start_time: int,
        tags: dict[str, str],
    ) -> None:
        self._client = client
        self._buffer = buffer
        self._wake_at = client.batcher.max_points
        self._end_lock = threading.Lock()
        self.run_id = buffer.run_id
        self.experiment_id = buffer.experiment_id
        self.experiment_name = experiment_name
        self.name = name
        self.parent_run_id = parent_run_id
        self.start_time = start_time
        self.tags = dict(tags)
        # Keys of the params this process logged to the run (what runledger_sdk.lint checks).
        self.param_keys: set[str] = set()
        self.end_time: int | None = None
        self.status = RunStatus.RUNNING
        self.ended = False

    def __repr__(self) -> str:
        return f"<Run {self.name!r} id={self.run_id} status={self.status.value}>"

    # --- metrics (hot path) ------------------------------------------------------------------

    def log_metric(
        self, key: str, value: SupportsFloat, step: SupportsIndex | None = None, timestamp: int | None = None
    ) -> None:
        """Log one metric point (timestamp in ms since the epoch, default now)."""
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        ts = now_ms() if timestamp is None else int(timestamp)
        points = self._buffer.add_metric(key, value, normalize_step(step), ts)
        if points >= self._wake_at:
            self._client.batcher.buffer_full(self._buffer, points)

    def log_metrics(
        self,
        metrics: Mapping[str, SupportsFloat],
        step: SupportsIndex | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Log several metrics at once (same step and timestamp for all)."""
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        if not metrics:
            return
        ts = now_ms() if timestamp is None else int(timestamp)
        points = self._buffer.add_metrics(metrics, normalize_step(step), ts)
        if points >= self._wake_at:
            self._client.batcher.buffer_full(self._buffer, points)

    # --- params and tags ------------------------------------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        """Log one param (the value is str()-ed)."""
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log several params (values are str()-ed)."""
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        checked = {check_key(k, "param key"): param_value(k, v) for k, v in params.items()}
        if checked:
            self._buffer.add_params(checked)
            self.param_keys.update(checked)

    def set_tag(self, key: str, value: Any) -> None:
        """Set one tag (the value is str()-ed)."""
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set several tags (values are str()-ed)."""
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        checked = {check_key(k, "tag key"): tag_value(k, v) for k, v in tags.items()}
        if checked:
            self._buffer.add_tags(checked)
            self.tags.update(checked)

    # --- lineage (runledger_sdk.lineage) ---------------------------------------------------------------

    def log_input(
        self,
        dataset: lineage.Dataset | str,
        *,
        version: str | None = None,
        digest: str | None = None,
        source: str | os.PathLike[str] | None = None,
        source_type: str | None = None,
        context: str = lineage.DEFAULT_CONTEXT,
        tags: Mapping[str, Any] | None = None,
        max_digest_bytes: int = lineage.MAX_DIGEST_BYTES,
    ) -> lineage.Dataset:
        """Record a dataset the run reads (hashing a local `source` when no digest is given)."""
        ds = lineage.resolve_dataset(
            dataset, version=version, digest=digest, source=source, source_type=source_type,
            max_digest_bytes=max_digest_bytes,
        )  # fmt: skip
        self._emit_lineage(lineage.input_events(self.run_id, ds, context, tags))
        return ds

    def log_output(
        self,
        dataset: lineage.Dataset | str,
        *,
        version: str | None = None,
        digest: str | None = None,
        source: str | os.PathLike[str] | None = None,
        source_type: str | None = None,
        max_digest_bytes: int = lineage.MAX_DIGEST_BYTES,
    ) -> lineage.Dataset:
        """Record a dataset the run writes (edge run -> dataset, "output")."""
        ds = lineage.resolve_dataset(
            dataset, version=version, digest=digest, source=source, source_type=source_type,
            max_digest_bytes=max_digest_bytes,
        )  # fmt: skip
        self._emit_lineage(lineage.output_events(self.run_id, ds))
        return ds

    def log_model(self, name: str, version: int | None = None, source: str = "") -> str:
        """Record a model the run produced; with `version`, register that version. Returns its node id."""
        node, events = lineage.model_events(self.run_id, name, version, source)
        self._emit_lineage(events)
        return node

    def derived_from(self, other: Run | str, relation: str = "derived_from") -> None:
        """Record that this run derives from another (fine_tuned_from, resumed_from, ...)."""
        other_id = other.run_id if isinstance(other, Run) else other
        self._emit_lineage(lineage.derived_events(self.run_id, other_id, relation))

    def _emit_lineage(self, events: list[lineage.Event]) -> None:
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        for type, payload in events:
            self._client.batcher.emit(
                self._buffer, type, payload, key=self._buffer.run_key,
                run_id=self.run_id, experiment_id=self.experiment_id,
            )  # fmt: skip

    # --- lifecycle ----------------------------------------------------------------------------------

    def end_run(self, status: str | RunStatus = RunStatus.FINISHED) -> None:
        """End the run (FINISHED, FAILED or KILLED); a second call does nothing."""
        final = terminal_status(status)
        with self._end_lock:
            if self.ended:
                return
            self.ended = True
        self.end_time = now_ms()
        self.status = final
        self._client.end_run(self, final, self.end_time)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far is acknowledged (see `runledger_sdk.flush`)."""
        return self._client.flush(timeout)

    @property
    def metric_keys(self) -> list[str]:
        """Keys of the metrics this process logged to the run, in first-logged order."""
        with self._buffer.lock:
            return list(self._buffer.keys)

    @property
    def buffer(self) -> RunBuffer:
        """The run's columnar buffer (internal)."""
        return self._buffer

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end_run(status_for_exception(exc))


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM (see RUNLEDGER_HANDLE_SIGTERM): runs end KILLED."""


def status_for_exception(exc: BaseException | None) -> RunStatus:
    """The status a run ends with when `exc` (or nothing) ended its block."""
    if exc is None:
        return RunStatus.FINISHED
    if isinstance(exc, KeyboardInterrupt | Terminated):
        return RunStatus.KILLED
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return RunStatus.FINISHED
    return RunStatus.FAILED
