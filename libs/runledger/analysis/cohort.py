"""``outlier_run``: a run whose curve or final value is far from its siblings' (numpy only, no I/O).

A :class:`CohortDetector` watches the sibling runs of one (experiment, metric key); the
per-series detectors are in :mod:`runledger.analysis.detection`, whose conventions
(direction, robust noise units, severity, one finding per incident) apply here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from runledger.analysis.detection import STATE_VERSION, Anomaly, DetectorConfig, _fmt, _severity

# --------------------------------------------------------------------------- cohort detector

_FINAL_TAIL = 5  # the final value of a run is the median of its last 5 finite points


class CohortDetector:
    """``outlier_run`` among the sibling runs of one (experiment, metric key).

    Per run the state keeps a log-spaced curve summary: the mean of the values whose step falls
    in bucket ``floor(buckets_per_octave * log2(step + 1))`` (<= ~130 buckets for any step
    count, fine early where curves differ most, coarse late), plus the last 5 values.

    - Curve: when a run moves past a bucket, that bucket's mean is compared with the same
      bucket of the other runs that have it (at least ``cohort_min_runs`` of them): robust
      z = (mean - median) / max(1.4826 * MAD, cohort_rel_floor * |median|). ``cohort_confirm_buckets``
      consecutive buckets past ``cohort_threshold`` flag the run. A bucket that cannot be judged
      yet (too few siblings have it) is judged later, when any run of the cohort finishes.
    - Final value: on :meth:`finish` the run's final value (median of its last 5 points) is
      compared with the final values of the finished siblings the same way (one value suffices).
    - Both directions count (a run far better than its siblings is an outlier too).
    - A run is flagged at most once per key. At most ``cohort_max_runs`` runs are kept: the
      least recently updated run is forgotten first (it then stops counting as a sibling).
    """

    def __init__(self, key: str, config: DetectorConfig) -> None:
        self.key = key
        self.config = config
        self.seq = 0
        self.runs: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ public API

    def update(self, run_id: str, steps: npt.ArrayLike, values: npt.ArrayLike) -> list[tuple[str, Anomaly]]:
        """Feed new points of one run; returns (run_id, anomaly) findings."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        va = np.asarray(values, dtype=np.float64).ravel()
        if st.shape != va.shape:
            raise ValueError(f"steps and values differ in length: {st.shape} vs {va.shape}")
        run = self._run(run_id)
        prev = np.int64(run["last_step"] if run["last_step"] is not None else -1)
        running = np.maximum.accumulate(np.concatenate([[prev], st]))[:-1] if len(st) else st
        keep = (st > running) & np.isfinite(va) & (st >= 0)
        st, va = st[keep], va[keep]
        if len(st) == 0:
            return []
        run["last_step"] = int(st[-1])
        run["tail"] = (run["tail"] + va[-_FINAL_TAIL:].tolist())[-_FINAL_TAIL:]
        bpo = self.config.cohort_buckets_per_octave
        bk = np.floor(bpo * np.log2(st.astype(np.float64) + 1.0)).astype(np.int64)
        ub, inv = np.unique(bk, return_inverse=True)
        sums = np.bincount(inv, weights=va)
        counts = np.bincount(inv)
        last = np.zeros(len(ub), dtype=np.int64)
        np.maximum.at(last, inv, st)
        buckets = run["b"]
        for b, sm, cn, ls in zip(ub.tolist(), sums.tolist(), counts.tolist(), last.tolist(), strict=True):
            cur = buckets.get(str(b))
            buckets[str(b)] = [sm, cn, ls] if cur is None else [cur[0] + sm, cur[1] + cn, ls]
        run["open"] = int(ub[-1])
        self._touch(run_id)
        out: list[tuple[str, Anomaly]] = []
        self._judge_curve(run_id, out)
        return out

    def finish(self, run_id: str) -> list[tuple[str, Anomaly]]:
        """The run ended: judge its final value, and whatever could not be judged before."""
        run = self._run(run_id)
        run["finished"] = True
        run["open"] = None  # every bucket of a finished run is complete
        self._touch(run_id)
        out: list[tuple[str, Anomaly]] = []
        for rid in list(self.runs):
            self._judge_curve(rid, out)
        for rid, r in list(self.runs.items()):
            if r["finished"] and not r["final_judged"]:
                self._judge_final(rid, out)
        return out

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable state, bounded by cohort_max_runs x ~130 buckets."""
        return {"v": STATE_VERSION, "seq": self.seq, "runs": self.runs}

    @classmethod
    def from_state(cls, key: str, config: DetectorConfig, state: dict[str, Any]) -> CohortDetector:
        """Restore a detector saved by :meth:`to_state`."""
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported cohort state version {state.get('v')!r}")
        d = cls(key, config)
        d.seq = int(state["seq"])
        d.runs = {str(k): dict(v) for k, v in state["runs"].items()}
        return d

    # ------------------------------------------------------------------ internals

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            run = {
                "b": {},
                "open": None,
                "last_step": None,
                "tail": [],
                "checked": -1,
                "streak": 0,
                "streak_step": None,
                "flagged": False,
                "finished": False,
                "final_judged": False,
                "seq": 0,
            }
            self.runs[run_id] = run
        return run

    def _touch(self, run_id: str) -> None:
        self.seq += 1
        self.runs[run_id]["seq"] = self.seq
        if len(self.runs) > self.config.cohort_max_runs:
            oldest = min(self.runs, key=lambda r: self.runs[r]["seq"])
            del self.runs[oldest]

    def _robust_z(self, value: float, others: list[float]) -> tuple[float, float, float]:
        arr = np.asarray(others, dtype=np.float64)
        med = float(np.median(arr))
        mad = float(np.median(np.abs(arr - med))) * 1.4826
        scale = max(mad, self.config.cohort_rel_floor * abs(med), 1e-12)
        return (value - med) / scale, med, scale

    def _judge_curve(self, run_id: str, out: list[tuple[str, Anomaly]]) -> None:
        c = self.config
        run = self.runs.get(run_id)
        if run is None or run["flagged"] or "outlier_run" not in c.enabled_kinds:
            return
        done = sorted(int(b) for b in run["b"] if run["open"] is None or int(b) < run["open"])
        for b in done:
            if b <= run["checked"]:
                continue
            sb = str(b)
            others = [
                r["b"][sb][0] / r["b"][sb][1]
                for rid, r in self.runs.items()
                if rid != run_id and sb in r["b"]
            ]
            if len(others) < c.cohort_min_runs:
                return  # judged later, in order, once enough siblings have this bucket
            sm, cn, ls = run["b"][sb]
            z, med, scale = self._robust_z(sm / cn, others)
            run["checked"] = b
            if abs(z) < c.cohort_threshold:
                run["streak"], run["streak_step"] = 0, None
                continue
            run["streak"] += 1
            if run["streak_step"] is None:
                run["streak_step"] = int(ls)
            if run["streak"] >= c.cohort_confirm_buckets:
                run["flagged"] = True
                step = int(run["streak_step"])
                out.append(
                    (run_id, self._anomaly("curve", step, int(ls), sm / cn, med, scale, z, len(others)))
                )
                return

    def _judge_final(self, run_id: str, out: list[tuple[str, Anomaly]]) -> None:
        c = self.config
        run = self.runs[run_id]
        finals = {
            rid: float(np.median(r["tail"])) for rid, r in self.runs.items() if r["finished"] and r["tail"]
        }
        if run_id not in finals:
            run["final_judged"] = True
            return
        others = [v for rid, v in finals.items() if rid != run_id]
        if len(others) < c.cohort_min_runs:
            return
        run["final_judged"] = True
        if run["flagged"] or "outlier_run" not in c.enabled_kinds:
            return
        z, med, scale = self._robust_z(finals[run_id], others)
        if abs(z) >= c.cohort_threshold:
            run["flagged"] = True
            step = int(run["last_step"])
            out.append(
                (run_id, self._anomaly("final", step, step, finals[run_id], med, scale, z, len(others)))
            )

    def _anomaly(
        self, what: str, step: int, det: int, value: float, med: float, scale: float, z: float, n: int
    ) -> Anomaly:
        where = "its final value" if what == "final" else f"its curve around step {step}"
        return Anomaly(
            "outlier_run",
            step,
            _severity(z, self.config.cohort_threshold),
            {
                "message": (
                    f"{self.key}: {where} ({_fmt(value)}) is {abs(z):.1f} robust deviations "
                    f"{'above' if z > 0 else 'below'} the median {_fmt(med)} of {n} sibling runs"
                ),
                "basis": what,
                "value": value,
                "expected": med,
                "robust_z": z,
                "scale": scale,
                "threshold": self.config.cohort_threshold,
                "siblings": n,
                "detected_at_step": det,
            },
        )
