"""The unmodified mlflow client (pinned mlflow-skinny) against the running stack, through its MLflow API.

Each script in tests/support/mlflow_scripts runs in its own subprocess (the client's global state and
threads stay out of pytest) and writes a JSON report of every step; the tests assert exact values.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runledger.auth.model import Role
from tests.e2e.conftest import Stack
from tests.support.auth import Identity, provision
from tests.support.mlflow_scripts.common import CONFIG, artifact_files

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT_TIMEOUT_S = 240


def bearer(identity: Identity) -> dict[str, str]:
    return {"MLFLOW_TRACKING_TOKEN": identity.key.token}


def basic(identity: Identity) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": identity.key.key_id, "MLFLOW_TRACKING_PASSWORD": identity.key.secret}


@dataclass
class Outcome:
    """A script's report: step name → what it observed; failed steps → the error."""

    script: str
    data: dict[str, dict[str, Any]]
    errors: dict[str, str]
    unfinished: str = ""  # the log's tail when the script was killed before its end

    def step(self, name: str) -> dict[str, Any]:
        assert name not in self.errors, f"{self.script}: step {name!r} failed: {self.errors[name]}"
        assert name in self.data, f"{self.script}: step {name!r} never finished:\n{self.unfinished}"
        return self.data[name]


class ClientScript:
    """`python -m tests.support.mlflow_scripts.<name> '<json args>'`, started at once, awaited later."""

    def __init__(self, name: str, url: str, credentials: dict[str, str], workdir: Path, **args: Any) -> None:
        self.name = name
        self.out = workdir / f"{name}-{uuid.uuid4().hex[:6]}.json"
        self.log = self.out.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RUNLEDGER_"))}
        env.update(
            MLFLOW_TRACKING_URI=url,
            # One quick retry, a short timeout: a server error or a hung request shows up as that step's error.
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
            MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0.2",
            MLFLOW_HTTP_REQUEST_TIMEOUT="20",
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="true",
            GIT_PYTHON_REFRESH="quiet",
            **credentials,
        )
        argv = json.dumps({**args, "out": str(self.out), "stack_dump_after_s": SCRIPT_TIMEOUT_S - 15})
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"tests.support.mlflow_scripts.{name}", argv],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def result(self) -> Outcome:
        unfinished = ""
        try:
            code = self.proc.wait(SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            unfinished = f"killed after {SCRIPT_TIMEOUT_S}s:\n{self.log.read_text()[-6000:]}"
        if not self.out.exists():
            pytest.fail(f"{self.name} exited {code} without a report:\n{self.log.read_text()[-6000:]}")
        if code != 0 and not unfinished:
            unfinished = f"exited {code}:\n{self.log.read_text()[-6000:]}"
        report = json.loads(self.out.read_text())
        return Outcome(self.name, report["data"], report["errors"], unfinished)


@dataclass
class Scripts:
    fluent: ClientScript
    client: ClientScript
    model: ClientScript
    experiment: str
    workdir: Path


@pytest.fixture(scope="module")
def scripts(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripts]:
    """The three independent workloads, concurrently: fluent (Bearer), client (Basic), model (Bearer)."""
    workdir = tmp_path_factory.mktemp("mlflow-client")
    tag = uuid.uuid4().hex[:8]
    started = Scripts(
        ClientScript("fluent", stack.url, bearer(stack.admin), workdir, experiment=f"mlflow-fluent-{tag}"),
        ClientScript("client", stack.url, basic(stack.admin), workdir, experiment=f"mlflow-search-{tag}"),
        ClientScript("model", stack.url, bearer(stack.admin), workdir, experiment=f"mlflow-model-{tag}"),
        f"mlflow-fluent-{tag}",
        workdir,
    )
    yield started
    for script in (started.fluent, started.client, started.model):
        if script.proc.poll() is None:
            script.proc.kill()
            script.proc.wait()


@pytest.fixture(scope="module")
def fluent(scripts: Scripts) -> Outcome:
    return scripts.fluent.result()


@pytest.fixture(scope="module")
def client(scripts: Scripts) -> Outcome:
    return scripts.client.result()


@pytest.fixture(scope="module")
def model(scripts: Scripts) -> Outcome:
    return scripts.model.result()


@pytest.fixture(scope="module")
def others(stack: Stack) -> dict[str, Identity]:
    """A key of another tenant and a viewer of the admin's tenant."""

    async def make() -> dict[str, Identity]:
        return {
            "other": await provision(stack.dsn, f"mlflow-other-{uuid.uuid4().hex[:6]}", Role.ENGINEER),
            "viewer": await provision(stack.dsn, stack.admin.tenant_id, Role.VIEWER),
        }

    return asyncio.run(make())


@pytest.fixture(scope="module")
def isolation(stack: Stack, scripts: Scripts, fluent: Outcome, others: dict[str, Identity]) -> Outcome:
    run_ids = [
        fluent.data[f"get_run_{name}"]["run_id"]
        for name in ("parent", "child", "FINISHED", "FAILED", "KILLED")
    ]
    wrong = {"MLFLOW_TRACKING_USERNAME": stack.admin.key.key_id, "MLFLOW_TRACKING_PASSWORD": "x" * 43}
    return ClientScript(
        "isolation",
        stack.url,
        {},
        scripts.workdir,
        experiment=scripts.experiment,
        experiment_id=fluent.step("set_experiment")["experiment_id"],
        run_ids=run_ids,
        identities={
            "admin": bearer(stack.admin),
            "other": bearer(others["other"]),
            "viewer": basic(others["viewer"]),
            "wrong": wrong,
        },
    ).result()


# --- fluent API ---------------------------------------------------------------------------------


def test_set_experiment_creates_it_once(fluent: Outcome, scripts: Scripts) -> None:
    got = fluent.step("set_experiment")
    assert got["name"] == scripts.experiment and got["lifecycle_stage"] == "active"
    assert got["experiment_id"] not in ("", "0") and got["again_id"] == got["experiment_id"]


def test_fluent_run_records_exact_params_metrics_tags(fluent: Outcome) -> None:
    fluent.step("parent_run")
    run = fluent.step("get_run_parent")
    assert run["run_name"] == "parent" and run["status"] == "FINISHED" and run["lifecycle_stage"] == "active"
    assert run["experiment_id"] == fluent.data["set_experiment"]["experiment_id"]
    assert run["end_time"] >= run["start_time"] > 0
    assert run["artifact_uri"] == f"mlflow-artifacts:/{run['experiment_id']}/{run['run_id']}/artifacts"
    assert run["params"] == {"lr": "0.01", "optimizer": "adam", "epochs": "3", "layers": "[64, 32]"}
    assert run["metrics"] == {"loss": 0.2, "acc": 0.75, "f1": 0.5}  # the latest step of each
    tags = run["tags"]
    assert {k: tags.get(k) for k in ("team", "stage", "owner", "mlflow.runName")} == {
        "team": "vision",
        "stage": "dev",
        "owner": "alice",
        "mlflow.runName": "parent",
    }
    assert fluent.step("history_loss")["points"] == [[step, 1.0 / (step + 1)] for step in range(5)]


def test_nested_run_points_at_its_parent(fluent: Outcome) -> None:
    fluent.step("nested_run")
    child, parent = fluent.step("get_run_child"), fluent.step("get_run_parent")
    assert child["tags"]["mlflow.parentRunId"] == parent["run_id"]
    assert child["run_name"] == "child" and child["status"] == "FINISHED"
    assert child["params"] == {"fold": "1"} and child["metrics"] == {"child_loss": 0.125}
    assert child["experiment_id"] == parent["experiment_id"]


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_end_run_with_each_status(fluent: Outcome, status: str) -> None:
    fluent.step(f"end_run_{status}")
    run = fluent.step(f"get_run_{status}")
    assert run["status"] == status and run["run_name"] == f"end-{status.lower()}"
    assert run["end_time"] >= run["start_time"] and run["metrics"] == {"x": 1.0}
    assert "mlflow.parentRunId" not in run["tags"]


def test_log_input_records_the_dataset(fluent: Outcome) -> None:
    expected = fluent.step("log_input")["dataset"]
    [got] = fluent.step("get_run_parent")["datasets"]
    assert {k: got[k] for k in ("name", "digest", "source_type")} == {
        k: expected[k] for k in ("name", "digest", "source_type")
    }
    for field in ("source", "schema", "profile"):  # JSON documents: same content
        assert json.loads(got[field]) == json.loads(expected[field]), field
    assert got["tags"] == {"mlflow.data.context": "training", "split": "train"}


def test_artifacts_list_with_sizes(fluent: Outcome) -> None:
    fluent.step("log_artifacts")
    files = artifact_files()
    listed = fluent.step("list_artifacts")
    assert listed[""] == [
        ["bin", True, None],
        ["config", True, None],
        ["data", True, None],
        ["notes.txt", False, 29],
    ]
    assert listed["data"] == [["data/a.txt", False, len(files["data/a.txt"])], ["data/sub", True, None]]
    assert listed["data/sub"] == [["data/sub/b.csv", False, len(files["data/sub/b.csv"])]]
    assert listed["bin"] == [["bin/blob.bin", False, 256 * 1024]]
    assert listed["notes.txt"] == []  # a file lists as nothing


def test_artifacts_download_exact_bytes(fluent: Outcome) -> None:
    files = artifact_files()
    got = fluent.step("download_artifacts")
    decoded = {path: base64.b64decode(content) for path, content in got["data"].items()}
    assert decoded == {"a.txt": files["data/a.txt"], "sub/b.csv": files["data/sub/b.csv"]}
    assert base64.b64decode(got["blob"]) == files["bin/blob.bin"]
    everything = {path: base64.b64decode(content) for path, content in got["all"].items()}
    assert json.loads(everything.pop("config/params.json")) == CONFIG
    assert everything == files
    assert fluent.step("load_dict")["config"] == CONFIG


# --- MlflowClient (Basic auth) ------------------------------------------------------------------

ALL = ["r0", "r1", "r2", "r3", "r4", "r5"]
SEARCHES = {
    "metric_gt": ["r4", "r0", "r1", "r2"],
    "param_eq": ["r0", "r1"],
    "tag_like": ["r0", "r1"],  # LIKE is case-sensitive: "Vision" is out
    "tag_ilike": ["r0", "r1", "r4"],
    "status": ["r3", "r1", "r0"],
    "and": ["r2", "r0"],
    "param_ne": ["r1", "r3", "r4", "r5"],
    "param_is_null": ["r5"],
    "tag_not_null_and_metric": ["r4", "r0", "r1"],
    "nulls_last_asc": ["r4", "r0", "r1", "r3", "r5", "r2"],
    "nulls_last_desc": ["r5", "r3", "r1", "r0", "r4", "r2"],
    "default_order": ["r5", "r4", "r3", "r2", "r1", "r0"],  # start_time DESC
    "backticked_tag": ["r2"],
    "run_name_like_two_orders": ["r0", "r1", "r4", "r2", "r3"],
    "start_time": ["r5", "r4", "r3"],
    "attr_alias": ["r1"],
}


def test_client_creates_experiment_and_runs_with_basic_auth(client: Outcome) -> None:
    setup = client.step("setup")
    assert setup["experiment"]["name"].startswith("mlflow-search-")
    assert (
        setup["experiment"]["tags"]["project"] == "search"
        and setup["experiment"]["lifecycle_stage"] == "active"
    )
    assert setup["search_experiments"] == [setup["experiment_id"]]
    assert sorted(setup["ids"]) == ALL


@pytest.mark.parametrize("label", list(SEARCHES))
def test_search_runs_filter_and_order_by(client: Outcome, label: str) -> None:
    assert client.step("search")[label] == SEARCHES[label]


def test_search_runs_run_id_in(client: Outcome) -> None:
    assert client.step("search_in")["runs"] == ["r1", "r3"]


def test_search_runs_rejects_or_and_unknown_prefixes(client: Outcome) -> None:
    assert client.step("search_errors") == {
        "or": "INVALID_PARAMETER_VALUE",
        "bad_key": "INVALID_PARAMETER_VALUE",
    }


def test_search_runs_pages_with_tokens(client: Outcome) -> None:
    pages = client.step("paging")["pages"]
    assert [name for page in pages for name in page] == ALL
    assert all(len(page) <= 2 for page in pages) and [len(p) for p in pages[:3]] == [2, 2, 2]


def test_metric_history_of_30k_points_pages_exactly(client: Outcome) -> None:
    got = client.step("history")
    assert got["count"] == 30_000
    assert got["steps_in_order"] and got["values_exact"] and got["timestamps_exact"]
    assert got["latest"] == 29_999 / 7


def test_latest_metric_is_max_step_then_timestamp_then_value(client: Outcome) -> None:
    got = client.step("latest_metric")
    assert got["latest"] == 3.0
    assert got["history"] == [[50, 5, 2.0], [50, 5, 3.0], [100, 2, 1.0]]  # by (timestamp, step, value)


def test_nan_and_infinities_round_trip(client: Outcome) -> None:
    assert client.step("special_values")["history"] == ["nan", "inf", "-inf"]


def test_params_are_immutable(client: Outcome) -> None:
    got = client.step("params_immutable")
    assert got["same"] is None and got["different"] == "INVALID_PARAMETER_VALUE"
    assert got["params"] == {"model": "cnn", "lr": "0.01"}


def test_delete_and_restore_run(client: Outcome) -> None:
    got = client.step("delete_restore")
    assert got["deleted_stage"] == "deleted" and got["restored_stage"] == "active"
    assert got["active"] == ["r0", "r1", "r2", "r4", "r5"] and got["deleted"] == ["r3"]
    assert got["all"] == ALL and got["active_after"] == ALL


def test_mlflow_search_runs_into_pandas(client: Outcome) -> None:
    got = client.step("pandas")
    assert got["type"] in ("pandas.DataFrame", "pandas.core.frame.DataFrame")  # pandas 3 / 2
    for column in (
        "run_id",
        "experiment_id",
        "status",
        "artifact_uri",
        "start_time",
        "end_time",
        "tags.mlflow.runName",
    ):
        assert column in got["columns"], column
    ids = got["ids"]
    assert got["rows"] == [
        {
            "run_id": ids["r0"],
            "status": "FINISHED",
            "metrics.acc": 0.9,
            "metrics.loss": 0.3,
            "params.model": "cnn",
            "params.lr": "0.1",
            "tags.team": "vision",
        },
        {
            "run_id": ids["r1"],
            "status": "FINISHED",
            "metrics.acc": 0.7,
            "metrics.loss": 0.5,
            "params.model": "cnn",
            "params.lr": "0.01",
            "tags.team": "vision-x",
        },
    ]
    assert got["list_count"] == 6


# --- log_model ----------------------------------------------------------------------------------


def test_sklearn_log_model_loads_back_from_runs_uri(model: Outcome) -> None:
    logged = model.step("log_model")
    assert model.step("load_runs_uri")["predicted"] == logged["expected"]
    assert model.step("load_runs_uri")["coef"] is True
    pyfunc = model.step("load_pyfunc")
    assert pyfunc["predicted"] == pyfunc["expected"]
    assert "model/MLmodel" in model.step("list_model_artifacts")["paths"]
    assert model.step("run_status")["status"] == "FINISHED"


def test_logged_model_is_first_class_get_search_and_models_uri(model: Outcome) -> None:
    logged = model.step("log_model")
    model_id = logged["model_id"]
    got = model.step("get_logged_model")
    assert got["name"] == "model" and got["source_run_id"] == logged["run_id"]
    assert got["status"] in ("READY", "LoggedModelStatus.READY", "PENDING", "LoggedModelStatus.PENDING")
    assert got["params"] == {"C": "1.0"}
    assert got["metrics"] == [["acc", 0.75, 0, logged["run_id"]]]
    assert got["artifact_location"] == logged_artifacts(logged)
    searched = model.step("search_logged_models")
    assert searched["ids"] == [model_id] and searched["by_metric"] == [model_id]
    assert searched["none"] == 0 and searched["frame_rows"] == 1
    assert model.step("run_status")["outputs"] == [model_id]
    assert model.step("load_models_uri")["predicted"] == logged["expected"]


def logged_artifacts(logged: dict[str, Any]) -> str:
    """Where a model logged in a run keeps its files: under the run's artifacts."""
    return f"mlflow-artifacts:/{logged['experiment_id']}/{logged['run_id']}/artifacts/model"


# --- tenancy ------------------------------------------------------------------------------------


def test_another_tenant_sees_none_of_the_runs(isolation: Outcome, fluent: Outcome) -> None:
    got = isolation.step("other_tenant")
    ours = set(got["get_run"])
    assert got["search"] == [] and ours.isdisjoint(got["search_all"])
    assert set(got["get_run"].values()) == {"RESOURCE_DOES_NOT_EXIST"}
    assert got["get_experiment"] == "RESOURCE_DOES_NOT_EXIST" and got["by_name"] is False
    for write in ("log_metric", "set_tag", "delete_run"):
        assert got[write] == "RESOURCE_DOES_NOT_EXIST", write
    assert got["list_artifacts"] is not None and got["download"] is not None
    assert got["default"] == "Default"  # every tenant has its own experiment "0"
    # Its writes went nowhere: the admin still sees the run as it was.
    admin = isolation.step("admin")
    assert admin["metric_keys"] == ["acc", "f1", "loss"] and admin["team"] == "vision"
    assert admin["lifecycle_stage"] == "active"


def test_experiment_names_and_runs_are_per_tenant(isolation: Outcome, fluent: Outcome) -> None:
    theirs = isolation.step("other_tenant_same_name")
    assert theirs["experiment_id"] != fluent.step("set_experiment")["experiment_id"]
    admin = isolation.step("admin")
    assert admin["sees_other_run"] == "RESOURCE_DOES_NOT_EXIST" and theirs["run_id"] not in admin["search"]
    assert len(admin["search"]) == 5


def test_another_tenant_cannot_reach_artifacts_through_the_proxy(
    stack: Stack, fluent: Outcome, others: dict[str, Identity]
) -> None:
    run = fluent.step("get_run_parent")
    base = f"{run['experiment_id']}/{run['run_id']}/artifacts"
    proxy = "/api/2.0/mlflow-artifacts/artifacts"
    with httpx.Client(base_url=stack.url, timeout=30, headers=others["other"].headers) as http:
        read = http.get(f"{proxy}/{base}/notes.txt")
        assert read.status_code in (403, 404) and b"hello" not in read.content
        listed = http.get(proxy, params={"path": base})
        assert listed.status_code in (200, 403, 404) and listed.json().get("files", []) == []
        write = http.put(f"{proxy}/{base}/notes.txt", content=b"overwritten")
        assert write.status_code in (403, 404), write.text
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.admin.headers) as http:
        assert http.get(f"{proxy}/{base}/notes.txt").content == artifact_files()["notes.txt"]


def test_viewer_reads_but_cannot_write(isolation: Outcome) -> None:
    got = isolation.step("viewer")
    assert got["search"] == isolation.step("admin")["search"]
    assert got["create_run"] == "PERMISSION_DENIED" and got["log_metric"] == "PERMISSION_DENIED"


def test_bad_or_missing_credentials_are_unauthenticated(isolation: Outcome) -> None:
    assert isolation.step("bad_credentials") == {
        "wrong_secret": "UNAUTHENTICATED",
        "garbage_token": "UNAUTHENTICATED",
        "none": "UNAUTHENTICATED",
    }
