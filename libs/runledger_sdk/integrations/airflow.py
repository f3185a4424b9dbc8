"""Apache Airflow: runs tagged with their task, one parent run per DAG run, a listener plugin.

Airflow is never imported here unless a listener or plugin is built inside Airflow: everything
works from what Airflow hands a task, so neither the SDK nor its tests need Airflow.

Tags inside a task
    Airflow exports the context of the running task instance to its process as environment
    variables (AIRFLOW_VAR_NAME_FORMAT_MAPPING in airflow.utils.operator_helpers for 2.x,
    airflow.sdk.execution_time.context for 3.x): AIRFLOW_CTX_DAG_ID, _TASK_ID, _DAG_RUN_ID,
    _TRY_NUMBER, _DAG_OWNER, _DAG_EMAIL, and _EXECUTION_DATE (2.x) or _LOGICAL_DATE (3.x).
    A top-level run started there gets the tags airflow.dag_id, airflow.task_id,
    airflow.dag_run_id, airflow.try_number, airflow.logical_date and airflow.owner
    (`tags_for_new_run`, called by the client when a top-level run starts). A task's context
    dict (the kwargs of a PythonOperator callable, `get_current_context()`) gives the same
    tags, plus airflow.map_index for a mapped task: `airflow_context_tags(context=...)`.

One parent run per DAG run
    `start_task_run(context)` starts a run for the task, nested under a run that stands for
    the DAG run. The parent's id derives from (tenant, dag_id, dag_run_id)
    (`dag_run_parent_id`), so every task of a DAG run, in whatever worker or process, names
    the same parent without talking to the others: each emits the parent's RunStarted and
    the projector keeps the first (INSERT ... ON CONFLICT DO NOTHING). The task run's id
    derives from the task instance and its try (`task_run_id`): a retry is a new run, and
    any process can end the run of a given try. The experiment is the dag_id unless told
    otherwise. A task never ends the parent: `end_dag_run` (from a DAG's on_success_callback
    / on_failure_callback) or the listener's on_dag_run_* hooks set its final status.

The listener
    `RunLedgerListener` implements Airflow's listener hooks: on_task_instance_running starts
    the task's run, on_task_instance_success / _failed / _skipped end it (FINISHED, FAILED,
    FINISHED) and flush, on_dag_run_running / _success / _failed open and end the parent.
    Install it as a plugin, e.g. $AIRFLOW_HOME/plugins/runledger.py:

        from runledger_sdk.integrations.airflow import make_airflow_plugin

        RunLedgerPlugin = make_airflow_plugin()

    Where Airflow is importable, creating the listener marks its hook methods with Airflow's
    pluggy `hookimpl`; without Airflow they stay plain methods. The hooks take only the
    arguments every Airflow 2.x/3.x spec has (no `session`, no `error`). Their errors are
    logged, never raised into Airflow.

RUNLEDGER_AIRFLOW_INSTANCE (optional) names the Airflow deployment. It enters the derived
ids, so two deployments logging to one tenant with the same dag_id and run id (scheduled run
ids repeat: scheduled__<logical date>) get different parents.
"""

from __future__ import annotations

import datetime as dt
import getpass
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runledger.events.codec import experiment_id_for
from runledger.events.models import MAX_TAG_VALUE_LENGTH, EventType, RunStartedPayload, RunStatus, utc_now
from runledger_sdk.validation import terminal_status

if TYPE_CHECKING:
    from runledger_sdk.client import Client
    from runledger_sdk.run import Run

log = logging.getLogger("runledger_sdk")

# What Airflow exports for a running task (AIRFLOW_VAR_NAME_FORMAT_MAPPING, env_var_format).
ENV_DAG_ID = "AIRFLOW_CTX_DAG_ID"
ENV_TASK_ID = "AIRFLOW_CTX_TASK_ID"
ENV_DAG_RUN_ID = "AIRFLOW_CTX_DAG_RUN_ID"
ENV_TRY_NUMBER = "AIRFLOW_CTX_TRY_NUMBER"
ENV_LOGICAL_DATE = "AIRFLOW_CTX_LOGICAL_DATE"  # Airflow 3
ENV_EXECUTION_DATE = "AIRFLOW_CTX_EXECUTION_DATE"  # Airflow 2
ENV_DAG_OWNER = "AIRFLOW_CTX_DAG_OWNER"
ENV_DAG_EMAIL = "AIRFLOW_CTX_DAG_EMAIL"  # read by nobody here: an address is no tag
INSTANCE_ENV = "RUNLEDGER_AIRFLOW_INSTANCE"

TAG_DAG_ID = "airflow.dag_id"
TAG_TASK_ID = "airflow.task_id"
TAG_DAG_RUN_ID = "airflow.dag_run_id"
TAG_TRY_NUMBER = "airflow.try_number"
TAG_LOGICAL_DATE = "airflow.logical_date"
TAG_OWNER = "airflow.owner"
TAG_MAP_INDEX = "airflow.map_index"
TAG_STATE = "airflow.state"

# In order: the first variable present gives the tag (3.x's logical date before 2.x's name).
_ENV_TAGS = (
    (ENV_DAG_ID, TAG_DAG_ID),
    (ENV_TASK_ID, TAG_TASK_ID),
    (ENV_DAG_RUN_ID, TAG_DAG_RUN_ID),
    (ENV_TRY_NUMBER, TAG_TRY_NUMBER),
    (ENV_LOGICAL_DATE, TAG_LOGICAL_DATE),
    (ENV_EXECUTION_DATE, TAG_LOGICAL_DATE),
    (ENV_DAG_OWNER, TAG_OWNER),
)
# The tags that say which task instance the values belong to.
_IDENTITY_TAGS = (TAG_DAG_ID, TAG_DAG_RUN_ID, TAG_TASK_ID)
# What every task of a DAG run agrees on: the parent's tags (an owner is per task).
_DAG_RUN_TAGS = (TAG_DAG_ID, TAG_DAG_RUN_ID, TAG_LOGICAL_DATE)

# Fixed forever: the derived ids must be the same in every process and every SDK version.
_DAG_RUN_NAMESPACE = uuid.UUID("039d1ba7-5600-4646-a86b-afa65d864554")
_TASK_RUN_NAMESPACE = uuid.UUID("64fabfb6-894c-4dc9-abbc-81b2352deac4")

MAX_RUN_NAME = 500


# --- tags -------------------------------------------------------------------------------------------


def _attr(obj: Any, name: str) -> Any:
    """obj.name, or None (also when reading it fails: an ORM attribute that needs a session)."""
    if obj is None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _item(context: Mapping[str, Any], key: str) -> Any:
    try:
        with warnings.catch_warnings():  # Airflow 2 warns on deprecated keys (execution_date)
            warnings.simplefilter("ignore")
            return context.get(key)
    except Exception:
        return None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _text(value: Any) -> str | None:
    """A tag value as Airflow exports it (datetimes in ISO format); None for nothing."""
    if value is None:
        return None
    text = value.isoformat() if isinstance(value, dt.date) else str(value)
    return text[:MAX_TAG_VALUE_LENGTH] or None


def _env_tags(env: Mapping[str, str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for var, tag in _ENV_TAGS:
        value = _text(env.get(var))
        if value is not None:
            tags.setdefault(tag, value)
    return tags


def _context_tags(context: Mapping[str, Any]) -> dict[str, str]:
    """Tags from a task's context dict (keys ti/task_instance, task, dag, dag_run, run_id,
    logical_date) or a part of it (only dag_run, only ti)."""
    ti = _first(_item(context, "ti"), _item(context, "task_instance"))
    task = _first(_item(context, "task"), _attr(ti, "task"))
    dag = _first(_item(context, "dag"), _attr(task, "dag"))
    dag_run = _first(_item(context, "dag_run"), _attr(ti, "dag_run"))
    values = {
        TAG_DAG_ID: _first(_attr(ti, "dag_id"), _attr(dag, "dag_id"), _attr(dag_run, "dag_id")),
        TAG_TASK_ID: _first(_attr(ti, "task_id"), _attr(task, "task_id")),
        TAG_DAG_RUN_ID: _first(_item(context, "run_id"), _attr(dag_run, "run_id"), _attr(ti, "run_id")),
        TAG_TRY_NUMBER: _attr(ti, "try_number"),
        TAG_LOGICAL_DATE: _first(
            _item(context, "logical_date"),
            _attr(dag_run, "logical_date"),
            _item(context, "execution_date"),
            _attr(dag_run, "execution_date"),
        ),
        TAG_OWNER: _first(_attr(task, "owner"), _attr(dag, "owner")),
    }
    map_index = _attr(ti, "map_index")
    if isinstance(map_index, int) and map_index >= 0:  # -1: not a mapped task
        values[TAG_MAP_INDEX] = map_index
    return {tag: text for tag, value in values.items() if (text := _text(value)) is not None}


def airflow_context_tags(
    env: Mapping[str, str] | None = None, context: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The airflow.* tags of the task described by `env` (default os.environ: the AIRFLOW_CTX_*
    variables) and `context` (a task's context dict); the context wins. {} outside Airflow.

    Variables that name another task instance than the context does are ignored altogether.
    """
    env_tags = _env_tags(os.environ if env is None else env)
    if context is None:
        return env_tags
    context_tags = _context_tags(context)
    if any(t in env_tags and t in context_tags and env_tags[t] != context_tags[t] for t in _IDENTITY_TAGS):
        env_tags = {}
    return {**env_tags, **context_tags}


def tags_for_new_run() -> dict[str, str]:
    """The tags a top-level run starting now gets: airflow.* inside an Airflow task, else {}.

    Called by the client on every top-level run start: cheap, and never raises.
    """
    if ENV_DAG_ID not in os.environ:
        return {}
    try:
        return airflow_context_tags()
    except Exception:  # never let tagging break a run
        log.debug("RunLedger: reading the Airflow context failed", exc_info=True)
        return {}


# --- derived ids ------------------------------------------------------------------------------------


def _tenant(tenant: str | None) -> str:
    if tenant is not None:
        return tenant
    from runledger_sdk.client import get_client

    return get_client().settings.tenant


def _derived_id(namespace: uuid.UUID, parts: list[str]) -> str:
    # JSON: unambiguous whatever the parts contain (run ids may hold any character).
    return uuid.uuid5(namespace, json.dumps(parts)).hex


def dag_run_parent_id(dag_id: str, dag_run_id: str, *, tenant: str | None = None) -> str:
    """The id (32 hex) of the parent run of a DAG run: the same in every process.

    `tenant` defaults to the SDK's (RUNLEDGER_TENANT); RUNLEDGER_AIRFLOW_INSTANCE enters it too.
    """
    return _derived_id(
        _DAG_RUN_NAMESPACE, [_tenant(tenant), os.environ.get(INSTANCE_ENV, ""), dag_id, dag_run_id]
    )


def task_run_id(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    try_number: int | str,
    map_index: int = -1,
    *,
    tenant: str | None = None,
) -> str:
    """The id (32 hex) of the run of one try of one task instance: the same in every process."""
    return _derived_id(
        _TASK_RUN_NAMESPACE,
        [
            _tenant(tenant),
            os.environ.get(INSTANCE_ENV, ""),
            dag_id,
            dag_run_id,
            task_id,
            str(map_index),
            str(try_number),
        ],
    )


# --- DAG runs and task runs -------------------------------------------------------------------------


def _millis(value: Any) -> int | None:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return int(value.timestamp() * 1000)
    return None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return ""


@dataclass(frozen=True)
class _DagRun:
    dag_id: str
    dag_run_id: str
    parent_id: str
    tags: dict[str, str]
    start_time: int | None  # the DAG run's start_date, when known
    end_time: int | None  # its end_date, when known

    @classmethod
    def of(cls, tenant: str, tags: Mapping[str, str], dag_run: Any = None) -> _DagRun | None:
        dag_id, dag_run_id = tags.get(TAG_DAG_ID), tags.get(TAG_DAG_RUN_ID)
        if not dag_id or not dag_run_id:
            return None
        return cls(
            dag_id=dag_id,
            dag_run_id=dag_run_id,
            parent_id=dag_run_parent_id(dag_id, dag_run_id, tenant=tenant),
            tags={t: tags[t] for t in _DAG_RUN_TAGS if t in tags},
            start_time=_millis(_attr(dag_run, "start_date")),
            end_time=_millis(_attr(dag_run, "end_date")),
        )


@dataclass(frozen=True)
class _TaskTry:
    dag_run: _DagRun
    task_id: str
    try_number: str
    map_index: int
    run_id: str
    tags: dict[str, str]

    @property
    def key(self) -> tuple[str, str, str, int]:
        """The task instance, whatever its try: what a process's own run of it is found by."""
        return (self.dag_run.dag_id, self.dag_run.dag_run_id, self.task_id, self.map_index)

    @property
    def name(self) -> str:
        name = self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"
        if self.try_number not in ("", "1"):
            name = f"{name} (try {self.try_number})"
        return name[:MAX_RUN_NAME]


def _dag_run_context(source: Any) -> Mapping[str, Any] | None:
    """A context dict for `source`: a context dict itself, or a DagRun, or None (the variables)."""
    if source is None or isinstance(source, Mapping):
        return source
    return {"dag_run": source}


def _dag_run_in(context: Mapping[str, Any] | None) -> Any:
    """The DagRun object of a context dict, if any."""
    if context is None:
        return None
    ti = _first(_item(context, "ti"), _item(context, "task_instance"))
    return _first(_item(context, "dag_run"), _attr(ti, "dag_run"))


def _dag_run_of(tenant: str, source: Any, env: Mapping[str, str] | None) -> _DagRun | None:
    context = _dag_run_context(source)
    return _DagRun.of(tenant, airflow_context_tags(env, context), _dag_run_in(context))


def _task_try_of(
    tenant: str, context: Mapping[str, Any] | None, env: Mapping[str, str] | None
) -> _TaskTry | None:
    tags = airflow_context_tags(env, context)
    parent = _DagRun.of(tenant, tags, _dag_run_in(context))
    task_id = tags.get(TAG_TASK_ID)
    if parent is None or not task_id:
        return None
    try_number = tags.get(TAG_TRY_NUMBER, "")
    map_index = int(tags.get(TAG_MAP_INDEX, "-1"))
    return _TaskTry(
        dag_run=parent,
        task_id=task_id,
        try_number=try_number,
        map_index=map_index,
        run_id=task_run_id(parent.dag_id, parent.dag_run_id, task_id, try_number, map_index, tenant=tenant),
        tags=tags,
    )


def _announce_dag_run(client: Client, dag_run: _DagRun, experiment: str) -> str:
    """Emit ExperimentCreated and the parent's RunStarted (both idempotent); return its experiment id.

    Every task of the DAG run does this: the projector keeps the first RunStarted of a run id
    and creates-or-reuses the experiment. The parent is not a run of this process: nothing
    here ends it.
    """
    experiment_id = experiment_id_for(client.settings.tenant, experiment)
    key = dag_run.parent_id.encode()
    client.batcher.emit(
        None, EventType.EXPERIMENT_CREATED, {"name": experiment}, key=key, experiment_id=experiment_id
    )
    payload = RunStartedPayload(
        name=dag_run.dag_run_id[:MAX_RUN_NAME],
        parent_run_id=None,
        start_time=dag_run.start_time if dag_run.start_time is not None else _now_ms(),
        user_id=_user(),
        tags=dag_run.tags,
        status=RunStatus.RUNNING,
    ).model_dump(mode="json")
    client.batcher.emit(
        None,
        EventType.RUN_STARTED,
        payload,
        key=key,
        run_id=dag_run.parent_id,
        experiment_id=experiment_id,
    )
    return experiment_id


def _emit_status(
    client: Client, run_id: str, experiment_id: str, status: RunStatus, end_time: int | None
) -> None:
    """StatusChanged for a run this process does not hold (the parent, another process's task run)."""
    client.batcher.emit(
        None,
        EventType.STATUS_CHANGED,
        {"status": status.value, "end_time": end_time},
        key=run_id.encode(),
        run_id=run_id,
        experiment_id=experiment_id,
        occurred_at=utc_now(),
    )


def _not_in_airflow(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what}: not inside an Airflow task (no AIRFLOW_CTX_* variables, and the context "
        "names no dag_id, run_id and task_id)"
    )


# The task runs started by this process, by task instance (not try: Airflow < 2.10 reports
# another try_number once the task has ended), with the client that started them.
_task_runs: dict[tuple[str, str, str, int], tuple[Client, Run]] = {}
_task_runs_lock = threading.Lock()


def start_task_run(
    context: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    *,
    tags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    activate: bool = True,
) -> Run:
    """Start the run of the current Airflow task, nested under its DAG run's parent run.

    The task comes from `context` (the task's context dict) and the AIRFLOW_CTX_* variables
    (`env`, default os.environ). `experiment` defaults to the dag_id. Idempotent: when this
    process already runs this try of the task (the listener started it), that run is returned.
    `activate` (default) makes it this thread's active run, as `rl.start_run` does. End it
    with `run.end_run(...)` / a `with` block, or `end_task_run`. RuntimeError outside Airflow.
    """
    from runledger_sdk import fluent
    from runledger_sdk.client import get_client

    client = get_client()
    task = _task_try_of(client.settings.tenant, context, env)
    if task is None:
        raise _not_in_airflow("start_task_run")
    experiment_name = experiment or task.dag_run.dag_id
    with _task_runs_lock:
        running = client.runs.get(task.run_id)
        if running is not None:
            return running
        _announce_dag_run(client, task.dag_run, experiment_name)
        run_tags = {**task.tags, **(tags or {})}
        if activate:
            run = fluent.start_run(
                experiment=experiment_name,
                name=task.name,
                tags=run_tags,
                parent=task.dag_run.parent_id,
                run_id=task.run_id,
            )
        else:
            run = client.start_run(
                experiment=experiment_name,
                name=task.name,
                tags=run_tags,
                parent_run_id=task.dag_run.parent_id,
                run_id=task.run_id,
            )
        _task_runs[task.key] = (client, run)
    # System metrics go on the task's run: it is what this process runs (a nested run gets
    # none from the client). Best effort: the sampler is the client's business.
    start_sampler: Callable[[Run], None] | None = getattr(client, "_start_sampler", None)
    if start_sampler is not None:
        try:
            start_sampler(run)
        except Exception:
            log.debug("RunLedger: no system metrics for the Airflow task run", exc_info=True)
    return run


def end_task_run(
    context: Mapping[str, Any] | None = None,
    status: str | RunStatus = RunStatus.FINISHED,
    experiment: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """End the run of the current try of an Airflow task (FINISHED, FAILED or KILLED); its id.

    When this process started it, the run ends as `Run.end_run` would (a second end does
    nothing); otherwise (another process ran the task) its StatusChanged is emitted by id,
    `experiment` (default the dag_id) giving the experiment it was started in. `tags` are set
    first when the run is this process's. RuntimeError outside Airflow.
    """
    from runledger_sdk.client import get_client

    final = terminal_status(status)
    client = get_client()
    task = _task_try_of(client.settings.tenant, context, env)
    if task is None:
        raise _not_in_airflow("end_task_run")
    with _task_runs_lock:
        owner, run = _task_runs.pop(task.key, (None, None))
    if owner is not client:
        run = client.runs.get(task.run_id)
    if run is not None:
        if tags and not run.ended:
            run.set_tags(tags)
        run.end_run(final)
        return run.run_id
    experiment_id = experiment_id_for(client.settings.tenant, experiment or task.dag_run.dag_id)
    _emit_status(client, task.run_id, experiment_id, final, _now_ms())
    return task.run_id


def start_dag_run(
    source: Any = None, experiment: str | None = None, *, env: Mapping[str, str] | None = None
) -> str:
    """Open the parent run of a DAG run (RUNNING again if it had ended: a cleared DAG run); its id.

    `source` is a DagRun, a task's context dict, or None (the AIRFLOW_CTX_* variables).
    """
    from runledger_sdk.client import get_client

    client = get_client()
    dag_run = _dag_run_of(client.settings.tenant, source, env)
    if dag_run is None:
        raise _not_in_airflow("start_dag_run")
    experiment_id = _announce_dag_run(client, dag_run, experiment or dag_run.dag_id)
    _emit_status(client, dag_run.parent_id, experiment_id, RunStatus.RUNNING, None)
    return dag_run.parent_id


def end_dag_run(
    source: Any = None,
    status: str | RunStatus = RunStatus.FINISHED,
    experiment: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """Set the final status of a DAG run's parent run (FINISHED, FAILED or KILLED); its id.

    `source` is a DagRun, a task's context dict (a DAG's on_success_callback /
    on_failure_callback gets one), or None (the AIRFLOW_CTX_* variables). The parent's
    RunStarted is emitted first, so the parent exists even when no task started a run.
    """
    from runledger_sdk.client import get_client

    final = terminal_status(status)
    client = get_client()
    dag_run = _dag_run_of(client.settings.tenant, source, env)
    if dag_run is None:
        raise _not_in_airflow("end_dag_run")
    experiment_id = _announce_dag_run(client, dag_run, experiment or dag_run.dag_id)
    end_time = dag_run.end_time if dag_run.end_time is not None else _now_ms()
    _emit_status(client, dag_run.parent_id, experiment_id, final, end_time)
    return dag_run.parent_id


# --- the listener -----------------------------------------------------------------------------------

_HOOKS = (
    "on_task_instance_running",
    "on_task_instance_success",
    "on_task_instance_failed",
    "on_task_instance_skipped",
    "on_dag_run_running",
    "on_dag_run_success",
    "on_dag_run_failed",
)
# Hooks some Airflow versions do not specify (skipped: 3.x): registered as optional.
_OPTIONAL_HOOKS = frozenset({"on_task_instance_skipped"})
_marked = False
_fork_hook_installed = False


def _airflow_hookimpl() -> Any:
    """Airflow's pluggy hookimpl marker, or None when Airflow is not importable."""
    try:
        if "airflow" not in sys.modules and importlib.util.find_spec("airflow") is None:
            return None
        return importlib.import_module("airflow.listeners").hookimpl
    except Exception:
        return None


def _mark_hookimpls() -> None:
    """Mark RunLedgerListener's hooks for Airflow's plugin manager (once; only with Airflow)."""
    global _marked
    if _marked:
        return
    hookimpl = _airflow_hookimpl()
    if hookimpl is None:
        return
    for name in _HOOKS:
        function = RunLedgerListener.__dict__[name]
        (hookimpl(optionalhook=True) if name in _OPTIONAL_HOOKS else hookimpl)(function)
    _marked = True


def _drop_inherited_client() -> None:
    # A forked child (Airflow forks executors, task runners, raw tasks) inherits the parent's
    # client without its threads: events logged to it would never be sent. The child starts
    # its own on first use.
    from runledger_sdk import client as client_module

    client_module._client = None


def _install_fork_hook() -> None:
    global _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_drop_inherited_client)
        _fork_hook_installed = True


class RunLedgerListener:
    """Airflow listener: a run per task try under one parent run per DAG run.

    `experiment` (default: the dag_id) is where the runs go; `dag_ids` limits the listener to
    those DAGs; `flush_timeout_s` bounds the wait for acknowledgements when a task ends (None:
    RUNLEDGER_EXIT_TIMEOUT_S) - Airflow may end a task's process without running atexit, so
    the task's events are flushed (or spooled) there.
    """

    def __init__(
        self,
        experiment: str | None = None,
        dag_ids: Collection[str] | None = None,
        flush_timeout_s: float | None = None,
    ) -> None:
        self.experiment = experiment
        self.dag_ids = frozenset(dag_ids) if dag_ids is not None else None
        self.flush_timeout_s = flush_timeout_s
        _mark_hookimpls()
        _install_fork_hook()

    def __repr__(self) -> str:
        return f"RunLedgerListener(experiment={self.experiment!r}, dag_ids={self.dag_ids!r})"

    # Signatures: only arguments every spec (Airflow 2.x and 3.x) has; pluggy passes those.

    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        """A task instance started: start its run (not made the thread's active run, so the
        task's own `rl.start_run()` still works; `rl.log_*` without a run go to it)."""
        self._guard("on_task_instance_running", self._task_running, task_instance)

    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        """A task instance succeeded: its run ends FINISHED."""
        self._guard("on_task_instance_success", self._task_done, task_instance, RunStatus.FINISHED, None)

    def on_task_instance_failed(self, previous_state: Any, task_instance: Any) -> None:
        """A task instance failed (also a try that will be retried): its run ends FAILED."""
        self._guard("on_task_instance_failed", self._task_done, task_instance, RunStatus.FAILED, None)

    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        """A task instance skipped itself: its run ends FINISHED, tagged airflow.state=skipped."""
        self._guard("on_task_instance_skipped", self._task_done, task_instance, RunStatus.FINISHED, "skipped")

    def on_dag_run_running(self, dag_run: Any, msg: Any) -> None:
        """A DAG run started (or restarted after a clear): its parent run is RUNNING."""
        self._guard("on_dag_run_running", self._dag_run, dag_run, None)

    def on_dag_run_success(self, dag_run: Any, msg: Any) -> None:
        """A DAG run succeeded: its parent run ends FINISHED."""
        self._guard("on_dag_run_success", self._dag_run, dag_run, RunStatus.FINISHED)

    def on_dag_run_failed(self, dag_run: Any, msg: Any) -> None:
        """A DAG run failed: its parent run ends FAILED."""
        self._guard("on_dag_run_failed", self._dag_run, dag_run, RunStatus.FAILED)

    # --- implementation ---

    def _wants(self, dag_id: Any) -> bool:
        return dag_id is not None and (self.dag_ids is None or str(dag_id) in self.dag_ids)

    def _guard(self, hook: str, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception:  # a listener must never break the scheduler or a task
            log.warning("RunLedger: Airflow listener %s failed", hook, exc_info=True)

    def _task_running(self, task_instance: Any) -> None:
        if not self._wants(_attr(task_instance, "dag_id")):
            return
        start_task_run({"ti": task_instance}, self.experiment, activate=False)

    def _task_done(self, task_instance: Any, status: RunStatus, state: str | None) -> None:
        if not self._wants(_attr(task_instance, "dag_id")):
            return
        from runledger_sdk.client import current_client

        end_task_run(
            {"ti": task_instance},
            status,
            self.experiment,
            tags={TAG_STATE: state} if state is not None else None,
        )
        client = current_client()
        if client is not None:
            client.flush(self.flush_timeout_s)

    def _dag_run(self, dag_run: Any, status: RunStatus | None) -> None:
        if not self._wants(_attr(dag_run, "dag_id")):
            return
        if status is None:
            start_dag_run(dag_run, self.experiment)
        else:
            end_dag_run(dag_run, status, self.experiment)


def make_airflow_plugin(listener: RunLedgerListener | None = None, name: str = "runledger") -> type:
    """An AirflowPlugin subclass registering `listener` (default RunLedgerListener()); needs Airflow.

    Assign it to a module-level name of a file in Airflow's plugins folder.
    """
    base = importlib.import_module("airflow.plugins_manager").AirflowPlugin
    return type(
        "RunLedgerPlugin",
        (base,),
        {"name": name, "listeners": [listener if listener is not None else RunLedgerListener()]},
    )
