"""Offline mode end to end: log with no network, `runledger sync` later, the API shows the runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import runledger_sdk as rl
from tests.e2e.conftest import Stack
from tests.support.services import REPO

pytestmark = pytest.mark.integration

STEPS = 1000


def _log_offline(offline_dir: Path, spool_dir: Path, experiment: str) -> dict[str, dict[str, Any]]:
    """A parent and a nested child with params, tags and metrics 0..999; what each logged."""
    rl.init(mode="offline", offline_dir=offline_dir, spool_dir=spool_dir, system_metrics_interval_s=0)
    try:
        with rl.start_run(experiment=experiment, name="parent", tags={"kind": "offline"}) as parent:
            rl.log_params({"lr": 0.01, "optimizer": "sgd"})
            with rl.start_run(name="child", nested=True) as child:
                rl.log_param("fold", 2)
                rl.set_tag("fold", "2")
                for step in range(STEPS):
                    rl.log_metrics({"loss": 1.0 / (step + 1), "acc": step / STEPS}, step=step)
            for epoch in range(10):
                rl.log_metric("val/loss", 2.0 - epoch * 0.1, step=epoch)
        assert rl.flush(30)
    finally:
        rl.shutdown()
    return {
        parent.run_id: {
            "name": "parent",
            "parent": None,
            "params": {"lr": "0.01", "optimizer": "sgd"},
            "tags": {"kind": "offline"},
            "metrics": {"val/loss": (list(range(10)), [2.0 - e * 0.1 for e in range(10)])},
        },
        child.run_id: {
            "name": "child",
            "parent": parent.run_id,
            "params": {"fold": "2"},
            "tags": {"fold": "2"},
            "metrics": {
                "loss": (list(range(STEPS)), [1.0 / (s + 1) for s in range(STEPS)]),
                "acc": (list(range(STEPS)), [s / STEPS for s in range(STEPS)]),
            },
        },
    }


def _sync(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUNLEDGER_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "runledger.cli", "sync", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _snapshot(client: httpx.Client, run_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for run_id in run_ids:
        detail = client.get(f"/api/v1/runs/{run_id}").json()
        histories = {
            key: client.get(f"/api/v1/runs/{run_id}/metrics/{key}/history").json()
            for key in detail["metrics"]
        }
        out[run_id] = {"detail": detail, "histories": histories}
    return out


def _check(client: httpx.Client, logged: dict[str, dict[str, Any]]) -> None:
    for run_id, expected in logged.items():
        response = client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        detail = response.json()
        info = detail["info"]
        assert info["status"] == "FINISHED" and info["end_time"] >= info["start_time"]
        assert info["name"] == expected["name"] and info["parent_run_id"] == expected["parent"]
        assert detail["params"] == expected["params"]
        assert detail["tags"].items() >= expected["tags"].items()
        assert set(detail["metrics"]) == set(expected["metrics"])
        for key, (steps, values) in expected["metrics"].items():
            history = client.get(f"/api/v1/runs/{run_id}/metrics/{key}/history").json()
            assert history["steps"] == steps
            assert history["values"] == values  # exact: floats travel as binary
            assert (
                detail["metrics"][key]["step"] == steps[-1] and detail["metrics"][key]["value"] == values[-1]
            )


def test_offline_run_synced_over_http_shows_exactly_what_was_logged(stack: Stack, tmp_path: Path) -> None:
    offline_dir = tmp_path / "offline"
    logged = _log_offline(offline_dir, tmp_path / "spool", f"offline-{uuid.uuid4().hex[:6]}")
    assert list(offline_dir.glob("*.events"))
    assert not list((tmp_path / "spool").rglob("*.spool"))  # everything went to the offline dir

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        for run_id in logged:  # nothing left the machine while offline
            assert client.get(f"/api/v1/runs/{run_id}").status_code == 404

        first = _sync(str(offline_dir), "--url", stack.url, state_dir=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "1 segment(s) fully synced" in first.stderr and "sync 100% [" in first.stderr
        # The API answers POST /events after projecting them: no polling needed.
        _check(client, logged)
        before = _snapshot(client, list(logged))

        second = _sync(str(offline_dir), "--url", stack.url, state_dir=tmp_path)
        assert second.returncode == 0, second.stderr
        assert "already synced earlier: skipped" in second.stderr and "sent " not in second.stderr
        assert _snapshot(client, list(logged)) == before

        # Everything again, on purpose: same event ids, so the projector drops every duplicate.
        forced = _sync(str(offline_dir), "--url", stack.url, "--force", state_dir=tmp_path)
        assert forced.returncode == 0, forced.stderr
        assert _snapshot(client, list(logged)) == before


def test_offline_run_synced_to_kafka(stack: Stack, tmp_path: Path) -> None:
    offline_dir = tmp_path / "offline"
    logged = _log_offline(offline_dir, tmp_path / "spool", f"offline-kafka-{uuid.uuid4().hex[:6]}")
    done = _sync(
        str(offline_dir),
        "--kafka-bootstrap",
        stack.bootstrap,
        "--topic",
        stack.events_topic,
        state_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        # Through Kafka the projector applies them asynchronously: wait until all is there.
        deadline = time.monotonic() + 60
        while True:
            try:
                _check(client, logged)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
