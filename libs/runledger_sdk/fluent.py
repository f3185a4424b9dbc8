"""Module-level API acting on the active run (`rl.log_metric(...)`), as in MLflow.

Each thread has its own stack of active runs (`start_run` pushes, ending pops). A thread
without a run of its own (a data loader, a callback thread) logs to the most recently
started run of the process that is still running. Logging with no run at all starts
one, like MLflow; it ends when the interpreter exits.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, SupportsFloat, SupportsIndex

from runledger.events.models import RunStatus
from runledger_sdk.artifacts import LoggedArtifact
from runledger_sdk.client import current_client, get_client
from runledger_sdk.lineage import Dataset
from runledger_sdk.run import Run

log = logging.getLogger("runledger_sdk")

_local = threading.local()


def _stack() -> list[Run]:
    stack: list[Run] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    # Runs ended through Run.end_run (not the module function) leave the stack lazily.
    while stack and stack[-1].ended:
        stack.pop()
    return stack


def start_run(
    experiment: str | None = None,
    name: str | None = None,
    tags: dict[str, Any] | None = None,
    parent: Run | str | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Run:
    """Start a run (experiment "Default" when none); it becomes this thread's active run.

    `nested=True` makes the active run its parent; `parent` names the parent explicitly.
    A child run without `experiment` goes to its parent's experiment (when the parent was
    started by this process; else to "Default").
    Starting a second top-level run while one is active raises ValueError (end it first,
    or pass nested=True). `run_id` sets the id (e.g. several processes logging to one run).
    """
    stack = _stack()
    client = get_client()
    if isinstance(parent, Run):
        parent_run_id: str | None = parent.run_id
    elif parent is not None:
        parent_run_id = parent
    elif nested:
        parent_run_id = stack[-1].run_id if stack else None
    elif stack:
        raise ValueError(
            f"run {stack[-1].run_id} is already active: end it first, or pass nested=True to start a child run"
        )
    else:
        parent_run_id = None
    if experiment is None and parent_run_id is not None:
        # A child belongs with its parent unless told otherwise.
        experiment = (
            parent.experiment_name if isinstance(parent, Run) else client.experiment_of(parent_run_id)
        )
    run = client.start_run(
        experiment=experiment, name=name, tags=tags, parent_run_id=parent_run_id, run_id=run_id
    )
    stack.append(run)
    return run


def active_run() -> Run | None:
    """This thread's active run, else the newest running run of the process, else None."""
    stack = _stack()
    if stack:
        return stack[-1]
    client = current_client()
    return client.latest_run() if client is not None else None


def _run_for_logging() -> Run:
    run = active_run()
    if run is None:
        run = start_run()
        log.info("RunLedger: no active run, started %s (%s)", run.name, run.run_id)
    return run


def log_metric(
    key: str, value: SupportsFloat, step: SupportsIndex | None = None, timestamp: int | None = None
) -> None:
    """Log one metric point to the active run (step None = that key's next step)."""
    _run_for_logging().log_metric(key, value, step, timestamp)


def log_metrics(
    metrics: Mapping[str, SupportsFloat], step: SupportsIndex | None = None, timestamp: int | None = None
) -> None:
    """Log several metrics to the active run."""
    _run_for_logging().log_metrics(metrics, step, timestamp)


def log_param(key: str, value: Any) -> None:
    """Log one param (str()-ed) to the active run."""
    _run_for_logging().log_param(key, value)


def log_params(params: Mapping[str, Any]) -> None:
    """Log several params (str()-ed) to the active run."""
    _run_for_logging().log_params(params)


def set_tag(key: str, value: Any) -> None:
    """Set one tag (str()-ed) on the active run."""
    _run_for_logging().set_tag(key, value)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set several tags (str()-ed) on the active run."""
    _run_for_logging().set_tags(tags)


def end_run(status: str | RunStatus = RunStatus.FINISHED) -> None:
    """End this thread's active run (no-op when there is none)."""
    stack = _stack()
    if stack:
        stack.pop().end_run(status)


def flush(timeout: float | None = None) -> bool:
    """Wait until every event is acknowledged (None = RUNLEDGER_EXIT_TIMEOUT_S); False if some
    are only spooled (they are resent later)."""
    client = current_client()
    return client.flush(timeout) if client is not None else True


def log_input(dataset: Dataset | str, **details: Any) -> Dataset:
    """Record a dataset the active run reads (see Run.log_input)."""
    return _run_for_logging().log_input(dataset, **details)


def log_output(dataset: Dataset | str, **details: Any) -> Dataset:
    """Record a dataset the active run writes (see Run.log_output)."""
    return _run_for_logging().log_output(dataset, **details)


def log_model(
    name: str,
    version: int | None = None,
    source: str = "",
    *,
    path: str | os.PathLike[str] | None = None,
    model: Any = None,
) -> str:
    """Record a model the active run produced (files, size and parameter metrics: see
    Run.log_model); returns its lineage node id."""
    return _run_for_logging().log_model(name, version, source, path=path, model=model)


def log_artifact(local_path: str | os.PathLike[str], artifact_path: str | None = None) -> LoggedArtifact:
    """Store a local file as an artifact of the active run (see Run.log_artifact)."""
    return _run_for_logging().log_artifact(local_path, artifact_path)


def log_artifacts(
    local_dir: str | os.PathLike[str], artifact_path: str | None = None
) -> list[LoggedArtifact]:
    """Store every file below a local directory as artifacts of the active run."""
    return _run_for_logging().log_artifacts(local_dir, artifact_path)


def derived_from(other: Run | str, relation: str = "derived_from") -> None:
    """Record that the active run derives from another run."""
    _run_for_logging().derived_from(other, relation)
