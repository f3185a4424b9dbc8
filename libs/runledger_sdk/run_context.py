"""What a top-level run records without being asked: code state, environment, seed, lint.

The client calls `capture_run_context` right after a top-level run started and
`close_run_context` when it ends, before its final StatusChanged.

The capture (git and conda subprocesses, reading package metadata) runs in a background
thread, so `start_run` does not wait for it: CodeStateCaptured then EnvironmentCaptured (with
their tags) are sent when ready. Ending the run waits up to CONTEXT_WAIT_S for a capture still
running (KILLED_WAIT_S for a killed run); whatever is not ready then is dropped, so no event
of the run follows its end.

When the client uploads artifacts (runledger_sdk.artifacts), the capture also stores the
code diff (runledger/code/diff.patch, referenced by the event's `diff_artifact`) and the
environment (runledger/environment.json, plus runledger/conda.yaml in conda) before sending
the events. An upload that fails (API unreachable, refused) is logged at warning level;
the diff then travels inline in the event, and the environment is still in its event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runledger.events.models import (
    CodeStateCapturedPayload,
    EnvironmentCapturedPayload,
    EventType,
    Payload,
    RunStatus,
)
from runledger_sdk import code_state, environment, lint, seeds
from runledger_sdk.artifacts import ArtifactUploadError
from runledger_sdk.validation import check_key, tag_value

if TYPE_CHECKING:
    from runledger_sdk.client import Client
    from runledger_sdk.run import Run

log = logging.getLogger("runledger_sdk")

CONTEXT_WAIT_S = 10.0
KILLED_WAIT_S = 2.0


class _Capture:
    """The capture of one run; `closed` (under `lock`) stops it from sending anything."""

    def __init__(self, client: Client, run: Run) -> None:
        self.client = client
        self.run = run
        self.lock = threading.Lock()
        self.closed = False
        self.upload_failed = False
        self.thread: threading.Thread | None = None

    def send(
        self, type: EventType, model: type[Payload], payload: dict[str, Any], tags: dict[str, str]
    ) -> None:
        """Emit one captured document (validated first) and its tags, unless the run has ended."""
        body = model.model_validate(payload).model_dump(mode="json")
        checked = {check_key(k, "tag key"): tag_value(k, v) for k, v in tags.items()}
        with self.lock:
            if self.closed:
                return
            run = self.run
            if checked:
                run.buffer.add_tags(checked)
                run.tags.update(checked)
            self.client.batcher.emit(
                run.buffer,
                type,
                body,
                key=run.buffer.run_key,
                run_id=run.run_id,
                experiment_id=run.experiment_id,
            )

    def upload(self, path: str, data: bytes) -> bool:
        """Store `data` as the run's artifact `path`; False (logged) when it could not be."""
        uploader = self.client.artifacts
        if uploader is None or self.closed or self.upload_failed:
            return False
        try:
            stored = uploader.upload_bytes(self.run.run_id, path, data)
        except ArtifactUploadError as exc:
            # One failure (API down, key refused) is enough: the next file would fail the same way.
            self.upload_failed = True
            log.warning("RunLedger: storing %s of run %s failed: %s", path, self.run.run_id, exc)
            return False
        self.run.record_artifact(stored)
        return True

    def work(self, steps: list[Callable[[], None]]) -> None:
        for step in steps:
            if self.closed:
                return
            try:
                step()
            except Exception as exc:  # never let the capture break a run
                log.warning("RunLedger: capturing the run context failed: %s", exc, exc_info=True)


_captures: dict[str, _Capture] = {}
_captures_lock = threading.Lock()


def capture_run_context(client: Client, run: Run) -> None:
    """At the start of a top-level run: log a pending seed, start capturing code and environment."""
    seed = seeds.take_pending_seed()
    if seed is not None:
        run.log_param("seed", seed)
    settings = client.settings
    capture = _Capture(client, run)
    steps: list[Callable[[], None]] = []
    if settings.capture_code_state:

        def code() -> None:
            # With uploads the diff is a file, so it may be larger than an event can carry.
            cap = settings.code_diff_max_bytes if client.artifacts is not None else code_state.DIFF_MAX_BYTES
            state = code_state.capture_code_state(max_diff_bytes=cap)
            code_state.store_diff(state, capture.upload)
            capture.send(
                EventType.CODE_STATE_CAPTURED,
                CodeStateCapturedPayload,
                state,
                code_state.code_state_tags(state),
            )

        steps.append(code)
    if settings.capture_environment:

        def env() -> None:
            found, files = environment.capture_environment_with_files()
            if client.artifacts is not None:
                for path, data in files.items():
                    capture.upload(path, data)
            capture.send(
                EventType.ENVIRONMENT_CAPTURED,
                EnvironmentCapturedPayload,
                found,
                environment.environment_tags(found),
            )

        steps.append(env)
    with _captures_lock:
        _captures[run.run_id] = capture
    if steps:
        capture.thread = threading.Thread(
            target=capture.work, args=(steps,), name="runledger-run-context", daemon=True
        )
        capture.thread.start()


def close_run_context(client: Client, run: Run, status: RunStatus) -> None:
    """At the end of a top-level run: wait for the capture, then lint a FINISHED run."""
    with _captures_lock:
        capture = _captures.pop(run.run_id, None)
    if capture is not None:
        if capture.thread is not None:
            # A killed run (SIGTERM: preemption) keeps its grace period for flushing.
            wait = KILLED_WAIT_S if status is RunStatus.KILLED else CONTEXT_WAIT_S
            capture.thread.join(wait)
            if capture.thread.is_alive():
                log.warning(
                    "RunLedger: run %s ended before its code/environment capture finished (%.0f s);"
                    " what was not captured yet is left out",
                    run.run_id,
                    wait,
                )
        with capture.lock:
            capture.closed = True
    if client.settings.lint_runs and status is RunStatus.FINISHED:
        try:
            findings = lint.lint_run(run, artifact_max_bytes=client.settings.lint_artifact_max_bytes)
            lint.emit_findings(client, run, findings)
        except Exception as exc:  # pragma: no cover - a bug; the run still ends
            log.warning("RunLedger: linting run %s failed: %s", run.run_id, exc, exc_info=True)
