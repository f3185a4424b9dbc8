"""The outlier_run detector over sibling runs (runledger.analysis.cohort)."""

from __future__ import annotations

import numpy as np
import orjson

from bench.anomaly_data import experiment
from runledger.analysis.cohort import CohortDetector
from runledger.analysis.detection import Anomaly, DetectorConfig

CFG = DetectorConfig()


def _loss(n: int = 400, seed: int = 0, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    clean = 0.5 + 2.0 * np.exp(-t / 150)
    return np.arange(1, n + 1, dtype=np.int64), clean * (1 + noise * rng.standard_normal(n))


def _feed_cohort(
    d: CohortDetector, runs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> list[tuple[str, Anomaly]]:
    out: list[tuple[str, Anomaly]] = []
    n = len(next(iter(runs.values()))[0])
    for lo in range(0, n, 50):
        for rid, (st, va) in runs.items():
            out += d.update(rid, st[lo : lo + 50], va[lo : lo + 50])
    for rid in runs:
        out += d.finish(rid)
    return out


def test_cohort_curve_outlier_once() -> None:
    runs = {f"r{i}": _loss(seed=i) for i in range(8)}
    steps, v = runs["r3"]
    runs["r3"] = (steps, v * 1.6)
    found = _feed_cohort(CohortDetector("val/loss", CFG), runs)
    assert [(r, a.kind, a.evidence["basis"]) for r, a in found] == [("r3", "outlier_run", "curve")]


def test_cohort_final_value_outlier_and_state() -> None:
    runs = {f"r{i}": _loss(seed=i) for i in range(8)}
    steps, v = runs["r5"]
    v = v.copy()
    v[-3:] *= 2.0  # only the end differs: caught on completion
    runs["r5"] = (steps, v)
    d = CohortDetector("val/loss", CFG)
    for rid, (st, va) in runs.items():
        assert d.update(rid, st, va) == []
    d = CohortDetector.from_state("val/loss", CFG, orjson.loads(orjson.dumps(d.to_state())))
    found: list[tuple[str, Anomaly]] = []
    for rid in runs:
        found += d.finish(rid)
    assert [(r, a.evidence["basis"]) for r, a in found] == [("r5", "final")]


def test_cohort_needs_min_siblings_and_caps_runs() -> None:
    runs = {f"r{i}": _loss(seed=i) for i in range(4)}
    runs["r0"] = (runs["r0"][0], runs["r0"][1] * 3)
    assert _feed_cohort(CohortDetector("loss", CFG), runs) == []
    d = CohortDetector("loss", CFG.with_overrides({"cohort_max_runs": 10}))
    for i in range(30):
        d.update(f"r{i}", *_loss(n=50, seed=i))
    assert len(d.runs) == 10


def test_cohort_clean_experiments_have_no_findings() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        ex = experiment(rng, with_outlier=False)
        d = CohortDetector(ex.key, CFG)
        runs = {rid: (s.steps, s.values) for rid, s in ex.runs.items()}
        assert _feed_cohort(d, runs) == []
