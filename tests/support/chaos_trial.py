"""One chaos trial from start to report: stack, writers, storm, settle, verify."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.chaos import Storm, Trials, chaos_stack, start_writers
from tests.support.chaos_model import ChaosConfig
from tests.support.chaos_verify import (
    read_acks,
    verify_api,
    verify_clickhouse,
    verify_postgres,
    wait_settled,
)


def run_trial(
    config: ChaosConfig, out: Path, *, root: Path | None = None, fsync: bool = False
) -> dict[str, Any]:
    """Run the trial; return the report (also written to out/report.json)."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    with chaos_stack(root, fsync=fsync) as stack:
        up = time.monotonic() - started
        writers = start_writers(stack, config, out)
        storm = Storm(stack, config, config.seed)
        ended: list[float] = []

        def wait_writers() -> None:
            for proc in writers:
                proc.wait(timeout=1800)
            ended.append(time.monotonic())

        waiter = threading.Thread(target=wait_writers, daemon=True)
        waiter.start()
        try:
            trials = storm.run()
            waiter.join(1800)
        finally:
            for proc in writers:
                if proc.poll() is None:
                    proc.kill()
        stream_end = time.monotonic()
        exp = read_acks(config, out)
        settle_s = wait_settled(stack.dsn, exp, config, timeout=240)
        api = verify_api(stack.api.url, stack.key.token, exp, config)
        postgres = verify_postgres(stack.dsn, exp, config)
        stack.services["projector"].stop()  # the ClickHouse data opens in one process only
        clickhouse = verify_clickhouse(stack.clickhouse_path, exp, config)
        report = _report(config, trials, exp, clickhouse, postgres, api)
        stream_s = (ended[0] if ended else time.monotonic()) - storm.started
        report["trials"]["kills_while_streaming"] = sum(
            1 for e in trials.log if e["action"] == "kill" and e["t"] <= stream_s
        )
        report["trials"]["restarts_while_streaming"] = [
            e["action"]
            for e in trials.log
            if e["action"] in ("broker_stop", "postgres_stop") and e["t"] <= stream_s
        ]
        report["seconds"] = {
            "stack_start": round(up, 1),
            "stream": round(stream_end - started - up, 1),
            "settle": round(settle_s, 1),
            "total": round(time.monotonic() - started, 1),
        }
        # Produces the relay refused for naming an incarnation it had replaced.
        report["trials"]["produces_fenced"] = stack.gate.fenced_produces
        report["state_dir"] = str(stack.root)
        report["writer_exit_codes"] = [proc.returncode for proc in writers]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _report(
    config: ChaosConfig,
    trials: Trials,
    exp: Any,
    clickhouse: dict[str, Any],
    postgres: dict[str, Any],
    api: dict[str, Any],
) -> dict[str, Any]:
    findings = postgres["findings"]
    ok = (
        clickhouse["points_lost"] == clickhouse["points_duplicated"] == clickhouse["points_extra"] == 0
        and not clickhouse["series_mismatched"]
        and not clickhouse["rollup_mismatched"]
        and clickhouse["archive_events"]
        == clickhouse["archive_distinct_events"]
        == postgres["applied_events"]
        and not any(
            postgres[k]
            for k in ("latest_mismatches", "params_mismatches", "tags_mismatches", "status_mismatches")
        )
        and postgres["runs_found"] == postgres["runs_expected"]
        and not (findings["missing"] or findings["duplicated"] or findings["unexpected"])
        and not (api["missing"] or api["duplicated"] or api["unexpected"])
        and exp.sdk["rejected_events"] == 0
        and exp.writers_ended == config.writers
        and not trials.errors
    )
    return {
        "ok": ok,
        "seed": config.seed,
        "config": json.loads(config.to_json()),
        "trials": {
            "kills": trials.kills,
            "total_kills": trials.total_kills,
            "overlapping_kills": trials.overlapping_kills,
            "most_down_at_once": trials.most_down_at_once,
            "broker_restarts": trials.broker_restarts,
            "broker_rotations": trials.broker_rotations,
            "rotations_put_off": trials.rotations_put_off,
            "postgres_restarts": trials.postgres_restarts,
            "restart_retries": trials.restart_failures,
            "errors": trials.errors,
        },
        "points": {
            "logged": config.points,
            "acknowledged": exp.points(config),
            "stored": clickhouse["points_stored"],
            "lost": clickhouse["points_lost"],
            "duplicated": clickhouse["points_duplicated"],
            "extra": clickhouse["points_extra"],
        },
        "sdk": dict(exp.sdk),
        "findings": {
            "planted": findings["expected"],
            "found_once": findings["found"] - len(findings["duplicated"]),
            "missing": len(findings["missing"]),
            "duplicated": len(findings["duplicated"]),
            "unexpected": len(findings["unexpected"]),
            "cohort": len(findings["cohort"]),
            "api_agrees": api == findings,
        },
        "clickhouse": clickhouse,
        "postgres": postgres,
        "api_findings": api,
        "storm_log": trials.log,
    }


def markdown(report: dict[str, Any]) -> str:
    """A short paragraph of the figures (bench/RESULTS.md style)."""
    t, p, f = report["trials"], report["points"], report["findings"]
    kills = ", ".join(f"{n} {k}" for k, n in t["kills"].items())
    return (
        f"Seed {report['seed']}: {t['total_kills']} SIGKILLs ({kills}; {t.get('kills_while_streaming')} while the "
        f"writers streamed, {t['overlapping_kills']} while another "
        f"service was down, up to {t['most_down_at_once']} down at once), {t['broker_restarts']} broker and "
        f"{t['postgres_restarts']} PostgreSQL restart(s), {t['broker_rotations']} broker replacement(s)"
        f" ({t['rotations_put_off']} put off) during a stream of {p['logged']:,} points from "
        f"{report['config']['writers']} SDK processes. Acknowledged {p['acknowledged']:,}; ClickHouse holds "
        f"{p['stored']:,}: **{p['lost']} lost, {p['duplicated']} duplicated, {p['extra']} extra**; "
        f"series/rollup/latest/params/tags mismatches: {len(report['clickhouse']['series_mismatched'])}/"
        f"{len(report['clickhouse']['rollup_mismatched'])}/{len(report['postgres']['latest_mismatches'])}/"
        f"{len(report['postgres']['params_mismatches'])}/{len(report['postgres']['tags_mismatches'])}. "
        f"Findings: {f['planted']} planted, {f['found_once']} found once, {f['missing']} missing, "
        f"{f['duplicated']} duplicated, {f['unexpected']} unexpected, plus {f['cohort']} outlier_run "
        f"(at most one per series; API agrees: {f['api_agrees']}). "
        f"{report['seconds']['total']:.0f} s in all ({report['seconds']['stream']:.0f} s stream, "
        f"{report['seconds']['settle']:.0f} s to settle). Verdict: {'PASS' if report['ok'] else 'FAIL'}."
    )
