"""The SDK logs a 3-level nested run tree; the API returns exactly what was logged, also after a replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import runledger_sdk as rl
from runledger.events.codec import experiment_id_for
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.integration

EPOCHS = 6


def _log_epochs(seed: int) -> dict[str, list[float]]:
    """Per-epoch train/val metrics of one run, logged through the fluent API."""
    history: dict[str, list[float]] = {"train/loss": [], "val/loss": [], "val/acc": []}
    for epoch in range(EPOCHS):
        values = {
            "train/loss": 1.0 / (epoch + 1) + seed * 1e-3,
            "val/loss": 1.2 / (epoch + 1) + seed * 1e-3,
            "val/acc": epoch / EPOCHS + seed * 1e-4,
        }
        rl.log_metrics(values, step=epoch)
        for key, value in values.items():
            history[key].append(value)
    return history


def _log_tree(experiment: str) -> dict[str, dict[str, Any]]:
    """root -> 2 children -> 2 grandchildren each; returns what each run logged."""
    logged: dict[str, dict[str, Any]] = {}

    def record(run: rl.Run, parent: str | None, params: dict[str, str], seed: int) -> None:
        tags = {"depth": str(run.name.count("-")), "seed": str(seed)}
        rl.log_params(params)
        rl.set_tags(tags)
        logged[run.run_id] = {
            "parent": parent,
            "params": params,
            "tags": tags,
            "metrics": _log_epochs(seed),
            "name": run.name,
        }

    with rl.start_run(experiment=experiment, name="root") as root:
        record(root, None, {"lr": "0.1", "optimizer": "adam"}, 0)
        for c in range(2):
            with rl.start_run(name=f"child-{c}", nested=True) as child:
                record(child, root.run_id, {"fold": str(c)}, 10 + c)
                for g in range(2):
                    with rl.start_run(name=f"grandchild-{c}-{g}", nested=True) as grandchild:
                        record(grandchild, child.run_id, {"fold": str(c), "trial": str(g)}, 100 + 10 * c + g)
    rl.flush(30)
    return logged


def _runs_of(client: httpx.Client, experiment_id: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/runs", params={"experiment_id": experiment_id, "page_size": 100})
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()["runs"]
    return runs


def _wait_finished(client: httpx.Client, experiment_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = _runs_of(client, experiment_id)
        if len(runs) == count and all(
            r["info"]["status"] == "FINISHED" and len(r["metrics"]) == 3 for r in runs
        ):
            return runs
        time.sleep(0.1)
    raise AssertionError(f"runs not projected in time: {runs}")


def _snapshot(client: httpx.Client, experiment_id: str) -> dict[str, Any]:
    """Everything the API says about the experiment's runs."""
    out: dict[str, Any] = {}
    for run in _runs_of(client, experiment_id):
        run_id = run["info"]["run_id"]
        detail = client.get(f"/api/v1/runs/{run_id}").json()
        histories = {
            key: client.get(f"/api/v1/runs/{run_id}/metrics/{key}/history").json()
            for key in detail["metrics"]
        }
        out[run_id] = {"detail": detail, "histories": histories}
    return out


def test_nested_run_tree_round_trips_exactly_and_survives_replay(stack: Stack, tmp_path: Path) -> None:
    rl.init(
        transport="kafka",
        kafka_bootstrap=stack.bootstrap,
        events_topic=stack.events_topic,
        spool_dir=tmp_path / "spool",
        system_metrics_interval_s=0,  # the tree is compared exactly, metric by metric
    )
    experiment = f"e2e-tree-{uuid.uuid4().hex[:6]}"
    try:
        logged = _log_tree(experiment)
    finally:
        rl.shutdown()
    experiment_id = experiment_id_for("default", experiment)

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        runs = _wait_finished(client, experiment_id, 7)
        assert {r["info"]["run_id"] for r in runs} == set(logged)
        for run in runs:
            info = run["info"]
            expected = logged[info["run_id"]]
            assert info["parent_run_id"] == expected["parent"]
            assert info["name"] == expected["name"]
            assert info["status"] == "FINISHED" and info["end_time"] >= info["start_time"]
            assert run["params"] == expected["params"]
            assert run["tags"].items() >= expected["tags"].items()
            for key, values in expected["metrics"].items():
                assert run["metrics"][key]["step"] == EPOCHS - 1
                assert run["metrics"][key]["value"] == values[-1]
                history = client.get(f"/api/v1/runs/{info['run_id']}/metrics/{key}/history").json()
                assert history["steps"] == list(range(EPOCHS))
                assert history["values"] == values  # exact: floats travel as binary

        depth = {}
        for run_id, item in logged.items():
            d, parent = 0, item["parent"]
            while parent is not None:
                d, parent = d + 1, logged[parent]["parent"]
            depth[run_id] = d
        assert sorted(depth.values()) == [0, 1, 1, 2, 2, 2, 2]

        before = _snapshot(client, experiment_id)
        replayed = client.post("/api/v1/admin/replay", timeout=120)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["events"] > 0
        assert _snapshot(client, experiment_id) == before

        # The same through the CLI a user runs.
        cli = subprocess.run(
            [sys.executable, "-m", "runledger.cli", "replay", "--url", stack.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["events"] == replayed.json()["events"]
        assert _snapshot(client, experiment_id) == before
