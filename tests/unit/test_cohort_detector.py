"""The cohort detector: outlier_run and cross-run level_shift (runledger.analysis.cohort)."""

from __future__ import annotations

import numpy as np
import orjson

from bench.cohort_data import Cohort, cohort
from runledger.analysis.cohort import CohortDetector
from runledger.analysis.detection import Anomaly, DetectorConfig

CFG = DetectorConfig()
Runs = dict[str, tuple[np.ndarray, np.ndarray]]


def _loss(n: int = 400, seed: int = 0, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    clean = (0.5 + 2.0 * np.exp(-t / 150)) * (1 + 0.02 * rng.standard_normal())
    return np.arange(1, n + 1, dtype=np.int64), clean * (1 + noise * rng.standard_normal(n))


def _feed(d: CohortDetector, runs: Runs, chunk: int = 1, finish: bool = True) -> list[tuple[str, Anomaly]]:
    """Interleaved, ``chunk`` points per run per tick (a fleet), then every run finishes."""
    out: list[tuple[str, Anomaly]] = []
    n = max(len(s) for s, _ in runs.values())
    for lo in range(0, n, chunk):
        for rid, (st, va) in runs.items():
            if lo < len(st):
                out += d.update(rid, st[lo : lo + chunk], va[lo : lo + chunk])
    if finish:
        for rid in runs:
            out += d.finish(rid)
    return out


def _with_jump(runs: Runs, rid: str, at: int, factor: float) -> Runs:
    st, v = runs[rid]
    v = v.copy()
    v[at:] *= factor
    return {**runs, rid: (st, v)}


def test_curve_departure_flagged_within_a_few_points_once() -> None:
    runs = _with_jump({f"r{i}": _loss(seed=i) for i in range(8)}, "r3", 200, 1.6)
    for chunk in (1, 7, 50):  # scalar and batch paths
        found = _feed(CohortDetector("val/loss", CFG), runs, chunk)
        assert [(r, a.kind, a.evidence["basis"]) for r, a in found] == [("r3", "outlier_run", "curve")]
        a = found[0][1]
        assert a.step == 201  # the onset: the first point after the jump (steps start at 1)
        assert 201 <= a.evidence["detected_at_step"] <= 205
        assert 0.5 < a.severity < 1 and a.evidence["robust_z"] > CFG.cohort_threshold
        assert "sibling runs" in a.evidence["message"]


def test_better_run_is_an_outlier_too_and_needs_min_siblings() -> None:
    runs = _with_jump({f"r{i}": _loss(seed=i) for i in range(8)}, "r1", 150, 0.5)
    assert [r for r, _ in _feed(CohortDetector("loss", CFG), runs)] == ["r1"]
    few = _with_jump({f"r{i}": _loss(seed=i) for i in range(5)}, "r0", 100, 3.0)  # 4 siblings
    assert _feed(CohortDetector("loss", CFG), few) == []


def test_final_value_outlier_judged_on_finish() -> None:
    runs = {f"r{i}": _loss(seed=i) for i in range(8)}
    st, v = runs["r5"]
    v = v.copy()
    v[-3:] *= 2.0  # only the last 3 points: the median of the last 5 moves
    runs["r5"] = (st, v)
    d = CohortDetector("val/loss", CFG)
    found = _feed(d, runs, chunk=400, finish=False)  # whole runs at once (the curve check may see it)
    found += [f for rid in runs for f in d.finish(rid)]
    assert [r for r, _ in found] == ["r5"]
    # a run that ran (and finished) before its siblings is judged once enough siblings of a
    # comparable length have finished
    d = CohortDetector("val/loss", CFG)
    assert d.update("r5", st, v) == [] and d.finish("r5") == []
    found = []
    for rid in [r for r in runs if r != "r5"]:
        found += d.update(rid, *runs[rid])
        found += d.finish(rid)
    assert [(r, a.evidence["basis"]) for r, a in found] == [("r5", "final")]
    assert found[0][1].step == 400 and "final value" in found[0][1].evidence["message"]


def test_runs_of_other_lengths_are_not_final_outliers() -> None:
    runs = {f"r{i}": _loss(n=400 if i < 6 else 150, seed=i) for i in range(9)}
    assert _feed(CohortDetector("loss", CFG), runs, chunk=5) == []


def _sequential(d: CohortDetector, finals: list[float], seed: int = 0) -> list[tuple[str, Anomaly]]:
    """Runs one after another, each converging to its final level."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Anomaly]] = []
    t = np.arange(200, dtype=np.float64)
    for i, level in enumerate(finals):
        v = (level + 2.0 * np.exp(-t / 30)) * (1 + 0.01 * rng.standard_normal(200))
        out += d.update(f"n{i:02d}", np.arange(1, 201), v)
        out += d.finish(f"n{i:02d}")
    return out


def test_cross_run_level_shift_once_with_run_lists() -> None:
    rng = np.random.default_rng(1)
    finals = list(0.5 * (1 + 0.01 * rng.standard_normal(12))) + list(
        0.6 * (1 + 0.01 * rng.standard_normal(14))
    )
    d = CohortDetector("val/loss", CFG)
    found = [(r, a) for r, a in _sequential(d, finals) if a.kind == "level_shift"]
    assert len(found) == 1
    rid, a = found[0]
    ev = a.evidence
    assert rid == "n14" and ev["scope"] == "runs"
    assert ev["candidate_run_ids"] == ["n12", "n13", "n14"]
    assert ev["baseline_run_ids"] == [f"n{i:02d}" for i in range(12)]
    assert 0.08 < ev["shift"] < 0.12 and ev["robust_z"] > 5 and ev["message"]


def test_one_outlier_run_is_not_a_level_shift_and_drift_back_rearms() -> None:
    rng = np.random.default_rng(2)
    finals = list(0.5 * (1 + 0.01 * rng.standard_normal(20)))
    finals[12] = 0.7  # one bad run
    assert [a.kind for _, a in _sequential(CohortDetector("loss", CFG), finals)].count("level_shift") == 0
    # up, then (after the new level became the baseline) back down: two shifts
    finals = [0.5] * 10 + [0.6] * 14 + [0.5] * 6
    finals = [f * (1 + 0.01 * x) for f, x in zip(finals, rng.standard_normal(len(finals)), strict=True)]
    shifts = [a for _, a in _sequential(CohortDetector("loss", CFG), finals) if a.kind == "level_shift"]
    assert [s.evidence["candidate_run_ids"][0] for s in shifts] == ["n10", "n24"]


def _round_trip(d: CohortDetector) -> CohortDetector:
    members = orjson.loads(orjson.dumps(d.members()))
    return CohortDetector.from_members(d.key, d.config, members)


def test_member_state_round_trip_gives_identical_findings() -> None:
    rng = np.random.default_rng(7)
    for kind in ("curve", "final", "shift", "clean"):
        c = cohort(rng, kind)
        ref = CohortDetector(c.key, CFG)
        expected: list[tuple[str, Anomaly]] = []
        for rid, lo, hi in c.events:
            expected += (
                ref.finish(rid) if hi < 0 else ref.update(rid, c.steps[rid][lo:hi], c.values[rid][lo:hi])
            )
        n = len(c.events)
        for split in (n // 5, n // 2, 4 * n // 5):
            d = CohortDetector(c.key, CFG)
            got: list[tuple[str, Anomaly]] = []
            for i, (rid, lo, hi) in enumerate(c.events):
                if i == split:
                    d = _round_trip(d)
                got += d.finish(rid) if hi < 0 else d.update(rid, c.steps[rid][lo:hi], c.values[rid][lo:hi])
            assert got == expected, (kind, split)


def test_dirty_members_are_enough_to_restore() -> None:
    runs = _with_jump({f"r{i}": _loss(seed=i) for i in range(8)}, "r2", 300, 1.5)
    d = CohortDetector("loss", CFG)
    stored: dict[str, dict[str, object]] = {}
    found: list[tuple[str, Anomaly]] = []
    for lo in range(0, 400, 10):
        for rid, (st, va) in runs.items():
            found += d.update(rid, st[lo : lo + 10], va[lo : lo + 10])
        for rid, state in orjson.loads(orjson.dumps(d.take_dirty_members())).items():
            assert state is not None
            stored[rid] = state
        if lo == 250:  # a restart: rebuild from what was stored
            d = CohortDetector.from_members("loss", CFG, stored)
    assert d.take_dirty_members() == {}
    assert [r for r, _ in found] == ["r2"]


def test_member_cap_forgets_least_recently_updated() -> None:
    d = CohortDetector("loss", CFG.with_overrides({"cohort_max_runs": 10}))
    for i in range(30):
        d.update(f"r{i}", *_loss(n=50, seed=i))
    d.update("r25", np.array([51]), np.array([0.5]))
    d.update("r30", *_loss(n=50, seed=30))
    members = d.members()
    assert len(members) == 10 and "r25" in members and "r20" not in members and "r21" in members
    dirty = d.take_dirty_members()
    assert dirty["r0"] is None and dirty["r20"] is None and dirty["r30"] is not None
    # the forgotten members no longer count: a rebuild from the kept ones agrees
    again = CohortDetector.from_members("loss", d.config, members)
    assert again.members() == members


def test_member_state_is_small() -> None:
    d = CohortDetector("val/loss", CFG)
    rng = np.random.default_rng(0)
    for i in range(6):
        n = 20_000
        st = np.arange(1, n + 1, dtype=np.int64)
        d.update(f"r{i}", st, 0.5 + 2 * np.exp(-st / 4000) + 0.01 * rng.standard_normal(n))
    d.finish("r0")
    for state in d.members().values():
        assert len(orjson.dumps(state)) <= 480  # ~460 + the residual EWMA of a run being judged


def test_clean_cohorts_are_silent() -> None:
    rng = np.random.default_rng(3)
    for _ in range(8):
        c = cohort(rng, "clean")
        d = CohortDetector(c.key, CFG)
        for rid, lo, hi in c.events:
            assert (
                d.finish(rid) if hi < 0 else d.update(rid, c.steps[rid][lo:hi], c.values[rid][lo:hi])
            ) == []


def test_replays_nan_and_unknown_runs_are_ignored() -> None:
    d = CohortDetector("loss", CFG)
    assert d.update("a", np.array([1, 2]), np.array([1.0, np.nan])) == []
    assert d.update("a", np.array([1, 2]), np.array([5.0, 5.0])) == []  # step 1 replayed
    assert d.members()["a"]["ts"] == [1, 1]  # steps 1, 2: the first and the increments
    assert d.finish("nobody") == []
    assert d.finish("a") == [] and d.finish("a") == []


def _fleet_events(c: Cohort, chunk: int) -> list[tuple[str, int, int]]:
    """Every run from the start, ``chunk`` points per run per tick, finish after its last point."""
    events: list[tuple[str, int, int]] = []
    n = max(len(s) for s in c.steps.values())
    for lo in range(0, n, chunk):
        for rid, st in c.steps.items():
            if lo < len(st):
                events.append((rid, lo, min(lo + chunk, len(st))))
                if lo + chunk >= len(st):
                    events.append((rid, lo, -1))
    return events


def _found(
    d: CohortDetector, c: Cohort, events: list[tuple[str, int, int]], split: int
) -> list[tuple[object, ...]]:
    """Findings when every update event is cut into calls of ``split`` points (0: as is)."""
    out: list[tuple[str, Anomaly]] = []
    for rid, lo, hi in events:
        if hi < 0:
            out += d.finish(rid)
            continue
        step = split or hi - lo
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            out += d.update(rid, c.steps[rid][a:b], c.values[rid][a:b])
    return [
        (
            r,
            a.kind,
            a.step,
            a.evidence["detected_at_step"],
            a.evidence.get("basis"),
            round(a.evidence["robust_z"], 4),
        )
        for r, a in out
    ]


def test_same_findings_however_points_are_chunked() -> None:
    """The vectorised batch path, the small-call path and the one-point path judge alike."""
    seen = 0
    for seed in (11, 12):
        rng = np.random.default_rng(seed)
        for kind in ("curve", "final", "shift", "clean"):
            c = cohort(rng, kind)
            events = _fleet_events(c, 40)  # 40 points per call: the batch path
            want = _found(CohortDetector(c.key, CFG), c, events, 0)
            for split in (1, 7):  # one point per call, then small calls
                assert _found(CohortDetector(c.key, CFG), c, events, split) == want, (seed, kind, split)
            seen += len(want)
    assert seen >= 4  # the plants were found, so the comparison compared findings


def test_run_ahead_of_its_siblings_is_judged_when_they_catch_up() -> None:
    runs = _with_jump({f"r{i}": _loss(seed=i) for i in range(8)}, "r3", 200, 1.6)
    d = CohortDetector("val/loss", CFG)
    st, va = runs["r3"]
    assert d.update("r3", st, va) == []  # the whole run first: no sibling has data yet
    assert d.members()["r3"]["k"][0] >= 0  # marked for a recheck
    found: list[tuple[str, Anomaly]] = []
    at = -1
    for lo in range(0, 400, 5):
        for rid in [r for r in runs if r != "r3"]:
            got = d.update(rid, runs[rid][0][lo : lo + 5], runs[rid][1][lo : lo + 5])
            if got and at < 0:
                at = lo + 5
            found += got
    assert [(r, a.kind, a.evidence["basis"]) for r, a in found] == [("r3", "outlier_run", "curve")]
    a = found[0][1]
    assert 190 <= a.step <= 201  # the onset: the first step of the fine bin holding the jump
    # the end of the bin or bucket (below the run's ring: 4 fine bins) whose mean made it certain
    assert 201 <= a.evidence["detected_at_step"] <= 260 and a.evidence["reported_at_step"] == 400
    assert at <= 240  # reported soon after the siblings passed the jump
    assert "siblings reached" in a.evidence["message"]
    assert "k" not in d.members()["r3"]  # the marker is cleared once flagged


def test_recheck_marker_survives_a_restore() -> None:
    runs = _with_jump({f"r{i}": _loss(seed=i) for i in range(8)}, "r3", 200, 1.6)
    found = {}
    for restore_at in (-1, 100, 195):
        d = CohortDetector("val/loss", CFG)
        d.update("r3", *runs["r3"])
        got: list[tuple[str, Anomaly]] = []
        for lo in range(0, 400, 5):
            if lo == restore_at:
                d = _round_trip(d)
            for rid in [r for r in runs if r != "r3"]:
                got += d.update(rid, runs[rid][0][lo : lo + 5], runs[rid][1][lo : lo + 5])
        found[restore_at] = got
    assert found[100] == found[-1] and found[195] == found[-1] and len(found[-1]) == 1


def test_clean_run_ahead_of_its_siblings_is_not_flagged() -> None:
    runs = {f"r{i}": _loss(seed=i, noise=0.03) for i in range(8)}
    d = CohortDetector("val/loss", CFG)
    assert d.update("r0", *runs["r0"]) == [] and d.finish("r0") == []
    assert _feed(d, {r: v for r, v in runs.items() if r != "r0"}, chunk=3) == []
    assert "k" not in d.members()["r0"]  # rechecked to its end, then the marker cleared


def _slow_departure(slope: float = 0.003) -> Runs:
    """Quiet siblings (1% noise); r3 is noisy (8%: its bars are raised well above the threshold)
    and drifts up by ``slope`` of its level per point from step 101 (30%, 6 spreads, by ~200)."""
    runs = {f"r{i}": _loss(seed=i, noise=0.01) for i in range(8)}
    st, v = _loss(seed=3, noise=0.08)
    t = np.arange(len(st), dtype=np.float64)
    runs["r3"] = (st, v * (1 + slope * np.clip(t - 100, 0, None)))
    return runs


def test_slow_departure_of_a_noisy_run_is_reported_near_where_it_crossed() -> None:
    # the smoothed deviation of r3 crosses the threshold around step 175 and hovers there; its
    # noise holds certainty back to ~240. The onset reported is where the deviation crossed (was
    # the first point of the confirming streak: 236 or later)
    runs = _slow_departure()
    for chunk in (1, 7, 50):  # scalar and batch paths
        found = _feed(CohortDetector("val/loss", CFG), runs, chunk)
        assert [(r, a.evidence["basis"]) for r, a in found] == [("r3", "curve")], chunk
        a = found[0][1]
        assert a.evidence["detected_at_step"] >= 230  # certain late ...
        assert 160 <= a.step <= 205, (chunk, a.step)  # ... the onset near the crossing


def test_heavy_tailed_noise_of_clean_siblings_is_not_an_outlier() -> None:
    # every run has wild points (20-60 spreads, the tail of heavy-tailed noise), some of them
    # the first point after the reference was missing; a single wild point moved the drift
    # test's EWMA past its bar for three points and confirmed a clean run
    runs: Runs = {}
    for i in range(10):
        st, v = _loss(seed=20 + i, noise=0.03)
        rng = np.random.default_rng(100 + i)
        wild = rng.choice(len(st), 6, replace=False)
        v = v.copy()
        v[wild] *= 1 + rng.uniform(1.0, 3.0, 6) * rng.choice([-0.3, 1.0], 6)
        runs[f"r{i}"] = (st, v)
    for chunk in (1, 7, 50):
        assert _feed(CohortDetector("val/loss", CFG), runs, chunk) == [], chunk


def test_state_without_the_onset_estimate_loads() -> None:
    """Member states saved before the onset estimate (no "e") load without one; with it, a
    restore keeps it (the same findings as without the restore)."""
    runs = _slow_departure()
    d = CohortDetector("val/loss", CFG)
    _feed(d, {r: (s[:200], x[:200]) for r, (s, x) in runs.items()}, chunk=5, finish=False)
    members = orjson.loads(orjson.dumps(d.members()))
    assert "e" in members["r3"]  # r3 is past the threshold, not yet certain
    old = {rid: {k: x for k, x in m.items() if k != "e"} for rid, m in members.items()}
    assert "e" not in CohortDetector.from_members("val/loss", CFG, old).members()["r3"]
    rest = {r: (s[200:], x[200:]) for r, (s, x) in runs.items()}
    want = _feed(d, rest, chunk=5)
    assert _feed(CohortDetector.from_members("val/loss", CFG, members), rest, chunk=5) == want
    got_old = _feed(CohortDetector.from_members("val/loss", CFG, old), rest, chunk=5)
    assert [r for r, _ in got_old] == ["r3"] and got_old[0][1].step > want[0][1].step


def test_onset_of_a_jump_is_not_moved_by_one_point_of_noise() -> None:
    # r3 jumps 60% at step 201, but its point at step 202 happens to sit at the old level: the
    # raw streak that confirms starts at 203; the departure began at 201 (the point before the
    # one-point break was beyond the bar too)
    runs = _with_jump({f"r{i}": _loss(seed=i) for i in range(8)}, "r3", 200, 1.6)
    st, v = runs["r3"]
    v = v.copy()
    v[201] /= 1.6
    runs["r3"] = (st, v)
    for chunk in (1, 7, 50):  # scalar and batch paths
        found = _feed(CohortDetector("val/loss", CFG), runs, chunk)
        assert [(r, a.step, a.evidence["detected_at_step"]) for r, a in found] == [("r3", 201, 205)], chunk


def test_slow_departure_of_a_quiet_run_is_reported_where_it_reached_six_spreads() -> None:
    # r3 (as quiet as its siblings) drifts up 0.3% of its level per point from step 101; its
    # noise-free curve is 6 sibling spreads (the 5% floor here) from their median at step 186.
    # The onset is where its smoothed deviation reached the threshold in the siblings' own spread
    # (the line's uncertainty widens the spread the tests judge with, by 5-10%: measured with
    # it, the crossing came ~10 points late), dated back by the EWMA's lag
    runs = {f"r{i}": _loss(seed=i, noise=0.01) for i in range(8)}
    st, v = _loss(seed=3, noise=0.01)
    t = np.arange(len(st), dtype=np.float64)
    runs["r3"] = (st, v * (1 + 0.003 * np.clip(t - 100, 0, None)))
    for chunk in (1, 7, 50):
        found = _feed(CohortDetector("val/loss", CFG), runs, chunk)
        assert [r for r, _ in found] == ["r3"], chunk
        assert 181 <= found[0][1].step <= 191, (chunk, found[0][1].step)
