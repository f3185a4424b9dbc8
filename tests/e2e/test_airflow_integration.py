"""Two task processes of one Airflow DAG run end up under one parent run in the API.

Each "worker" is its own process with the AIRFLOW_CTX_* variables Airflow exports for a task
(Airflow itself is not needed); a third process plays the scheduler's listener ending the DAG
run; a late task process announces the parent again after that, and the parent keeps its
first RunStarted and final status (the projector's ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from runledger.events.codec import experiment_id_for
from runledger_sdk.integrations.airflow import dag_run_parent_id, task_run_id
from tests.e2e.conftest import Stack
from tests.support.services import REPO

pytestmark = pytest.mark.integration

TASK = textwrap.dedent(
    """
    import runledger_sdk as rl
    from runledger_sdk.integrations import airflow

    with airflow.start_task_run() as run:
        rl.log_metric("loss", 0.5)
    print(run.run_id, run.parent_run_id, flush=True)
    """
)

SCHEDULER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timezone
    from runledger_sdk.integrations.airflow import RunLedgerListener

    class DagRun:  # what the scheduler's listener hook gets
        dag_id, run_id = sys.argv[1], sys.argv[2]
        logical_date = None
        start_date = datetime(2024, 5, 1, tzinfo=timezone.utc)
        end_date = datetime(2024, 5, 1, 1, tzinfo=timezone.utc)

    listener = RunLedgerListener()
    listener.on_dag_run_running(DagRun(), "started")
    listener.on_dag_run_success(DagRun(), "success")
    """
)


def poll(client: httpx.Client, path: str, ready: Any, params: Any = None, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path, params=params)
        if response.status_code == 200 and ready(response.json()):
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not ready in time: {response.status_code} {response.text[:500]}")
        time.sleep(0.1)


def test_tasks_of_one_dag_run_nest_under_one_parent(stack: Stack, tmp_path: Path) -> None:
    dag_id = f"e2e_dag_{uuid.uuid4().hex[:8]}"
    dag_run_id = "scheduled__2024-05-01T00:00:00+00:00"
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CTX_")},
        "RUNLEDGER_TRANSPORT": "kafka",
        "RUNLEDGER_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RUNLEDGER_EVENTS_TOPIC": stack.events_topic,
        "RUNLEDGER_SPOOL_DIR": str(tmp_path / "spool"),
        "RUNLEDGER_CAPTURE_CODE_STATE": "false",
        "RUNLEDGER_CAPTURE_ENVIRONMENT": "false",
        "RUNLEDGER_LINT_RUNS": "false",
        "RUNLEDGER_SYSTEM_METRICS_INTERVAL_S": "0",
    }

    def process(source: str, env: dict[str, str], *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", source, *args],
            cwd=REPO,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def task(task_id: str) -> tuple[str, str]:
        out = process(
            TASK,
            {
                "AIRFLOW_CTX_DAG_OWNER": "vision-team",
                "AIRFLOW_CTX_DAG_ID": dag_id,
                "AIRFLOW_CTX_TASK_ID": task_id,
                "AIRFLOW_CTX_LOGICAL_DATE": "2024-05-01T00:00:00+00:00",
                "AIRFLOW_CTX_TRY_NUMBER": "1",
                "AIRFLOW_CTX_DAG_RUN_ID": dag_run_id,
            },
        )
        run_id, parent_id = out.split()
        return run_id, parent_id

    prepare, parent_a = task("prepare")
    train, parent_b = task("train")
    parent = dag_run_parent_id(dag_id, dag_run_id, tenant="default")
    assert parent_a == parent_b == parent
    assert prepare == task_run_id(dag_id, dag_run_id, "prepare", 1, tenant="default")

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        children = poll(
            client,
            "/api/v1/runs",
            lambda page: (
                len(page["runs"]) == 2 and all(r["info"]["status"] == "FINISHED" for r in page["runs"])
            ),
            params={"parent_run_id": parent, "experiment_id": experiment_id_for("default", dag_id)},
        )
        by_id = {r["info"]["run_id"]: r for r in children["runs"]}
        assert set(by_id) == {prepare, train}
        assert by_id[train]["info"]["name"] == "train"
        assert by_id[train]["tags"]["airflow.task_id"] == "train"
        assert by_id[train]["tags"]["airflow.owner"] == "vision-team"
        assert "loss" in by_id[train]["metrics"]

        running = poll(client, f"/api/v1/runs/{parent}", lambda r: r["info"]["status"] == "RUNNING")
        assert running["info"]["name"] == dag_run_id
        assert running["info"]["parent_run_id"] is None
        assert running["info"]["experiment_id"] == experiment_id_for("default", dag_id)
        assert running["tags"] == {
            "airflow.dag_id": dag_id,
            "airflow.dag_run_id": dag_run_id,
            "airflow.logical_date": "2024-05-01T00:00:00+00:00",
        }
        start_time = running["info"]["start_time"]

        # The scheduler's listener ends the DAG run.
        process(SCHEDULER, {}, dag_id, dag_run_id)
        done = poll(client, f"/api/v1/runs/{parent}", lambda r: r["info"]["status"] == "FINISHED")
        assert done["info"]["end_time"] == 1714525200000  # the DagRun's end_date

        # A straggler announces the parent again: the first RunStarted stays, and so does FINISHED.
        late, late_parent = task("report")
        assert late_parent == parent
        poll(client, f"/api/v1/runs/{late}", lambda r: r["info"]["status"] == "FINISHED")
        after = client.get(f"/api/v1/runs/{parent}").json()
        assert after["info"]["status"] == "FINISHED"
        assert after["info"]["start_time"] == start_time
        page = client.get("/api/v1/runs", params={"parent_run_id": parent}).json()
        assert len(page["runs"]) == 3
