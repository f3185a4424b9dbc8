"""The analysis service in the whole pipeline: an SDK run diverges and the finding reaches the
API; an attribution requested over HTTP ranks the planted cause first."""

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
import numpy as np
import orjson
import pytest

from runledger.events.codec import experiment_id_for, metric_columns
from runledger.events.models import EventType
from tests.e2e.conftest import Stack
from tests.support.events import event, params_logged, run_started
from tests.support.services import REPO

pytestmark = pytest.mark.integration

ONSET = 250
SCRIPT = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    import runledger_sdk as rl

    rng = np.random.default_rng(7)
    with rl.start_run(experiment=sys.argv[1]) as run:
        loss = 0.0
        for step in range(400):
            if step < {ONSET}:
                loss = 2.0 * np.exp(-step / 60) + 0.2 + rng.normal(0, 0.01)
            else:
                loss = loss * 1.08 + rng.normal(0, 0.01)  # the loss explodes
            rl.log_metric("train/loss", float(loss), step=step)
    print(run.run_id, flush=True)
    """
)


def poll(client: httpx.Client, path: str, ready: Any, timeout: float = 60, **params: Any) -> Any:
    """GET `path` until `ready(body)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path, params=params)
        if response.status_code == 200 and ready(response.json()):
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not ready in time: {response.status_code} {response.text[:800]}")
        time.sleep(0.1)


def test_a_diverging_sdk_run_is_reported_through_the_api(stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    experiment = f"e2e-diverge-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "RUNLEDGER_TRANSPORT": "kafka",
        "RUNLEDGER_KAFKA_BOOTSTRAP": stack.bootstrap,
        "RUNLEDGER_EVENTS_TOPIC": stack.events_topic,
        "RUNLEDGER_SPOOL_DIR": str(tmp_path / "spool"),
    }
    done = subprocess.run(
        [sys.executable, str(script), experiment],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    logged = time.monotonic()

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        found = poll(client, "/api/v1/anomalies", lambda b: b["anomalies"], timeout=30, run_id=run_id)
        delay = time.monotonic() - logged
        anomalies = found["anomalies"]
        kinds = [a["kind"] for a in anomalies]
        assert "divergence" in kinds, anomalies
        assert kinds.count("divergence") == 1, anomalies  # one finding per incident, not one per step
        divergence = next(a for a in anomalies if a["kind"] == "divergence")
        assert divergence["key"] == "train/loss"
        assert ONSET - 5 <= divergence["step"] <= ONSET + 10, divergence  # the estimated onset
        assert divergence["experiment_id"] == experiment_id_for("default", experiment)
        assert divergence["message"] and "train/loss" in divergence["message"]
        assert 0 < divergence["severity"] <= 1
        # Nothing before the onset: the clean, decaying part of the curve raised no alarm.
        assert all(a["step"] >= ONSET - 5 for a in anomalies), anomalies
        # The same finding is listed among the run's findings and filtered by kind and key.
        by_kind = client.get("/api/v1/anomalies", params={"kind": "divergence", "key": "train/loss"}).json()
        assert divergence["event_id"] in {a["event_id"] for a in by_kind["anomalies"]}
        assert client.get("/api/v1/anomalies", params={"kind": "nonsense"}).status_code == 400
        run_findings = client.get(f"/api/v1/runs/{run_id}/findings").json()["findings"]
        assert divergence["event_id"] in {f["event_id"] for f in run_findings}
    print(f"divergence visible through the API {delay:.2f} s after the SDK process ended")


def _run_events(
    stack: Stack, experiment_id: str, i: int, optimizer: str, seed: int, value: float
) -> list[bytes]:
    """One finished run: started, params, a final val/loss, finished."""
    run_id = f"attr{uuid.uuid4().hex[:20]}{i:04d}"
    admin = stack.admin
    steps = np.array([0], dtype=np.int64)
    metrics = metric_columns(
        ["val/loss"],
        np.zeros(1, dtype=np.int32),
        np.array([value]),
        steps,
        np.array([1_700_000_000_000 + i], dtype=np.int64),
    )
    return [
        run_started(admin, experiment_id, run_id, f"run-{i}"),
        params_logged(admin, experiment_id, run_id, {"optimizer": optimizer, "seed": str(seed)}),
        event(admin, EventType.METRICS_LOGGED, metrics, run_id=run_id, experiment_id=experiment_id),
        event(
            admin,
            EventType.STATUS_CHANGED,
            {"status": "FINISHED", "end_time": 1_700_000_100_000},
            run_id=run_id,
            experiment_id=experiment_id,
        ),
    ]


def test_attribution_requested_over_http_ranks_the_planted_cause_first(stack: Stack) -> None:
    rng = np.random.default_rng(11)
    name = f"e2e-attribution-{uuid.uuid4().hex[:6]}"
    experiment_id = experiment_id_for("default", name)
    created = event(stack.admin, EventType.EXPERIMENT_CREATED, {"name": name}, experiment_id=experiment_id)
    runs: list[tuple[list[bytes], bool]] = []
    for i in range(60):
        candidate = i >= 40
        sgd = rng.random() < (0.9 if candidate else 0.2)
        value = 1.0 + 0.5 * sgd + rng.normal(0, 0.05)
        runs.append(
            (
                _run_events(
                    stack, experiment_id, i, "sgd" if sgd else "adam", int(rng.integers(1000)), value
                ),
                candidate,
            )
        )
    events = [created] + [e for batch, _ in runs for e in batch]
    with httpx.Client(base_url=stack.url, timeout=60, headers=stack.headers) as client:
        for start in range(0, len(events), 100):
            body = [orjson.loads(e) for e in events[start : start + 100]]
            answer = client.post("/api/v1/events", json=body)
            assert answer.status_code in (200, 202), answer.text
        run_ids = [orjson.loads(batch[0])["run_id"] for batch, _ in runs]
        candidates = [r for r, (_, c) in zip(run_ids, runs, strict=True) if c]
        baseline = [r for r, (_, c) in zip(run_ids, runs, strict=True) if not c]
        requested = client.post(
            "/api/v1/attributions",
            json={
                "experiment_id": experiment_id,
                "metric": "val/loss",
                "candidate": {"run_ids": candidates},
                "baseline": {"filter": "params.optimizer != 'none'"},
            },
        )
        assert requested.status_code == 202, requested.text
        attribution = requested.json()
        assert attribution["status"] in ("pending", "running")
        assert sorted(attribution["baseline_run_ids"]) == sorted(baseline)  # the filter, less the candidates
        started = time.monotonic()
        report = poll(
            client,
            f"/api/v1/attributions/{attribution['attribution_id']}",
            lambda b: b["status"] in ("done", "failed"),
            timeout=240,
        )
        took = time.monotonic() - started
        assert report["status"] == "done", report["error"]
        top = report["factors"][0]
        assert top["factor"] == "params.optimizer", report["factors"]
        assert top["contribution"] > 0 and top["sentence"]
        assert report["result"]["shift"] > 0
        listed = client.get("/api/v1/attributions", params={"experiment_id": experiment_id}).json()
        assert attribution["attribution_id"] in {a["attribution_id"] for a in listed["attributions"]}
        # The result is also a finding of kind "attribution".
        findings = client.get(
            "/api/v1/findings", params={"experiment_id": experiment_id, "kind": "attribution"}
        )
        assert findings.json()["findings"], findings.text
        # Unknown runs and unknown experiments are the caller's mistake: 4xx with a reason.
        bad = client.post(
            "/api/v1/attributions",
            json={"experiment_id": experiment_id, "metric": "val/loss", "candidate": {"run_ids": ["nope"]}},
        )
        assert bad.status_code == 400 and "nope" in bad.json()["message"]
        missing = client.post(
            "/api/v1/attributions",
            json={"experiment_id": "no-such-experiment", "metric": "m", "candidate": {"run_ids": candidates}},
        )
        assert missing.status_code == 404
        assert client.get(f"/api/v1/attributions/{uuid.uuid4()}").status_code == 404
    print(f"attribution over 60 runs done {took:.1f} s after the request")
