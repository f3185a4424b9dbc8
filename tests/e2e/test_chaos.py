"""Crash consistency, reduced `make chaos`: ~100k points from 3 SDK processes while the
projector, the analysis service and the API are SIGKILLed (one at a time and overlapping)
and the broker and PostgreSQL restart; then every store holds exactly what the writers were
acknowledged for and every planted anomaly has one finding.

RUNLEDGER_CHAOS_SEED picks the storm (and the data): rerun with other seeds to try other
timings. The full run is `make chaos` (bench/chaos.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.chaos import seed_from_env
from tests.support.chaos_model import ChaosConfig
from tests.support.chaos_trial import markdown, run_trial

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

REDUCED = ChaosConfig(
    writers=3,
    runs_per_writer=3,
    keys=3,
    steps=3_750,  # 3 x 3 x 3 x 3,750 = 101,250 points
    chunk_steps=250,
    chunk_interval_s=1.5,  # ~22 s of stream
    kills=6,
    # The embedded broker keeps its log in memory, so its restart is planned in the first
    # 30-60% of the stream: the writers are still there to re-send what it had acknowledged
    # (the SDK's resend window) and the services must take the new incarnation.
    # RUNLEDGER_CHAOS_BROKER_RESTARTS=0 leaves it out.
    broker_restarts=int(os.environ.get("RUNLEDGER_CHAOS_BROKER_RESTARTS", "1")),
    postgres_restarts=1,
    broker_rotations=2,
    downtime_s=(0.2, 2.0),
    overlap_share=0.4,
)


def test_a_storm_of_crashes_loses_and_duplicates_nothing(test_root: Path) -> None:
    config = replace(REDUCED, seed=seed_from_env())
    out = test_root / f"chaos-{config.seed}"
    root = test_root / f"chaos-{config.seed}-state"
    root.mkdir()
    report = run_trial(config, out, root=root)
    print(markdown(report))
    trials = report["trials"]
    assert trials["total_kills"] == config.kills and trials["overlapping_kills"] >= 1, trials
    assert trials["broker_restarts"] == config.broker_restarts and trials["postgres_restarts"] == 1, trials
    assert not trials["errors"], trials
    # A replacement is put off while PostgreSQL is down (it reads the checkpoints there).
    assert trials["broker_rotations"] + trials["rotations_put_off"] == config.broker_rotations, trials
    assert trials["broker_rotations"] >= 1, trials
    expected = ["broker_stop"] * config.broker_restarts + ["postgres_stop"]
    assert sorted(trials["restarts_while_streaming"]) == expected, trials
    points, findings = report["points"], report["findings"]
    detail = json.dumps({k: report[k] for k in ("points", "findings", "sdk", "trials")}, indent=1)
    assert points["acknowledged"] == config.points, detail  # every writer got everything acknowledged
    assert (points["lost"], points["duplicated"], points["extra"]) == (0, 0, 0), detail
    assert points["stored"] == config.points, detail
    assert not report["clickhouse"]["series_mismatched"], report["clickhouse"]["series_mismatched"][:5]
    assert not report["clickhouse"]["rollup_mismatched"], report["clickhouse"]["rollup_mismatched"][:5]
    ch, pg = report["clickhouse"], report["postgres"]
    assert ch["archive_events"] == ch["archive_distinct_events"] == pg["applied_events"], detail
    for name in ("latest_mismatches", "params_mismatches", "tags_mismatches", "status_mismatches"):
        assert not pg[name], (name, pg[name][:5])
    assert pg["runs_found"] == pg["runs_expected"] == config.runs
    assert findings["planted"] == 2 * config.runs, detail
    assert (findings["found_once"], findings["missing"], findings["duplicated"], findings["unexpected"]) == (
        findings["planted"],
        0,
        0,
        0,
    ), json.dumps(report["postgres"]["findings"])
    assert findings["api_agrees"], report["api_findings"]
    assert report["sdk"]["rejected_events"] == 0
    assert report["ok"]
    if not os.environ.get("RUNLEDGER_KEEP_TEST_STATE"):
        shutil.rmtree(root, ignore_errors=True)
