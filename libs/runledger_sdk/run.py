"""A run: what the training code logs to. Also a context manager that ends it."""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, SupportsFloat, SupportsIndex

from runledger.events.models import RunStatus
from runledger.lineage import check_name
from runledger_sdk import artifacts as artifacts_mod
from runledger_sdk import lineage, model_size
from runledger_sdk.artifacts import ArtifactsUnavailable, LoggedArtifact
from runledger_sdk.batcher import RunBuffer, normalize_step
from runledger_sdk.validation import check_key, param_value, tag_value, terminal_status

if TYPE_CHECKING:
    from runledger_sdk.client import Client

log = logging.getLogger("runledger_sdk")


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class _ClosingSink:
    """`Run.closing_sink`: a run's buffer without the ended check."""

    def __init__(self, buffer: RunBuffer) -> None:
        self._buffer = buffer

    def log_metrics(
        self, metrics: Mapping[str, SupportsFloat], step: int | None = None, timestamp: int | None = None
    ) -> None:
        if metrics:
            ts = now_ms() if timestamp is None else int(timestamp)
            self._buffer.add_metrics(metrics, normalize_step(step), ts)


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
        # Files this process stored for the run, path -> latest (what lint.artifact_bloat checks).
        self._artifacts: dict[str, LoggedArtifact] = {}
        self._artifacts_lock = threading.Lock()
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

    @property
    def closing_sink(self) -> _ClosingSink:
        """Logs metrics while the run ends, after `end_run` refused user logging and before its
        StatusChanged: the system-metrics sampler's closing sample. Not for user code."""
        return _ClosingSink(self._buffer)

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

    def log_model(
        self,
        name: str,
        version: int | None = None,
        source: str = "",
        *,
        path: str | os.PathLike[str] | None = None,
        model: Any = None,
    ) -> str:
        """Record a model the run produced; with `version`, register that version. Returns its node id.

        `path` (a file or a directory) is stored as artifacts under `models/<name>/`; a
        `model` object without `path` is pickled there as `model.pkl` (save torch models
        with torch.save and pass `path`). Logs `system/model_size_bytes` (bytes of those
        files) and `system/model_parameters` (parameters of `model`, when its kind is known:
        runledger_sdk.model_size). Without artifact uploads (offline, Kafka-only) the files
        are not stored (a warning says so) but the metrics and the lineage are recorded;
        `source` then defaults to "" instead of `runs:/<run_id>/models/<name>`.
        """
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        check_name(name, "model name")
        prefix = artifacts_mod.join_path("models", name)
        parameters = model_size.count_parameters(model) if model is not None else None
        size: int | None = None
        with tempfile.TemporaryDirectory(prefix="runledger-model-") as tmp:
            files_root: Path | None = Path(path) if path is not None else None
            if files_root is None and model is not None:
                files_root = Path(tmp, "model.pkl")
                try:
                    with files_root.open("wb") as f:
                        pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # not picklable: the model is still recorded
                    log.warning("RunLedger: model %r cannot be pickled (%s); no files stored", name, exc)
                    files_root = None
            if files_root is not None:
                files = artifacts_mod.files_below(files_root)
                size = sum(file.stat().st_size for _, file in files)
                if self._client.artifacts is None:
                    log.warning(
                        "RunLedger: model %r not stored: this client uploads no artifacts"
                        " (offline, Kafka-only or RUNLEDGER_UPLOAD_ARTIFACTS=off)",
                        name,
                    )
                else:
                    for rel, file in files:
                        self._upload_file(artifacts_mod.join_path(prefix, rel), file)
                    source = source or f"runs:/{self.run_id}/{prefix}"
        metrics: dict[str, float] = {}
        if size is not None:
            metrics[model_size.MODEL_SIZE_KEY] = size
        if parameters is not None:
            metrics[model_size.MODEL_PARAMETERS_KEY] = parameters
        if metrics:
            self.log_metrics(metrics)
        node, events = lineage.model_events(self.run_id, name, version, source)
        self._emit_lineage(events)
        return node

    # --- artifacts (runledger_sdk.artifacts) ------------------------------------------------------------

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> LoggedArtifact:
        """Store a local file as the run's `<artifact_path>/<file name>` (MLflow's convention).

        Raises ArtifactsUnavailable when this client uploads no artifacts, ArtifactUploadError
        when the API does not take it.
        """
        local = Path(local_path)
        if not local.is_file():
            raise FileNotFoundError(f"{local} is not a file")
        return self._upload_file(artifacts_mod.join_path(artifact_path, local.name), local)

    def log_artifacts(
        self, local_dir: str | os.PathLike[str], artifact_path: str | None = None
    ) -> list[LoggedArtifact]:
        """Store every file below a local directory under `artifact_path`, keeping the layout."""
        root = Path(local_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        return [
            self._upload_file(artifacts_mod.join_path(artifact_path, rel), file)
            for rel, file in artifacts_mod.files_below(root)
        ]

    def _upload_file(self, path: str, local: Path) -> LoggedArtifact:
        if self.ended:
            raise RunEndedError(f"run {self.run_id} has ended")
        uploader = self._client.artifacts
        if uploader is None:
            raise ArtifactsUnavailable(
                f"cannot store {path!r}: this client uploads no artifacts (offline mode, a Kafka"
                " bootstrap without RUNLEDGER_URL, or RUNLEDGER_UPLOAD_ARTIFACTS=off)"
            )
        stored = uploader.upload_file(self.run_id, path, local)
        self.record_artifact(stored)
        return stored

    def record_artifact(self, artifact: LoggedArtifact) -> None:
        """Remember a file stored for the run (the latest per path), for lint."""
        with self._artifacts_lock:
            self._artifacts[artifact.path] = artifact

    def logged_artifacts(self) -> list[LoggedArtifact]:
        """The files this process stored for the run (the latest per path), in logging order."""
        with self._artifacts_lock:
            return list(self._artifacts.values())

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
