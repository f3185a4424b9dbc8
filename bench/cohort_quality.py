"""Quality and speed of the cohort detector: ``python -m bench.cohort_quality [--seed S] [--experiments N]``.

N labelled cohorts of each kind (bench/cohort_data.py: clean, curve outlier, final-value
outlier, cross-run shift) are fed to a fresh :class:`CohortDetector` as the service would (the
cohort's events in order, a few points per call, ``finish`` when a run ends).

Scoring:

- ``outlier_run`` (curve and final cohorts): the planted run flagged = TP, any other run
  flagged = FP (except runs after a planted cross-run shift: counted apart, unlabelled);
  delay = reported step - label, latency = ``detected_at_step`` - label, in points of the run;
  a finding made when the siblings caught up with a run ahead of them (``reported_at_step``)
  counts its latency from ``detected_at_step`` (the run's data that made it certain); the points
  the run had logged by then are reported apart ("report lag");
  "<= 5 when covered": the share of curve outliers flagged within 5 points of the label among
  those where >= 5 siblings had already sent points at the label step when the outlier did.
- ``level_shift`` (scope runs): TP when the candidate runs are all shifted runs and include the
  first one or the next (delay = index of the first candidate - label, in runs; latency = index
  of the run the finding is attached to - label); any other level_shift = FP.
- clean cohorts: cohorts with any finding.
- shift recall by size: the planted shift in spreads of the earlier runs' finals (median of the
  first 3 shifted finals minus the median of the earlier finals, over 1.4826 MAD of those; finals
  = median of the last 5 points), binned < 4, 4-6, >= 6: a shift that is not a few spreads
  beyond the runs' own scatter (small shift, accuracy clipped near 1) cannot be told from it.

``--per-call``: the speed of single-point calls with 200 runs in a cohort (every run gets one
point per tick, as in a fleet where each event carries one point per series), and of
1,000-point calls. Output: markdown tables.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

from bench.cohort_data import KINDS, Cohort, cohort
from runledger.analysis.cohort import CohortDetector
from runledger.analysis.detection import Anomaly, DetectorConfig


def feed(c: Cohort, config: DetectorConfig) -> tuple[list[tuple[str, Anomaly]], int | None]:
    """All findings of a cohort, and how many siblings had reached the label when the outlier did."""
    d = CohortDetector(c.key, config)
    found: list[tuple[str, Anomaly]] = []
    progress: dict[str, int] = {}
    covered: int | None = None
    for rid, lo, hi in c.events:
        if hi < 0:
            found += d.finish(rid)
            continue
        st = c.steps[rid]
        if rid == c.outlier and c.onset_step is not None and covered is None and st[hi - 1] >= c.onset_step:
            covered = sum(1 for r, p in progress.items() if r != rid and p >= c.onset_step)
        found += d.update(rid, st[lo:hi], c.values[rid][lo:hi])
        progress[rid] = int(st[hi - 1])
    return found, covered


def evaluate(seed: int, n: int, config: DetectorConfig) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    res: dict[str, dict[str, float]] = {}
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    planted: dict[str, int] = defaultdict(int)
    delay: dict[str, list[int]] = defaultdict(list)
    latency: dict[str, list[int]] = defaultdict(list)
    report_lag: list[int] = []
    within: list[bool] = []
    by_size: dict[str, list[bool]] = defaultdict(list)
    clean_fp = 0
    incidental = 0
    for kind in KINDS:
        for _ in range(n):
            c = cohort(rng, kind)
            found, covered = feed(c, config)
            if kind == "clean" and found:
                clean_fp += 1
            hit_run = hit_shift = False
            if kind in ("curve", "final"):
                planted[kind] += 1
            if kind == "shift":
                planted["shift"] += 1
            shifted = set(c.finish_order[c.shift_index :]) if c.shift_index is not None else set()
            for rid, a in found:
                if a.kind == "outlier_run":
                    if rid == c.outlier and not hit_run and c.onset_step is not None:
                        hit_run = True
                        tp[kind] += 1
                        steps = c.steps[rid]
                        o = int(np.searchsorted(steps, c.onset_step))
                        delay[kind].append(int(np.searchsorted(steps, a.step)) - o)
                        lat = int(np.searchsorted(steps, int(a.evidence["detected_at_step"]))) - o
                        latency[kind].append(lat)
                        if kind == "curve":
                            rep_at = int(a.evidence.get("reported_at_step", a.evidence["detected_at_step"]))
                            report_lag.append(int(np.searchsorted(steps, rep_at)) - o)
                        if kind == "curve" and covered is not None and covered >= 5:
                            within.append(lat <= 5)
                    elif rid in shifted:
                        incidental += 1
                    else:
                        fp[kind if kind in ("curve", "final") else "outlier_other"] += 1
                elif a.kind == "level_shift":
                    cands = a.evidence["candidate_run_ids"]
                    idx = [c.finish_order.index(r) for r in cands]
                    j = c.shift_index
                    if (
                        kind == "shift"
                        and not hit_shift
                        and j is not None
                        and all(r in shifted for r in cands)
                        and min(idx) <= j + 1
                    ):
                        hit_shift = True
                        tp["shift"] += 1
                        delay["shift"].append(min(idx) - j)
                        latency["shift"].append(c.finish_order.index(rid) - j)
                    else:
                        fp["shift"] += 1
                else:
                    fp[a.kind] += 1
            if kind == "shift" and c.shift_index is not None:
                by_size[_size_bin(c)].append(hit_shift)
    for kind in ("curve", "final", "shift"):
        t, f, p = tp[kind], fp[kind], planted[kind]
        res[kind] = {
            "planted": p,
            "tp": t,
            "fp": f,
            "precision": t / (t + f) if t + f else float("nan"),
            "recall": t / p if p else float("nan"),
            "delay": float(np.median(delay[kind])) if delay[kind] else float("nan"),
            "latency": float(np.median(latency[kind])) if latency[kind] else float("nan"),
            "p90_latency": float(np.percentile(latency[kind], 90)) if latency[kind] else float("nan"),
        }
    res["_other"] = {
        "clean": n,
        "clean_fp": clean_fp,
        "outlier_other_fp": fp["outlier_other"],
        "incidental": incidental,
        "within5": float(np.mean(within)) if within else float("nan"),
        "within5_n": len(within),
        "report_lag_median": float(np.median(report_lag)) if report_lag else float("nan"),
        "report_lag_p90": float(np.percentile(report_lag, 90)) if report_lag else float("nan"),
    }
    for b in _SIZE_BINS:
        res["_other"][f"shift_{b}"] = float(np.mean(by_size[b])) if by_size[b] else float("nan")
        res["_other"][f"shift_{b}_n"] = len(by_size[b])
    return res


_SIZE_BINS = ("<4", "4-6", ">=6")


def _size_bin(c: Cohort) -> str:
    """The planted shift in robust spreads of the earlier runs' finals (module docstring)."""
    assert c.shift_index is not None
    fin = np.asarray([float(np.median(c.values[r][-5:])) for r in c.finish_order])
    base, new = fin[: c.shift_index], fin[c.shift_index : c.shift_index + 3]
    med = float(np.median(base))
    mad = max(1.4826 * float(np.median(np.abs(base - med))), 1e-12)
    size = abs(float(np.median(new)) - med) / mad
    return "<4" if size < 4 else "4-6" if size < 6 else ">=6"


def per_call(runs: int = 200, points: int = 600, seed: int = 0) -> dict[str, float]:
    """Median / mean microseconds per single-point call, and points/s of 1,000-point calls."""
    rng = np.random.default_rng(seed)
    t = np.arange(points, dtype=np.float64)
    steps = np.arange(1, points + 1, dtype=np.int64)
    curves = [
        (0.5 + 2 * np.exp(-t / 150))
        * (1 + 0.02 * rng.standard_normal())
        * (1 + 0.02 * rng.standard_normal(points))
        for _ in range(runs)
    ]
    d = CohortDetector("train/loss", DetectorConfig())
    times = np.empty(points * runs)
    k = 0
    perf = time.perf_counter
    for i in range(points):
        s = steps[i : i + 1]
        for r in range(runs):
            v = curves[r][i : i + 1]
            t0 = perf()
            d.update(f"run-{r}", s, v)
            times[k] = perf() - t0
            k += 1
    out = {"single_median_us": float(np.median(times)) * 1e6, "single_mean_us": float(np.mean(times)) * 1e6}
    sizes = [len(str(st)) for st in d.members().values()]
    out["member_state_bytes_600_steps"] = float(np.median(sizes))
    # 1,000-point calls: 20 runs x 100,000 points, interleaved
    n_runs, n_pts, batch = 20, 100_000, 1_000
    t = np.arange(n_pts, dtype=np.float64)
    steps = np.arange(1, n_pts + 1, dtype=np.int64)
    big = [(0.3 + 2 * np.exp(-t / 25_000)) * (1 + 0.02 * rng.standard_normal(n_pts)) for _ in range(n_runs)]
    d = CohortDetector("train/loss", DetectorConfig())
    t0 = perf()
    for lo in range(0, n_pts, batch):
        for r in range(n_runs):
            d.update(f"run-{r}", steps[lo : lo + batch], big[r][lo : lo + batch])
    out["batch1000_points_per_s"] = n_runs * n_pts / (perf() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experiments", type=int, default=40, help="cohorts per kind")
    ap.add_argument("--per-call", action="store_true", help="also measure the per-call speed")
    args = ap.parse_args()
    config = DetectorConfig()
    t0 = time.perf_counter()
    res = evaluate(args.seed, args.experiments, config)
    took = time.perf_counter() - t0
    print(f"## Cohort detector quality (seed {args.seed}, {args.experiments} cohorts per kind)\n")
    print(
        "| planted | kind reported | planted n | TP | FP | precision | recall | median delay | median latency | p90 latency |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    names = {
        "curve": ("curve outlier", "outlier_run", "pts"),
        "final": ("final-value outlier", "outlier_run", "pts"),
        "shift": ("cross-run shift", "level_shift (runs)", "runs"),
    }
    for kind in ("curve", "final", "shift"):
        r = res[kind]
        label, rep, unit = names[kind]
        print(
            f"| {label} | {rep} | {int(r['planted'])} | {int(r['tp'])} | {int(r['fp'])} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['delay']:.1f} {unit} | {r['latency']:.1f} {unit} | {r['p90_latency']:.1f} {unit} |"
        )
    o = res["_other"]
    print(
        f"\nClean cohorts with any finding: {int(o['clean_fp'])} / {int(o['clean'])}; outlier_run on unlabelled runs "
        f"of shift cohorts: {int(o['outlier_other_fp'])}; on shifted runs (not scored): {int(o['incidental'])}. "
        f"Curve outliers flagged <= 5 points after the label when >= 5 siblings had data there: "
        f"{o['within5']:.3f} of {int(o['within5_n'])}. Curve outliers' report lag (points the run had "
        f"logged when reported, after the label): median {o['report_lag_median']:.1f}, "
        f"p90 {o['report_lag_p90']:.1f}. Took {took:.1f} s."
    )
    sizes = ", ".join(f"{b}: {o[f'shift_{b}']:.2f} of {int(o[f'shift_{b}_n'])}" for b in _SIZE_BINS)
    print(f"\nCross-run shift recall by planted size (baseline spreads): {sizes}.")
    if args.per_call:
        pc = per_call()
        print("\n| speed | value |\n|---|---|")
        print(f"| single-point call, 200 runs, median | {pc['single_median_us']:.1f} µs |")
        print(f"| single-point call, 200 runs, mean | {pc['single_mean_us']:.1f} µs |")
        print(f"| 1,000-point calls, 20 runs x 100k points | {pc['batch1000_points_per_s']:,.0f} points/s |")


if __name__ == "__main__":
    main()
