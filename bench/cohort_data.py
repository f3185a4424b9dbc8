"""Labelled cohorts of sibling runs for the cohort detector (bench/cohort_quality.py, tests).

A cohort is the runs of one (experiment, metric key), fed the way the analysis service sees a
fleet: runs start at different times, every run in flight gets a few points per tick (1-20,
varying), and a run is finished when its last point is in. Curves come from
:func:`bench.anomaly_data.clean_curve` (loss or accuracy, warm-up and LR schedules: constant,
cosine, step decay): every sibling is the same noise-free curve times a per-run factor
(1 + 2% seed jitter) plus its own noise (1-5% of the level, 3x in the first 5%, 20% heavy-tailed;
binomial and quantised for accuracies).

Kinds (label):

- ``clean``: siblings only; a quarter of them stop early (40-95% of the steps: killed or
  crashed runs) and start times differ. Any finding is a false positive.
- ``curve``: one full-length run departs: a worse/better asymptote, a slower decay, a late
  divergence, or an abrupt jump of its level (a data or code bug from some step on). Label: the
  run and the first step where its noise-free curve is ``cohort_threshold`` (6) sibling
  spreads (max of 1.4826 MAD of the siblings' noise-free curves and 5% of their median) away
  from the siblings' median, i.e. where the departure becomes distinguishable. Checked against
  the detector (seed 0): at the label its sibling spread (the IQR of the siblings' noisy bin
  means, floored at 5%) is within 0-4% of this noise-free one, so a plant just past 6 spreads
  here is just past the detector's threshold too; a plant that creeps past 6 (a slow asymptote)
  is labelled where it crosses, and no detector with a 6-spread threshold flags it much sooner.
- ``final``: one run's last points (0.5-3% of the run, at least 3: enough to move the median
  of the last 5) are off by 50-100% (e.g. the last phase of training or the final evaluations
  went wrong). Label: the run and the first changed step.
- ``shift``: runs one after another (nightly / sequential, each starting while the previous
  one is half to fully done, so they finish in order); from run ``shift_index`` on the curve
  converges to a level 12-25% worse or better (a code or data change). Label: the index (in
  finish order) of the first shifted run. Outlier-run findings on shifted runs are not
  labelled either way (a big enough shift makes the first shifted runs outliers too).
  Detectability: the finals of a sequence scatter by the 2% seed jitter plus their tail noise,
  so a 12-25% shift is ~4-12 of those spreads, and an accuracy converging near 1 is clipped,
  which can squeeze it below 3; such plants stay labelled (the held-out benchmark will have them
  too), and bench/cohort_quality.py reports the shift recall by planted size instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bench.anomaly_data import _noise, clean_curve

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

KINDS = ("clean", "curve", "final", "shift")
THRESHOLD = 6.0  # the label's departure distance, in sibling spreads (DetectorConfig.cohort_threshold)
REL_FLOOR = 0.05  # the sibling spread is at least 5% of |median| (DetectorConfig.cohort_rel_floor)


@dataclass
class Cohort:
    """A labelled cohort and the order its points reach the detector."""

    key: str
    kind: str
    steps: dict[str, IntArray]
    values: dict[str, FloatArray]
    # feed events in order: (run_id, lo, hi) = points [lo, hi) of the run; hi == -1: finish
    events: list[tuple[str, int, int]] = field(default_factory=list)
    outlier: str | None = None
    onset_step: int | None = None
    shift_index: int | None = None  # index in finish order of the first shifted run
    finish_order: list[str] = field(default_factory=list)


def _run_values(rng: np.random.Generator, clean: FloatArray, sigma: FloatArray, quantum: float) -> FloatArray:
    v = clean + sigma * _noise(rng, len(clean))
    if quantum > 0:
        v = np.clip(np.round(v / quantum) * quantum, 0.0, 1.0)
    return v


def _schedule(
    rng: np.random.Generator, lengths: dict[str, int], starts: dict[str, int], max_chunk: int
) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Feed events: each tick every started run gets 1..max_chunk points; finish after the last."""
    events: list[tuple[str, int, int]] = []
    order: list[str] = []
    pos = dict.fromkeys(lengths, 0)
    tick = 0
    while len(order) < len(lengths):
        for rid in lengths:
            if rid in order or starts[rid] > tick:
                continue
            k = int(rng.integers(1, max_chunk + 1))
            lo, hi = pos[rid], min(lengths[rid], pos[rid] + k)
            events.append((rid, lo, hi))
            pos[rid] = hi
            if hi == lengths[rid]:
                events.append((rid, lo, -1))
                order.append(rid)
        tick += 1
    return events, order


def _label(out_clean: FloatArray, sib_clean: list[FloatArray], lengths: list[int]) -> int | None:
    n = len(out_clean)
    for i in range(n):
        vals = np.asarray([c[i] for c, ln in zip(sib_clean, lengths, strict=True) if ln > i])
        if len(vals) < 5:
            continue
        med = float(np.median(vals))
        scale = max(1.4826 * float(np.median(np.abs(vals - med))), REL_FLOOR * abs(med))
        if abs(out_clean[i] - med) > THRESHOLD * scale:
            return i
    return None


def cohort(rng: np.random.Generator, kind: str) -> Cohort:
    """One labelled cohort of ``kind`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(kind)
    for _ in range(100):
        c = _cohort(rng, kind)
        if c is not None:
            return c
    raise RuntimeError(f"could not plant {kind}")


def _cohort(rng: np.random.Generator, kind: str) -> Cohort | None:
    sequential = kind == "shift"
    runs_n = int(rng.integers(14, 31)) if sequential else int(rng.integers(8, 21))
    n = int(rng.integers(150, 601)) if sequential else int(rng.integers(200, 2001))
    base = clean_curve(rng, n, kind=str(rng.choice(["loss", "loss", "accuracy"])))
    quantum = base.quantum
    is_loss = quantum == 0
    ids = [f"run-{r:02d}" for r in range(runs_n)]
    jitter = {rid: 1 + 0.02 * float(rng.standard_normal()) for rid in ids}
    cleans = {rid: base.clean * jitter[rid] for rid in ids}
    lengths = dict.fromkeys(ids, n)
    out = Cohort(key=base.key, kind=kind, steps={}, values={})
    if kind == "clean":
        for rid in ids:
            if rng.random() < 0.25:
                lengths[rid] = int(rng.uniform(0.4, 0.95) * n)
    t = np.arange(n, dtype=np.float64)
    sign = 1.0 if is_loss else -1.0  # the worse direction
    if kind == "curve":
        rid = str(rng.choice(ids))
        smooth = cleans[rid]
        mode = str(rng.choice(["asymptote", "slow", "late", "jump"]))
        good = rng.random() < 0.25  # better than the siblings is an outlier too
        d = -sign if good else sign
        if mode == "asymptote":
            factor = 1 + d * float(rng.uniform(0.3, 0.8))
            w = 1 - np.exp(-t / (0.1 * n))
            new = smooth * (1 - w) + smooth * factor * w
        elif mode == "slow":
            idx = np.clip((t / float(rng.uniform(2.0, 4.0))).astype(int), 0, n - 1)
            new = smooth[idx]
        elif mode == "late":
            start = int(rng.uniform(0.3, 0.7) * n)
            bump = np.where(t >= start, (t - start) / max(1, n - start), 0.0)
            new = smooth + sign * bump * float(rng.uniform(0.5, 1.5)) * np.abs(smooth)
        else:
            start = int(rng.uniform(0.2, 0.8) * n)
            new = smooth + np.where(t >= start, d * float(rng.uniform(0.4, 1.0)) * np.abs(smooth), 0.0)
        if not is_loss:
            new = np.clip(new, 0.0, 1.0)
        others = [rr for rr in ids if rr != rid]
        onset = _label(new, [cleans[rr] for rr in others], [lengths[rr] for rr in others])
        if onset is None:
            return None
        cleans[rid] = new
        out.outlier = rid
        out.onset_step = int(base.steps[onset])
    if kind == "shift":
        j = int(rng.integers(10, runs_n - 3))
        delta = float(rng.uniform(0.12, 0.25)) * float(rng.choice([-1.0, 1.0]))
        w = 1 - np.exp(-t / (0.2 * n))
        for rid in ids[j:]:
            cleans[rid] = cleans[rid] * (1 + delta * w)
            if not is_loss:
                cleans[rid] = np.clip(cleans[rid], 0.0, 1.0)
        out.shift_index = j
    for rid in ids:
        ln = lengths[rid]
        out.steps[rid] = base.steps[:ln]
        out.values[rid] = _run_values(rng, cleans[rid][:ln], base.noise[:ln], quantum)
    if kind == "final":
        rid = str(rng.choice(ids))
        k = max(3, int(rng.uniform(0.005, 0.03) * n))
        v = out.values[rid].copy()
        off = float(rng.uniform(0.5, 1.0)) * np.abs(v[-k:]) * sign
        v[-k:] = np.clip(v[-k:] + off, 0.0, 1.0) if not is_loss else v[-k:] + off
        out.values[rid] = v
        out.outlier = rid
        out.onset_step = int(out.steps[rid][-k])
    # start times: sequential runs start while the previous one is 50-100% done; others
    # within the first 30% of a run's duration
    starts: dict[str, int] = {}
    max_chunk = int(rng.choice([1, 5, 20]))
    mean_chunk = (1 + max_chunk) / 2
    if sequential:
        tick = 0
        for rid in ids:
            starts[rid] = tick
            tick += int(rng.uniform(0.5, 1.0) * n / mean_chunk) + 1
    else:
        for rid in ids:
            starts[rid] = int(rng.uniform(0, 0.3) * n / mean_chunk)
    out.events, out.finish_order = _schedule(rng, lengths, starts, max_chunk)
    if sequential and out.shift_index is not None:
        shifted = set(ids[out.shift_index :])
        first = min(i for i, r in enumerate(out.finish_order) if r in shifted)
        if first != len(ids) - len(shifted):
            return None  # keep the label simple: every shifted run finishes after every earlier one
        out.shift_index = first
    return out
