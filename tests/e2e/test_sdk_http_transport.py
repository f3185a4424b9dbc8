"""The SDK's HTTP transport (for clients that cannot reach Kafka) against the real API."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

import runledger_sdk as rl
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.integration


def test_a_run_logged_over_http_is_projected_exactly(stack: Stack, tmp_path: Path) -> None:
    rl.init(transport="http", url=stack.url, spool_dir=tmp_path / "spool")
    try:
        with rl.start_run(
            experiment=f"http-{uuid.uuid4().hex[:6]}", name="over-http", tags={"via": "http"}
        ) as run:
            rl.log_params({"lr": 0.5})
            for step in range(2000):
                rl.log_metric("loss", 1.0 / (step + 1), step=step)
        assert rl.flush(30)
    finally:
        rl.shutdown()

    with httpx.Client(base_url=stack.url, timeout=30, headers=stack.headers) as client:
        # The API answered each POST /events after projecting it: no polling needed.
        detail = client.get(f"/api/v1/runs/{run.run_id}").json()
        assert detail["info"]["status"] == "FINISHED"
        assert detail["params"] == {"lr": "0.5"} and detail["tags"]["via"] == "http"
        history = client.get(f"/api/v1/runs/{run.run_id}/metrics/loss/history").json()
        assert history["steps"] == list(range(2000))
        assert history["values"] == [1.0 / (step + 1) for step in range(2000)]
