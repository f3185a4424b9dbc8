"""The embedded `all` role with RUNLEDGER_ANALYSIS_SHARDS=2: two analysis children, one per
shard, and each experiment's divergence is reported once, by the shard it hashes to."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from runledger.analysis.sharding import shard_of
from runledger.auth.keys import generate_key
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.events.codec import experiment_id_for
from tests.e2e.test_analysis import SCRIPT, poll
from tests.integration.conftest import create_database
from tests.support.services import REPO, ServiceProcess

pytestmark = pytest.mark.integration


def _experiment_on(shard: int) -> str:
    while True:
        name = f"e2e-shard-{uuid.uuid4().hex[:6]}"
        if shard_of("default", experiment_id_for("default", name), 2) == shard:
            return name


def test_two_embedded_shards_each_report_their_experiments(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {"events": f"runledger.events.v1.shards{suffix}", "dlq": f"runledger.events.dlq.shards{suffix}"}
    broker.ensure_topics({topics["events"]: 4, topics["dlq"]: 1})
    dsn = asyncio.run(create_database(postgres))
    key = generate_key()
    services = ServiceProcess(
        "all",
        tmp_path / "state",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": topics["events"],
            "RUNLEDGER_DLQ_TOPIC": topics["dlq"],
            "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "50",
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
            "RUNLEDGER_ANALYSIS_SHARDS": "2",
        },
    )
    services.start()
    try:
        assert services.proc is not None
        children = [
            p for p in psutil.Process(services.proc.pid).children() if "services.analysis" in p.cmdline()
        ]
        assert sorted(p.environ()["RUNLEDGER_ANALYSIS_SHARD"] for p in children) == ["0", "1"]
        script = tmp_path / "train.py"
        script.write_text(SCRIPT)
        env = {
            **os.environ,
            "RUNLEDGER_TRANSPORT": "kafka",
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_EVENTS_TOPIC": topics["events"],
            "RUNLEDGER_SPOOL_DIR": str(tmp_path / "spool"),
            "RUNLEDGER_API_KEY": key.token,
            "RUNLEDGER_TENANT": "default",
        }
        runs = []
        for shard in (0, 1):
            done = subprocess.run(
                [sys.executable, str(script), _experiment_on(shard)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            runs.append(done.stdout.strip().splitlines()[-1])
        headers = {"Authorization": f"Bearer {key.token}"}
        with httpx.Client(base_url=services.url, timeout=30, headers=headers) as client:
            for run_id in runs:
                found = poll(
                    client,
                    "/api/v1/anomalies",
                    lambda b: any(a["kind"] == "divergence" for a in b["anomalies"]),
                    timeout=60,
                    run_id=run_id,
                )
                kinds = [a["kind"] for a in found["anomalies"]]
                assert kinds.count("divergence") == 1, found
    finally:
        services.stop()
