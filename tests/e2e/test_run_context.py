"""A script that only logs a loss ends up with code state, environment, system metrics and lint
findings in the API."""

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
from tests.e2e.conftest import Stack
from tests.support.services import REPO

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import sys
    import runledger_sdk as rl

    with rl.start_run(experiment=sys.argv[1]) as run:
        rl.log_metric("loss", 0.5)
    print(run.run_id, flush=True)
    """
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def poll(client: httpx.Client, path: str, ready: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code == 200 and ready(response.json()):
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not ready in time: {response.status_code} {response.text[:500]}")
        time.sleep(0.1)


def test_run_context_is_captured_and_served(stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    experiment = f"e2e-context-{uuid.uuid4().hex[:6]}"
    head_before = git("rev-parse", "HEAD")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")},  # SDK defaults
        "RUNLEDGER_TRANSPORT": "kafka",
        "RUNLEDGER_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RUNLEDGER_EVENTS_TOPIC": stack.events_topic,
        "RUNLEDGER_SPOOL_DIR": str(tmp_path / "spool"),
        "RUNLEDGER_STATE_DIR": str(tmp_path / "no-state"),
        **stack.sdk_env(),
    }
    # Run from the repository (a git work tree); the script itself lives outside it.
    done = subprocess.run(
        [sys.executable, str(script), experiment],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    heads = {head_before, git("rev-parse", "HEAD")}

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        run = poll(client, f"/api/v1/runs/{run_id}", lambda r: r["info"]["status"] == "FINISHED")
        # System metrics on by default; the run lasted less than the 10 s interval, so what it
        # has is the sampler's closing sample.
        system = {k: m for k, m in run["metrics"].items() if k.startswith("system/")}
        assert set(system) >= {"system/cpu_percent", "system/process_rss_bytes", "system/wall_time_s"}
        assert system["system/process_rss_bytes"]["value"] > 0
        assert 0 < system["system/wall_time_s"]["value"] < 120
        docs = poll(
            client,
            f"/api/v1/runs/{run_id}/documents",
            lambda d: d["code_state"] is not None and d["environment"] is not None,
        )

        code = docs["code_state"]
        assert code["commit"] in heads
        assert code["branch"] == git("branch", "--show-current")
        assert isinstance(code["dirty"], bool)
        assert (code["diff"] is not None) is code["dirty"]
        assert code["entry_point"] == str(script.resolve())
        assert code["args"] == [experiment]
        assert run["tags"]["git.commit"] == code["commit"]
        assert run["tags"]["git.dirty"] == str(code["dirty"]).lower()

        environment = docs["environment"]
        assert environment["python_version"] == ".".join(map(str, sys.version_info[:3]))
        assert environment["packages"]["runledger"] and environment["packages"]["pydantic"]
        assert len(environment["environment_hash"]) == 64
        assert run["tags"]["env.hash"] == environment["environment_hash"][:12]

        findings = poll(client, f"/api/v1/runs/{run_id}/findings", lambda f: len(f["findings"]) == 2)
        by_kind = {f["kind"]: f for f in findings["findings"]}
        assert set(by_kind) == {"lint.parameter_omission", "lint.metric_myopia"}
        myopia = by_kind["lint.metric_myopia"]
        assert myopia["run_id"] == run_id and myopia["experiment_id"] == experiment_id_for(
            "default", experiment
        )
        assert myopia["body"]["key"] == "loss"
        assert myopia["body"]["evidence"]["reasons"] == ["single_metric", "no_validation_metric"]
        assert myopia["severity"] == 0.3 and "loss" in myopia["message"]
        assert by_kind["lint.parameter_omission"]["body"]["key"] == "seed"

        # The tenant-wide listing: filters, and pages of one.
        only = client.get("/api/v1/findings", params={"run_id": run_id, "kind": "lint.metric_myopia"}).json()
        assert [f["event_id"] for f in only["findings"]] == [myopia["event_id"]]
        pages: list[dict[str, Any]] = []
        params: dict[str, Any] = {"experiment_id": myopia["experiment_id"], "page_size": 1}
        while True:
            page = client.get("/api/v1/findings", params=params).json()
            pages.extend(page["findings"])
            if page["next_page_token"] is None:
                break
            params["page_token"] = page["next_page_token"]
        assert [f["event_id"] for f in pages] == [f["event_id"] for f in findings["findings"]]
        times = [f["occurred_at"] for f in pages]
        assert times == sorted(times, reverse=True)
        later = client.get("/api/v1/findings", params={"run_id": run_id, "since": max(times) + 1}).json()
        assert later["findings"] == []
        foreign = client.get("/api/v1/findings", params={**params, "experiment_id": "other"})
        assert foreign.status_code == 400  # a token only resumes the listing it came from

        # Unknown runs are 404; a run that captured nothing has null documents.
        for path in ("/api/v1/runs/no-such-run/documents", "/api/v1/runs/no-such-run/findings"):
            missing = client.get(path)
            assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        created = client.post("/api/v1/runs", json={"name": "bare"})
        assert created.status_code in (200, 201, 202), created.text
        bare = created.json()["run_id"]
        token = created.json()["consistency_token"]
        empty = client.get(f"/api/v1/runs/{bare}/documents", params={"consistency_token": token})
        assert empty.json() == {"code_state": None, "environment": None}
        assert client.get(f"/api/v1/runs/{bare}/findings").json() == {"findings": [], "next_page_token": None}
