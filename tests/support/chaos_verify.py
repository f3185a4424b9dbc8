"""After the storm: what the writers were acknowledged for, against every store, exactly.

Expected = the chunks each writer recorded as acknowledged (tests/support/chaos_writer.py);
the values come from tests/support/chaos_model.py. Compared per series (tenant, run, key):
ClickHouse `metric_points` (count, distinct steps, step range and an exact integer checksum
of (step, float64 bits) — no FINAL, so a point inserted twice shows), the `metric_rollup`
buckets (min and max per 64 steps), PostgreSQL `latest_metrics` (the last point), runs,
params and tags; the event archive and `applied_events` for repeated event ids; and every
planted anomaly must have exactly one finding, in PostgreSQL and through the API, with no
other finding anywhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np

from runledger.stores.clickhouse.adapter import ChdbClickHouse
from runledger.stores.clickhouse.tables import ROLLUP_STEPS
from tests.support.chaos_model import TENANT, ChaosConfig, Planted, checksum, planted, series


@dataclass
class Expected:
    """What the writers were acknowledged for."""

    steps: dict[str, int] = field(default_factory=dict)  # run id -> acknowledged steps (0..n-1)
    late_tag: dict[str, bool] = field(default_factory=dict)  # run id -> "phase"="late" acked
    finished: dict[str, bool] = field(default_factory=dict)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)  # run id -> (writer, run)
    sdk: dict[str, int] = field(default_factory=lambda: Counter())  # acked/rejected/spooled events
    writers_ended: int = 0

    def points(self, config: ChaosConfig) -> int:
        """Acknowledged metric points in all."""
        return sum(self.steps.values()) * config.keys

    def planted(self, config: ChaosConfig) -> list[Planted]:
        """The planted anomalies among the acknowledged points."""
        out = []
        for run_id, (w, r) in self.where.items():
            out += [p for p in planted(config, w, r) if p.step < self.steps[run_id]]
        return out


def read_acks(config: ChaosConfig, out: Path) -> Expected:
    """Expected state from the writers' ack logs."""
    exp = Expected()
    for w in range(config.writers):
        last_chunk, end = -1, None
        path = out / f"writer-{w}.acks"
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            record = json.loads(line)
            if "chunk" in record:
                last_chunk = max(last_chunk, int(record["chunk"]))
            else:
                end = record
        steps = min((last_chunk + 1) * config.chunk_steps, config.steps)
        for r in range(config.runs_per_writer):
            run_id = config.run_id(w, r)
            exp.where[run_id] = (w, r)
            exp.steps[run_id] = steps
            exp.late_tag[run_id] = last_chunk >= config.chunks // 2
            exp.finished[run_id] = bool(end and end["ended"])
        if end is not None:
            exp.writers_ended += bool(end["ended"])
            for name in ("acked_events", "rejected_events", "spooled_events"):
                exp.sdk[name] += int(end[name])
    return exp


# --- waiting for the stores to settle ----------------------------------------------------------


async def _pg_view(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        latest = await conn.fetch(
            "SELECT run_id, key, step, value FROM latest_metrics WHERE tenant_id = $1", TENANT
        )
        runs = await conn.fetch("SELECT run_id, status FROM runs WHERE tenant_id = $1", TENANT)
        params = await conn.fetch("SELECT run_id, key, value FROM params WHERE tenant_id = $1", TENANT)
        tags = await conn.fetch("SELECT run_id, key, value FROM tags WHERE tenant_id = $1", TENANT)
        findings = await conn.fetch(
            "SELECT event_id::text AS event_id, run_id, kind, body->>'key' AS key,"
            " (body->>'step')::bigint AS step FROM findings WHERE tenant_id = $1",
            TENANT,
        )
        applied = await conn.fetchval("SELECT count(*) FROM applied_events")
    finally:
        await conn.close()
    return {
        "latest": {(r["run_id"], r["key"]): (r["step"], r["value"]) for r in latest},
        "runs": {r["run_id"]: r["status"] for r in runs},
        "params": {(r["run_id"], r["key"]): r["value"] for r in params},
        "tags": {(r["run_id"], r["key"]): r["value"] for r in tags},
        "findings": [dict(r) for r in findings],
        "applied_events": int(applied),
    }


def _settled(view: dict[str, Any], exp: Expected, config: ChaosConfig) -> bool:
    last = {run_id: n - 1 for run_id, n in exp.steps.items() if n}
    for run_id, step in last.items():
        for key in config.key_names():
            if view["latest"].get((run_id, key), (None,))[0] != step:
                return False
        if exp.finished[run_id] and view["runs"].get(run_id) != "FINISHED":
            return False
    found = {(f["run_id"], f["key"], f["kind"], f["step"]) for f in view["findings"]}
    return all((p.run_id, p.key, p.kind, p.step) in found for p in exp.planted(config))


def wait_settled(dsn: str, exp: Expected, config: ChaosConfig, timeout: float) -> float:
    """Wait until PostgreSQL shows every acknowledged point and planted finding (or the
    timeout), then a quiet period with no new finding; return the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if _settled(asyncio.run(_pg_view(dsn)), exp, config):
            break
        time.sleep(1.0)
    # Findings of a replay would come late: the analysis must be idle and stay so.
    before = -1
    while time.monotonic() < deadline:
        n = len(asyncio.run(_pg_view(dsn))["findings"])
        if n == before:
            break
        before = n
        time.sleep(6.0)  # > the analysis checkpoint interval
    return time.monotonic() - started


# --- the comparison ----------------------------------------------------------------------------


def verify_postgres(dsn: str, exp: Expected, config: ChaosConfig) -> dict[str, Any]:
    """Runs, params, tags, latest_metrics and findings against the acknowledged state."""
    view = asyncio.run(_pg_view(dsn))
    latest_bad, params_bad, tags_bad, status_bad = [], [], [], []
    keys = config.key_names()
    for run_id, n in exp.steps.items():
        w, r = exp.where[run_id]
        if n == 0:
            continue
        for k, key in enumerate(keys):
            want = (n - 1, float(series(config, w, r, k)[n - 1]))
            if view["latest"].get((run_id, key)) != want:
                latest_bad.append(
                    {"run": run_id, "key": key, "want": want, "got": view["latest"].get((run_id, key))}
                )
        want_params = {"seed": str(config.seed), "writer": str(w), "run": str(r), "lr": str(0.001 * (r + 1))}
        got_params = {k: v for (rid, k), v in view["params"].items() if rid == run_id}
        if got_params != want_params:
            params_bad.append({"run": run_id, "want": want_params, "got": got_params})
        want_tags = {"writer": str(w), "phase": "late" if exp.late_tag[run_id] else "early"}
        got_tags = {k: v for (rid, k), v in view["tags"].items() if rid == run_id and k in want_tags}
        if got_tags != want_tags:
            tags_bad.append({"run": run_id, "want": want_tags, "got": got_tags})
        want_status = "FINISHED" if exp.finished[run_id] else "RUNNING"
        if view["runs"].get(run_id) != want_status:
            status_bad.append({"run": run_id, "want": want_status, "got": view["runs"].get(run_id)})
    findings = verify_findings(view["findings"], exp.planted(config))
    return {
        "runs_expected": sum(1 for n in exp.steps.values() if n),
        "runs_found": len(view["runs"]),
        "latest_mismatches": latest_bad,
        "params_mismatches": params_bad,
        "tags_mismatches": tags_bad,
        "status_mismatches": status_bad,
        "applied_events": view["applied_events"],
        "findings": findings,
    }


# Findings across runs (a run's curve against its siblings'): a planted spike may make its
# run an outlier, depending on how far the siblings had got when it arrived, so they are not
# planted; each may still be reported once per series at most.
COHORT_KINDS = frozenset({"outlier_run"})


def verify_findings(rows: list[dict[str, Any]], expected: list[Planted]) -> dict[str, Any]:
    """Each planted anomaly exactly once; no repeated id; nothing else but cohort findings,
    at most one per (run, key, kind)."""
    ids = Counter(str(r["event_id"]) for r in rows)
    by_what = Counter((r["run_id"], r["key"], r["kind"], r["step"]) for r in rows)
    cohort = Counter((r["run_id"], r["key"], r["kind"]) for r in rows if r["kind"] in COHORT_KINDS)
    want = {(p.run_id, p.key, p.kind, p.step) for p in expected}
    return {
        "expected": len(want),
        "found": sum(1 for w in want if by_what[w] >= 1),
        "missing": sorted(str(w) for w in want if by_what[w] == 0),
        "duplicated": sorted(str(w) for w, n in by_what.items() if n > 1)
        + sorted(i for i, n in ids.items() if n > 1)
        + sorted(str(w) for w, n in cohort.items() if n > 1),
        "unexpected": sorted(str(w) for w in by_what if w not in want and w[2] not in COHORT_KINDS),
        "cohort": sorted(str(w) for w in by_what if w[2] in COHORT_KINDS),
        "total_rows": len(rows),
    }


def verify_api(url: str, token: str, exp: Expected, config: ChaosConfig) -> dict[str, Any]:
    """The findings as GET /api/v1/anomalies shows them, per run."""
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        for run_id in exp.steps:
            params: dict[str, Any] = {"run_id": run_id, "page_size": 100}
            while True:
                body = client.get("/api/v1/anomalies", params=params).raise_for_status().json()
                rows += [
                    {
                        "event_id": a["event_id"],
                        "run_id": a["run_id"],
                        "kind": a["kind"],
                        "key": a["key"],
                        "step": a["step"],
                    }
                    for a in body["anomalies"]
                ]
                if not body.get("next_page_token"):
                    break
                params["page_token"] = body["next_page_token"]
    return verify_findings(rows, exp.planted(config))


def verify_clickhouse(path: Path, exp: Expected, config: ChaosConfig) -> dict[str, Any]:
    """metric_points per series (counts, checksums), the rollup buckets, the event archive."""
    ch = ChdbClickHouse(path)
    try:
        rows = ch.query_arrow(
            "SELECT run_id, key, count() AS n, groupUniqArray(step) AS steps,"
            " toString(sum(toUInt128(reinterpretAsUInt64(value)) * toUInt128(step + 1))) AS checksum"
            " FROM runledger.metric_points WHERE tenant_id = {t:String} GROUP BY run_id, key",
            {"t": TENANT},
        ).to_pylist()
        rollup = ch.query_arrow(
            "SELECT run_id, key, bucket, min(min_value) AS lo, max(max_value) AS hi"
            " FROM runledger.metric_rollup WHERE tenant_id = {t:String}"
            " GROUP BY run_id, key, bucket ORDER BY run_id, key, bucket",
            {"t": TENANT},
        ).to_pylist()
        archive = ch.query_arrow(
            "SELECT count() AS n, uniqExact(event_id) AS distinct_ids FROM runledger.events_archive"
        ).to_pylist()[0]
    finally:
        ch.close()
    got = {(r["run_id"], r["key"]): r for r in rows}
    buckets: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for b in rollup:
        buckets.setdefault((b["run_id"], b["key"]), []).append((b["bucket"], b["lo"], b["hi"]))
    lost = duplicated = extra = stored = 0
    bad_series, bad_rollup = [], []
    for run_id, n in exp.steps.items():
        w, r = exp.where[run_id]
        for k, key in enumerate(config.key_names()):
            row = got.pop((run_id, key), None)
            values = series(config, w, r, k)[:n]
            if row is None:
                lost += n
                if n:
                    bad_series.append({"run": run_id, "key": key, "want": n, "got": 0})
                continue
            steps = np.asarray(row["steps"], dtype=np.int64)
            stored += row["n"]
            duplicated += row["n"] - len(steps)
            lost += n - int(np.count_nonzero(steps < n))
            extra += int(np.count_nonzero(steps >= n))
            if (row["n"], len(steps), int(row["checksum"])) != (n, n, checksum(values)):
                bad_series.append(
                    {"run": run_id, "key": key, "want": n, "got": row["n"], "distinct": len(steps)}
                )
            if buckets.get((run_id, key), []) != _rollup(values):
                bad_rollup.append({"run": run_id, "key": key})
    for (run_id, key), row in got.items():  # series nobody was acknowledged for
        extra += row["n"]
        bad_series.append({"run": run_id, "key": key, "want": 0, "got": row["n"]})
    return {
        "points_stored": stored,
        "points_lost": lost,
        "points_duplicated": duplicated,
        "points_extra": extra,
        "series_mismatched": bad_series,
        "rollup_mismatched": bad_rollup,
        "archive_events": archive["n"],
        "archive_distinct_events": archive["distinct_ids"],
    }


def _rollup(values: np.ndarray[Any, Any]) -> list[tuple[int, float, float]]:
    """The expected rollup of one series: (bucket, min, max) of the finite values."""
    out = []
    for start in range(0, len(values), ROLLUP_STEPS):
        chunk = values[start : start + ROLLUP_STEPS]
        finite = chunk[np.isfinite(chunk)]
        if len(finite):
            out.append((start // ROLLUP_STEPS, float(finite.min()), float(finite.max())))
    return out
