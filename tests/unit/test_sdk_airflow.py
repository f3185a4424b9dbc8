"""Airflow integration: tags from Airflow's task context, one parent run per DAG run, the listener.

Airflow is not installed: the tests hand the SDK what Airflow hands a task (the AIRFLOW_CTX_*
variables, a context dict) with small stand-ins carrying the attributes of Airflow's DAG,
operator, TaskInstance and DagRun; the listener is registered with pluggy under the hook
specs of Airflow 2.x and 3.x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pluggy
import pytest

import runledger_sdk as rl
from runledger.events.codec import experiment_id_for
from runledger_sdk import client as client_module
from runledger_sdk.integrations import airflow
from runledger_sdk.integrations.airflow import (
    RunLedgerListener,
    airflow_context_tags,
    dag_run_parent_id,
    end_dag_run,
    end_task_run,
    start_task_run,
    tags_for_new_run,
    task_run_id,
)
from tests.support.sdk import memory_sdk

REPO = Path(__file__).resolve().parents[2]

LOGICAL = datetime(2024, 5, 1, tzinfo=UTC)
STARTED = datetime(2024, 5, 1, 0, 5, tzinfo=UTC)
ENDED = datetime(2024, 5, 1, 1, 0, tzinfo=UTC)
RUN_ID = "scheduled__2024-05-01T00:00:00+00:00"


# --- stand-ins for Airflow's objects (the attributes the real ones have) ------------------------------


@dataclass
class Dag:
    dag_id: str
    owner: str = "airflow"


@dataclass
class Operator:
    task_id: str
    dag: Dag
    owner: str = "vision-team"


@dataclass
class DagRun:
    dag_id: str
    run_id: str
    logical_date: datetime | None = LOGICAL
    start_date: datetime | None = STARTED
    end_date: datetime | None = None


@dataclass
class TaskInstance:
    dag_id: str
    task_id: str
    run_id: str
    try_number: int = 1
    map_index: int = -1
    task: Operator | None = None
    dag_run: DagRun | None = None


@dataclass
class Task:
    """One task instance of a DAG run, and the context dict Airflow hands its callable."""

    dag: Dag
    dag_run: DagRun
    ti: TaskInstance
    context: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.context = {
            "dag": self.dag,
            "task": self.ti.task,
            "ti": self.ti,
            "task_instance": self.ti,
            "run_id": self.dag_run.run_id,
            "dag_run": self.dag_run,
            "logical_date": self.dag_run.logical_date,
            "ds": "2024-05-01",
        }


def make_task(
    task_id: str = "train",
    dag_id: str = "nightly_training",
    run_id: str = RUN_ID,
    try_number: int = 1,
    map_index: int = -1,
) -> Task:
    dag = Dag(dag_id)
    dag_run = DagRun(dag_id, run_id)
    ti = TaskInstance(
        dag_id, task_id, run_id, try_number, map_index, task=Operator(task_id, dag), dag_run=dag_run
    )
    return Task(dag, dag_run, ti)


def airflow2_env(task_id: str = "train", run_id: str = RUN_ID, try_number: int = 1) -> dict[str, str]:
    """The variables Airflow 2.x exports for a task (taskinstance.py: 'Exporting env vars')."""
    return {
        "AIRFLOW_CTX_DAG_OWNER": "vision-team",
        "AIRFLOW_CTX_DAG_ID": "nightly_training",
        "AIRFLOW_CTX_TASK_ID": task_id,
        "AIRFLOW_CTX_EXECUTION_DATE": "2024-05-01T00:00:00+00:00",
        "AIRFLOW_CTX_TRY_NUMBER": str(try_number),
        "AIRFLOW_CTX_DAG_RUN_ID": run_id,
    }


def airflow3_env(task_id: str = "train", run_id: str = RUN_ID, try_number: int = 1) -> dict[str, str]:
    """Airflow 3.x: the logical date replaces the execution date."""
    env = airflow2_env(task_id, run_id, try_number)
    env["AIRFLOW_CTX_LOGICAL_DATE"] = env.pop("AIRFLOW_CTX_EXECUTION_DATE")
    return env


TASK_TAGS = {
    "airflow.dag_id": "nightly_training",
    "airflow.task_id": "train",
    "airflow.dag_run_id": RUN_ID,
    "airflow.try_number": "1",
    "airflow.logical_date": "2024-05-01T00:00:00+00:00",
    "airflow.owner": "vision-team",
}
PARENT_TAGS = {k: TASK_TAGS[k] for k in ("airflow.dag_id", "airflow.dag_run_id", "airflow.logical_date")}


def millis(value: datetime) -> int:
    return int(value.timestamp() * 1000)


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def outside_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Airflow variables unless a test sets them (the suite may itself run under Airflow)."""
    for name in list(os.environ):
        if name.startswith("AIRFLOW_CTX_") or name == airflow.INSTANCE_ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[rl.InMemoryTransport]:
    with memory_sdk(tmp_path) as memory:  # only what the test logs: no run context
        yield memory


def sent(transport: rl.InMemoryTransport) -> list[dict[str, Any]]:
    assert rl.flush(5)
    return transport.events()


def of_type(events: list[dict[str, Any]], type: str, run_id: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type and (run_id is None or e["run_id"] == run_id)]


def statuses(events: list[dict[str, Any]], run_id: str) -> list[str]:
    return [e["payload"]["status"] for e in of_type(events, "run.status_changed", run_id)]


def parent_of(task: Task) -> str:
    return dag_run_parent_id(task.dag.dag_id, task.dag_run.run_id, tenant="default")


def run_id_of(task: Task) -> str:
    ti = task.ti
    return task_run_id(ti.dag_id, ti.run_id, ti.task_id, ti.try_number, ti.map_index, tenant="default")


# --- tags --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [airflow2_env(), airflow3_env()], ids=["airflow2", "airflow3"])
def test_tags_from_the_variables_airflow_exports(env: dict[str, str]) -> None:
    assert airflow_context_tags(env) == TASK_TAGS


def test_email_is_not_a_tag() -> None:
    env = {**airflow2_env(), "AIRFLOW_CTX_DAG_EMAIL": "someone@example.com"}
    assert airflow_context_tags(env) == TASK_TAGS


def test_tags_from_a_task_context() -> None:
    task = make_task()
    assert airflow_context_tags({}, task.context) == TASK_TAGS
    # Only a TaskInstance (what a listener gets): the rest is reached through it.
    assert airflow_context_tags({}, {"ti": task.ti}) == TASK_TAGS
    # Only a DagRun: the DAG run's tags.
    assert airflow_context_tags({}, {"dag_run": task.dag_run}) == PARENT_TAGS


def test_context_wins_over_the_variables() -> None:
    task = make_task(try_number=2)
    env = {**airflow3_env(try_number=1), "AIRFLOW_CTX_DAG_OWNER": "someone-else"}
    tags = airflow_context_tags(env, task.context)
    assert tags["airflow.try_number"] == "2"
    assert tags["airflow.owner"] == "vision-team"
    # What only the variables know is kept.
    task.ti.task = None
    task.context["task"] = task.context["dag"] = None  # nothing in the context names an owner
    assert airflow_context_tags(env, task.context)["airflow.owner"] == "someone-else"


def test_variables_of_another_task_are_ignored() -> None:
    task = make_task("evaluate")
    task.ti.task = None
    task.context["task"] = task.context["dag"] = None  # nothing in the context names an owner
    tags = airflow_context_tags(airflow3_env("train"), task.context)
    assert tags["airflow.task_id"] == "evaluate"
    assert "airflow.owner" not in tags  # the other task's owner is not this one's


def test_mapped_task_and_dates_without_logical_date() -> None:
    task = make_task(map_index=3)
    task.dag_run.logical_date = None  # Airflow 3: a run without a logical date
    task.context["logical_date"] = None
    tags = airflow_context_tags({}, task.context)
    assert tags["airflow.map_index"] == "3"
    assert "airflow.logical_date" not in tags


def test_nothing_outside_airflow() -> None:
    assert airflow_context_tags({}) == {}
    assert airflow_context_tags() == {}
    assert tags_for_new_run() == {}


def test_tags_for_new_run_reads_the_process_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in airflow2_env().items():
        monkeypatch.setenv(name, value)
    assert tags_for_new_run() == TASK_TAGS


def test_a_top_level_run_inside_a_task_is_tagged(
    transport: rl.InMemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Needs the client's run-start hook (Client.start_run calls airflow.tags_for_new_run)."""
    with rl.start_run(tags={"airflow.owner": "explicit"}) as outside:
        pass
    for name, value in airflow3_env().items():
        monkeypatch.setenv(name, value)
    with rl.start_run(tags={"airflow.owner": "explicit"}) as run, rl.start_run(nested=True) as child:
        pass
    started = {e["run_id"]: e["payload"]["tags"] for e in of_type(sent(transport), "run.started")}
    assert started[outside.run_id] == {"airflow.owner": "explicit"}
    assert started[run.run_id] == {**TASK_TAGS, "airflow.owner": "explicit"}  # the caller's tags win
    assert started[child.run_id] == {}  # a nested run: its parent carries them


# --- parent runs and task runs -------------------------------------------------------------------------


def test_derived_ids() -> None:
    parent = dag_run_parent_id("dag", "run", tenant="t")
    assert len(parent) == 32 and int(parent, 16) >= 0
    assert parent == dag_run_parent_id("dag", "run", tenant="t")
    assert (
        len(
            {
                parent,
                dag_run_parent_id("dag", "run2", tenant="t"),
                dag_run_parent_id("dag", "run", tenant="u"),
            }
        )
        == 3
    )
    # No ambiguity from separators inside the parts.
    assert dag_run_parent_id("a", "b/c", tenant="t") != dag_run_parent_id("a/b", "c", tenant="t")
    tries = {task_run_id("dag", "run", "task", n, tenant="t") for n in (1, 2)}
    mapped = {task_run_id("dag", "run", "task", 1, i, tenant="t") for i in (-1, 0, 1)}
    assert len(tries) == 2 and len(mapped) == 3 and parent not in tries


def test_instance_separates_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = dag_run_parent_id("dag", "run", tenant="t")
    monkeypatch.setenv(airflow.INSTANCE_ENV, "prod")
    assert dag_run_parent_id("dag", "run", tenant="t") != plain


def test_start_task_run_nests_under_the_dag_run(transport: rl.InMemoryTransport) -> None:
    task = make_task()
    with start_task_run(task.context) as run:
        assert rl.active_run() is run
        rl.log_metric("loss", 0.25)
    parent = parent_of(task)
    assert run.run_id == run_id_of(task) and len(run.run_id) == 32
    assert run.parent_run_id == parent
    assert run.experiment_name == "nightly_training" and run.name == "train"

    events = sent(transport)
    # Created-or-reused by name: announced with the parent, and by the client for the task run.
    assert {e["payload"]["name"] for e in of_type(events, "experiment.created")} == {"nightly_training"}
    [parent_started] = of_type(events, "run.started", parent)
    assert parent_started["payload"]["name"] == RUN_ID
    assert parent_started["payload"]["parent_run_id"] is None
    assert parent_started["payload"]["tags"] == PARENT_TAGS
    assert parent_started["payload"]["start_time"] == millis(STARTED)
    assert parent_started["experiment_id"] == run.experiment_id
    [task_started] = of_type(events, "run.started", run.run_id)
    assert task_started["payload"]["parent_run_id"] == parent
    assert task_started["payload"]["tags"] == TASK_TAGS
    assert statuses(events, run.run_id) == ["FINISHED"]
    assert statuses(events, parent) == []  # a task never ends its DAG run


def test_tasks_of_one_dag_run_share_the_parent(transport: rl.InMemoryTransport) -> None:
    first, second = make_task("prepare"), make_task("train")
    with start_task_run(first.context) as a:
        pass
    with start_task_run(second.context, experiment="vision") as b:
        pass
    other = make_task("prepare", run_id="manual__2024-05-02T10:00:00+00:00")
    with start_task_run(other.context) as c:
        pass
    assert a.parent_run_id == b.parent_run_id == parent_of(first) != c.parent_run_id
    assert len({a.run_id, b.run_id, c.run_id}) == 3
    assert b.experiment_name == "vision"
    events = sent(transport)
    # Each task announces the parent; the projector keeps the first RunStarted of an id.
    assert len(of_type(events, "run.started", a.parent_run_id)) == 2


def test_start_task_run_is_idempotent_within_a_process(transport: rl.InMemoryTransport) -> None:
    task = make_task()
    run = start_task_run(task.context)
    assert start_task_run(task.context) is run
    run.end_run()
    assert len(of_type(sent(transport), "run.started", run.run_id)) == 1


def test_a_retry_is_a_new_run(transport: rl.InMemoryTransport) -> None:
    with pytest.raises(RuntimeError), start_task_run(make_task(try_number=1).context) as first:
        raise RuntimeError("CUDA out of memory")
    with start_task_run(make_task(try_number=2).context) as second:
        pass
    assert first.run_id != second.run_id and first.parent_run_id == second.parent_run_id
    assert second.name == "train (try 2)"
    events = sent(transport)
    assert statuses(events, first.run_id) == ["FAILED"]
    assert statuses(events, second.run_id) == ["FINISHED"]


def test_mapped_task_runs(transport: rl.InMemoryTransport) -> None:
    runs = [start_task_run(make_task(map_index=i).context, activate=False) for i in range(2)]
    assert [r.name for r in runs] == ["train[0]", "train[1]"]
    assert [r.tags["airflow.map_index"] for r in runs] == ["0", "1"]
    for run in runs:
        run.end_run()


def test_start_task_run_from_the_variables(
    transport: rl.InMemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in airflow2_env().items():
        monkeypatch.setenv(name, value)
    with start_task_run(tags={"model": "resnet"}) as run:
        pass
    assert run.run_id == run_id_of(make_task())
    assert run.tags == {**TASK_TAGS, "model": "resnet"}
    # Only the variables: the DAG run's start is not known, the parent starts now.
    [parent] = of_type(sent(transport), "run.started", run.parent_run_id)
    assert parent["payload"]["start_time"] >= run.start_time - 1000


def test_outside_airflow_start_task_run_raises_and_sends_nothing(transport: rl.InMemoryTransport) -> None:
    with pytest.raises(RuntimeError, match="not inside an Airflow task"):
        start_task_run()
    with pytest.raises(RuntimeError, match="not inside an Airflow task"):
        start_task_run({"dag": Dag("no_run_id")})
    with pytest.raises(RuntimeError, match="not inside an Airflow task"):
        end_dag_run()
    assert sent(transport) == []


def test_end_task_run_of_another_process(transport: rl.InMemoryTransport) -> None:
    """The task ran elsewhere (Airflow ends it from its supervisor): StatusChanged by derived id."""
    task = make_task()
    assert end_task_run(task.context, "failed") == run_id_of(task)
    [changed] = of_type(sent(transport), "run.status_changed")
    assert changed["run_id"] == run_id_of(task)
    assert changed["payload"]["status"] == "FAILED"
    assert changed["experiment_id"] == experiment_id_for("default", "nightly_training")


def test_end_dag_run_from_a_dag_callback(transport: rl.InMemoryTransport) -> None:
    task = make_task()
    task.dag_run.end_date = ENDED
    with start_task_run(task.context):
        pass
    # A DAG's on_failure_callback gets a context dict.
    assert end_dag_run(task.context, "FAILED") == parent_of(task)
    events = sent(transport)
    [changed] = of_type(events, "run.status_changed", parent_of(task))
    assert changed["payload"] == {"status": "FAILED", "end_time": millis(ENDED)}
    with pytest.raises(ValueError):
        end_dag_run(task.context, "RUNNING")


def test_workers_in_separate_processes_agree_on_the_parent(tmp_path: Path) -> None:
    """Two tasks of one DAG run in two processes (as two workers run them) nest under one parent."""
    script = tmp_path / "task.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import runledger_sdk as rl
            from runledger_sdk.integrations import airflow

            memory = rl.InMemoryTransport()
            rl.init(transport=memory, spool_dir=sys.argv[1], capture_code_state=False,
                    capture_environment=False, lint_runs=False, system_metrics_interval_s=0)
            with airflow.start_task_run() as run:
                rl.log_metric("loss", 0.5)
            assert rl.flush(5)
            print(json.dumps(memory.events()))
            """
        )
    )

    def worker(env: dict[str, str]) -> list[dict[str, Any]]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CTX_")}
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "spool")],
            env={**clean, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        events: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
        return events

    prepare = worker(airflow2_env("prepare"))
    train = worker(airflow3_env("train"))
    other_run = worker(airflow3_env("train", run_id="manual__2024-05-02T10:00:00+00:00"))

    def runs(events: list[dict[str, Any]]) -> tuple[str, str]:
        [task] = [e for e in of_type(events, "run.started") if e["payload"]["parent_run_id"] is not None]
        [parent] = [e for e in of_type(events, "run.started") if e["payload"]["parent_run_id"] is None]
        assert task["payload"]["parent_run_id"] == parent["run_id"]
        assert statuses(events, task["run_id"]) == ["FINISHED"]
        assert statuses(events, parent["run_id"]) == []
        return task["run_id"], parent["run_id"]

    (prepare_run, prepare_parent), (train_run, train_parent) = runs(prepare), runs(train)
    other_task, other_parent = runs(other_run)
    assert prepare_parent == train_parent == dag_run_parent_id("nightly_training", RUN_ID, tenant="default")
    assert len({prepare_run, train_run, other_task}) == 3
    assert other_parent != train_parent


# --- the listener --------------------------------------------------------------------------------------


def test_listener_runs_a_task_and_its_dag_run(transport: rl.InMemoryTransport) -> None:
    listener = RunLedgerListener()
    task = make_task()
    task.dag_run.end_date = ENDED
    listener.on_dag_run_running(task.dag_run, "started")
    listener.on_task_instance_running(None, task.ti)
    run = rl.active_run()
    assert run is not None and run.run_id == run_id_of(task)
    rl.log_metric("loss", 0.1)  # lands on the task's run
    # The task's own code can still start a run of its own.
    with rl.start_run() as own:
        pass
    listener.on_task_instance_success("running", task.ti)
    listener.on_dag_run_success(task.dag_run, "success")

    events = sent(transport)
    parent = parent_of(task)
    assert statuses(events, run.run_id) == ["FINISHED"]
    assert statuses(events, own.run_id) == ["FINISHED"]
    assert statuses(events, parent) == ["RUNNING", "FINISHED"]
    assert of_type(events, "run.status_changed", parent)[-1]["payload"]["end_time"] == millis(ENDED)
    assert [e["payload"]["keys"] for e in of_type(events, "run.metrics_logged", run.run_id)] == [["loss"]]
    assert rl.active_run() is None


def test_listener_failed_and_skipped(transport: rl.InMemoryTransport) -> None:
    listener = RunLedgerListener()
    failing, skipping = make_task("train"), make_task("notify")
    listener.on_task_instance_running(None, failing.ti)
    listener.on_task_instance_running(None, skipping.ti)
    listener.on_task_instance_failed("running", failing.ti)
    listener.on_task_instance_skipped("running", skipping.ti)
    listener.on_dag_run_failed(failing.dag_run, "task failure")
    events = sent(transport)
    assert statuses(events, run_id_of(failing)) == ["FAILED"]
    assert statuses(events, run_id_of(skipping)) == ["FINISHED"]
    skipped_tags = [e["payload"]["tags"] for e in of_type(events, "run.tags_set", run_id_of(skipping))]
    assert {"airflow.state": "skipped"} in skipped_tags
    assert statuses(events, parent_of(failing)) == ["FAILED"]


def test_listener_ends_the_run_whatever_try_number_airflow_reports_at_the_end(
    transport: rl.InMemoryTransport,
) -> None:
    """Airflow < 2.10 reports the next try number once a task instance is no longer running."""
    listener = RunLedgerListener()
    task = make_task()
    listener.on_task_instance_running(None, task.ti)
    task.ti.try_number = 2
    listener.on_task_instance_success("running", task.ti)
    events = sent(transport)
    assert statuses(events, run_id_of(make_task())) == ["FINISHED"]
    assert len(of_type(events, "run.status_changed")) == 1


def test_listener_filters_dags_and_never_raises(
    transport: rl.InMemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    task = make_task()
    only_other = RunLedgerListener(dag_ids=["other_dag"])
    only_other.on_dag_run_running(task.dag_run, "")
    only_other.on_task_instance_running(None, task.ti)
    only_other.on_task_instance_success(None, task.ti)
    only_other.on_dag_run_success(task.dag_run, "")
    assert sent(transport) == []

    listener = RunLedgerListener()
    broken = TaskInstance("nightly_training", "train", run_id="")  # no run id: not a task we can name
    listener.on_task_instance_running(None, broken)
    listener.on_task_instance_success(None, broken)
    listener.on_task_instance_running(None, None)
    listener.on_dag_run_success(object(), "")
    assert sent(transport) == []
    assert "listener on_task_instance_running failed" in caplog.text


class Airflow2Spec:
    """Airflow 2.10's listener hook specs (airflow/listeners/spec)."""

    hookspec = pluggy.HookspecMarker("airflow")

    @hookspec
    def on_task_instance_running(self, previous_state: Any, task_instance: Any, session: Any) -> None: ...

    @hookspec
    def on_task_instance_success(self, previous_state: Any, task_instance: Any, session: Any) -> None: ...

    @hookspec
    def on_task_instance_failed(
        self, previous_state: Any, task_instance: Any, error: Any, session: Any
    ) -> None: ...

    @hookspec
    def on_dag_run_running(self, dag_run: Any, msg: Any) -> None: ...

    @hookspec
    def on_dag_run_success(self, dag_run: Any, msg: Any) -> None: ...

    @hookspec
    def on_dag_run_failed(self, dag_run: Any, msg: Any) -> None: ...


class Airflow3Spec:
    """Airflow 3's listener hook specs: no session, a skipped hook."""

    hookspec = pluggy.HookspecMarker("airflow")

    @hookspec
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None: ...

    @hookspec
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None: ...

    @hookspec
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None: ...

    @hookspec
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None: ...

    @hookspec
    def on_dag_run_running(self, dag_run: Any, msg: Any) -> None: ...

    @hookspec
    def on_dag_run_success(self, dag_run: Any, msg: Any) -> None: ...

    @hookspec
    def on_dag_run_failed(self, dag_run: Any, msg: Any) -> None: ...


@pytest.fixture
def fake_airflow(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """`airflow`, `airflow.listeners` (pluggy's hookimpl marker, as Airflow's) and
    `airflow.plugins_manager` (AirflowPlugin), so the listener is marked as inside Airflow."""
    package = types.ModuleType("airflow")
    listeners = types.ModuleType("airflow.listeners")
    listeners.hookimpl = pluggy.HookimplMarker("airflow")  # type: ignore[attr-defined]
    plugins_manager = types.ModuleType("airflow.plugins_manager")

    class AirflowPlugin:
        name: str | None = None
        listeners: list[Any] = []

    plugins_manager.AirflowPlugin = AirflowPlugin  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow", package)
    monkeypatch.setitem(sys.modules, "airflow.listeners", listeners)
    monkeypatch.setitem(sys.modules, "airflow.plugins_manager", plugins_manager)
    monkeypatch.setattr(airflow, "_marked", False)
    return package


@pytest.mark.parametrize("spec", [Airflow2Spec, Airflow3Spec], ids=["airflow2", "airflow3"])
def test_listener_under_airflows_plugin_manager(
    spec: type, fake_airflow: types.ModuleType, transport: rl.InMemoryTransport
) -> None:
    manager = pluggy.PluginManager("airflow")
    manager.add_hookspecs(spec)
    manager.register(RunLedgerListener())
    manager.check_pending()  # every hook is specified, or optional
    extra = {"session": None} if spec is Airflow2Spec else {}
    ok, bad = make_task("prepare"), make_task("train")
    hook = manager.hook
    hook.on_dag_run_running(dag_run=ok.dag_run, msg="")
    hook.on_task_instance_running(previous_state=None, task_instance=ok.ti, **extra)
    hook.on_task_instance_success(previous_state=None, task_instance=ok.ti, **extra)
    hook.on_task_instance_running(previous_state=None, task_instance=bad.ti, **extra)
    hook.on_task_instance_failed(previous_state=None, task_instance=bad.ti, error=ValueError("x"), **extra)
    hook.on_dag_run_failed(dag_run=bad.dag_run, msg="task failure")
    events = sent(transport)
    assert statuses(events, run_id_of(ok)) == ["FINISHED"]
    assert statuses(events, run_id_of(bad)) == ["FAILED"]
    assert statuses(events, parent_of(ok)) == ["RUNNING", "FAILED"]


def test_no_airflow_no_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(airflow, "_marked", False)
    monkeypatch.setitem(sys.modules, "airflow", None)  # `import airflow` fails
    assert airflow._airflow_hookimpl() is None
    RunLedgerListener()
    assert airflow._marked is False


def test_make_airflow_plugin(fake_airflow: types.ModuleType) -> None:
    listener = RunLedgerListener(experiment="pipelines")
    plugin = airflow.make_airflow_plugin(listener)
    base = sys.modules["airflow.plugins_manager"].AirflowPlugin
    assert issubclass(plugin, base)
    assert plugin.name == "runledger" and plugin.listeners == [listener]  # type: ignore[attr-defined]


def test_a_forked_child_does_not_use_the_parents_client(transport: rl.InMemoryTransport) -> None:
    RunLedgerListener()  # installs the fork hook
    assert client_module.current_client() is not None
    pid = os.fork()
    if pid == 0:  # the child: the inherited client (its threads did not survive) is dropped
        os._exit(0 if client_module._client is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client_module.current_client() is not None  # the parent keeps its own
