"""Labelled synthetic metric series for the anomaly detectors (bench/anomaly_quality.py, tests).

Clean curves imitate real training logs:

- losses: ``floor + A * exp(-u / tau)`` plus a learning-rate-dependent term, where ``u`` is the
  cumulative learning rate of a schedule (constant, linear warm-up + cosine, or step decay by
  10x at 50% / 75% of the run). The LR term makes a step-decay schedule drop the loss to a lower
  level; that drop settles exponentially (time constant 3-10% of the run), as it does in real
  training when logged often. Such drops are *not* labelled: they are scheduled, expected and
  gradual, and the detectors are built not to report them (see the report: an abrupt,
  unlabelled drop of one logging interval would be reported as a good-direction level_shift).
- noise: Gaussian with a 20% Student-t (df=10) share for heavy tails, proportional to the level,
  1%-5% of it, 3x larger in the first 5% of the run (early steps are noisy).
- accuracy-like curves (``max`` metrics): ``amax - (amax - a0) * exp(-u / tau)`` with binomial
  noise of an eval set of 500-10,000 examples, quantised to 1/N.
- lengths 200-5,000 points, steps either every step or every 5/10 steps.

Planted anomalies (one per series, label = (kind, onset step)):

- ``spike``: 1-3 points 10-40 noise units away (up for a loss, down for an accuracy, 20% the
  other way), then back.
- ``divergence``: from the onset a ramp of 0.3-3 noise units per point, or an exponential
  explosion, in the bad direction (accuracy collapses down).
- ``plateau``: from the onset the noise-free curve stops improving and stays at its onset value;
  the noise goes on at the onset's level (a loss that just fluctuates around where it stopped).
  Placed only while the clean curve still improves by >= 12 noise units over the 40 points
  before and would have improved >= 6 more over the next 30, so the stop is abrupt.

Labels of clean curves: a clean curve converges gradually (geometrically) to its floor, and
often long before its end. That is *not* labelled a plateau: a plateau is an incident, progress
stopping while the recent trend still promised more (e.g. a dead LR, a frozen layer, a data
loader looping over one batch), and the detector tells the two apart by the fading of the
progress over the windows before. Every clean curve is therefore labelled clean, and any finding
on it counts as a false positive.
- ``level_shift``: from the onset the curve moves by 10-30 noise units, either way, and stays.
- ``non_finite``: 1-5 consecutive NaN/+inf/-inf points.
- ``outlier_run``: an experiment of 8-20 sibling runs (shared curve, small per-run variation)
  with one outlier run (different asymptote, decay rate or a late divergence); the label is the
  outlier run id and the first step where it is 6 sibling-spreads away from the sibling median.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SERIES_KINDS = ("spike", "divergence", "plateau", "level_shift", "non_finite")


@dataclass
class Series:
    """One labelled series; ``kind`` is None for a clean series."""

    key: str
    steps: IntArray
    values: FloatArray
    kind: str | None = None
    onset_step: int | None = None
    noise: FloatArray = field(default_factory=lambda: np.empty(0))
    clean: FloatArray = field(default_factory=lambda: np.empty(0))  # the noise-free curve
    quantum: float = 0.0  # resolution of the logged values (1 / eval-set size), 0: continuous


@dataclass
class Experiment:
    """Sibling runs of one (experiment, key); ``outlier`` is the planted outlier run id."""

    key: str
    runs: dict[str, Series]
    outlier: str | None
    onset_step: int | None


def _lr_schedule(rng: np.random.Generator, n: int) -> FloatArray:
    kind = rng.choice(["constant", "cosine", "step", "cosine"])
    t = np.arange(n, dtype=np.float64)
    warm = int(rng.integers(0, max(2, n // 20)))
    if kind == "constant":
        lr = np.ones(n)
    elif kind == "cosine":
        lr = 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t / n))
    else:
        lr = np.ones(n)
        lr[int(0.5 * n) :] = 0.1
        lr[int(0.75 * n) :] = 0.01
    if warm > 0:
        lr[:warm] *= (t[:warm] + 1) / warm
    return lr


def _settle(x: FloatArray, tau: float) -> FloatArray:
    """First-order lag (an EMA) so scheduled jumps settle exponentially."""
    a = 1.0 / max(tau, 1.0)
    out = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):  # generator only, not a hot path
        acc += a * (v - acc)
        out[i] = acc
    return out


def _noise(rng: np.random.Generator, n: int) -> FloatArray:
    g = rng.standard_normal(n)
    t = rng.standard_t(10, n) / np.sqrt(10 / 8)
    heavy = rng.random(n) < 0.2
    return np.where(heavy, t, g)


def clean_curve(rng: np.random.Generator, n: int | None = None, kind: str | None = None) -> Series:
    """A clean loss- or accuracy-like curve (see the module docstring)."""
    n = int(n if n is not None else rng.integers(200, 5001))
    kind = kind or str(rng.choice(["loss", "loss", "accuracy"]))
    stride = int(rng.choice([1, 1, 5, 10]))
    steps = (np.arange(n, dtype=np.int64) + 1) * stride
    lr = _lr_schedule(rng, n)
    u = np.cumsum(lr)
    tau = float(rng.uniform(0.1, 0.6)) * float(u[-1])
    prefix = str(rng.choice(["", "train/", "val/", "eval.", "train_", "val_"]))
    if kind == "loss":
        floor = float(rng.uniform(0.05, 1.5))
        amp = float(rng.uniform(0.5, 5.0)) * floor + float(rng.uniform(0.2, 2))
        lr_term = _settle(lr * float(rng.uniform(0.05, 0.3)) * floor, tau=float(rng.uniform(0.03, 0.1)) * n)
        clean = floor + amp * np.exp(-u / tau) + lr_term
        rel = float(rng.uniform(0.01, 0.05))
        sigma = rel * clean
        sigma[: max(1, n // 20)] *= 3
        values = clean + sigma * _noise(rng, n)
        key = prefix + str(rng.choice(["loss", "nll", "mse", "perplexity", "loss_total"]))
    else:
        a0 = float(rng.uniform(0.0, 0.3))
        amax = float(rng.uniform(0.6, 0.99))
        clean = amax - (amax - a0) * np.exp(-u / tau)
        n_eval = int(rng.choice([500, 1000, 2000, 10000]))
        sigma = np.sqrt(np.clip(clean * (1 - clean), 1e-4, None) / n_eval)
        sigma[: max(1, n // 20)] *= 3
        values = np.clip(np.round((clean + sigma * rng.standard_normal(n)) * n_eval) / n_eval, 0, 1)
        key = prefix + str(rng.choice(["accuracy", "acc", "f1", "top1_accuracy", "auc"]))
    quantum = 0.0 if kind == "loss" else 1.0 / n_eval
    return Series(
        key=key, steps=steps, values=values.astype(np.float64), noise=sigma, clean=clean, quantum=quantum
    )


def _bad(key: str) -> float:
    from runledger.analysis.detection import infer_direction

    return 1.0 if infer_direction(key) == "min" else -1.0


def planted(rng: np.random.Generator, kind: str, n: int | None = None) -> Series:
    """A clean curve with one planted anomaly of ``kind`` (label: onset step)."""
    for _ in range(2000):
        s = clean_curve(rng, n)
        out = _plant(rng, s, kind)
        if out is not None:
            return out
    raise RuntimeError(f"could not plant {kind}")


def _plant(rng: np.random.Generator, s: Series, kind: str) -> Series | None:
    n = len(s.values)
    v = s.values.copy()
    sig = s.noise
    bad = _bad(s.key)
    lo, hi = max(60, int(0.15 * n)), int(0.85 * n)
    if hi - lo < 10:
        return None
    o = int(rng.integers(lo, hi))
    if kind == "plateau":
        # only where the clean curve still improves clearly (>= 12 noise units over the 40
        # points before and >= 6 over the 30 after): the stop is then abrupt, an incident; a
        # curve that converges gradually on its own is expected behaviour, not a plateau
        sm = s.clean * bad
        idx = np.arange(lo, min(hi, n - 31))
        idx = idx[idx >= 100]
        ok = idx[((sm[idx - 40] - sm[idx]) >= 12 * sig[idx]) & ((sm[idx] - sm[idx + 30]) >= 6 * sig[idx])]
        if len(ok) == 0:
            return None
        o = int(rng.choice(ok))
    if kind == "spike":
        length = int(rng.integers(1, 4))
        direction = bad if rng.random() < 0.8 else -bad
        mag = float(rng.uniform(10, 40)) * sig[o]
        bump = direction * mag * rng.uniform(0.7, 1.0, size=len(v[o : o + length]))

        def shows(x: FloatArray) -> bool:  # an accuracy clipped at 0 or 1 would hide the spike
            return s.quantum == 0 or bool((x.min() >= 0.0) & (x.max() <= 1.0))

        if not shows(v[o : o + length] + bump):
            bump = -bump  # label only what shows
            if not shows(v[o : o + length] + bump):
                return None
        v[o : o + length] += bump
    elif kind == "divergence":
        t = np.arange(n - o, dtype=np.float64)
        if rng.random() < 0.5:
            drift = float(rng.uniform(0.3, 3.0)) * sig[o] * t
        else:
            g = float(rng.uniform(0.05, 0.3))
            drift = sig[o] * 2 * (np.exp(np.minimum(g * t, 30)) - 1)
        v[o:] += bad * drift
    elif kind == "plateau":
        # the loss stops improving at the onset and only fluctuates around its level from then
        # on: the noise-free curve freezes at its onset value, the noise goes on (same sigma)
        v[o:] = s.clean[o] + (v[o:] - s.clean[o:]) * (sig[o] / np.maximum(sig[o:], 1e-12))
        if s.quantum > 0:
            v[o:] = np.round(v[o:] / s.quantum) * s.quantum
    elif kind == "level_shift":
        mag = float(rng.uniform(10, 30)) * sig[o]
        sgn = float(rng.choice([-1.0, 1.0]))

        def inside(g: float) -> bool:
            return bool(s.values[o:].min() + g * mag > 0.02 and s.values[o:].max() + g * mag < 0.98)

        if bad < 0 and not inside(sgn):
            sgn = -sgn  # keep a shifted accuracy inside (0, 1): clipping would flatten it
            if not inside(sgn):
                return None
        v[o:] += sgn * mag
    elif kind == "non_finite":
        length = int(rng.integers(1, 6))
        v[o : o + length] = float(rng.choice([np.nan, np.inf, -np.inf]))
    else:
        raise ValueError(kind)
    if "acc" in s.key or "f1" in s.key or "auc" in s.key:
        v = np.where(np.isfinite(v), np.clip(v, 0.0, 1.0), v)
    return Series(
        key=s.key,
        steps=s.steps,
        values=v,
        kind=kind,
        onset_step=int(s.steps[o]),
        noise=sig,
        clean=s.clean,
        quantum=s.quantum,
    )


def _smooth(x: FloatArray, w: int = 15) -> FloatArray:
    pad = np.pad(x, (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(pad, np.ones(w) / w, mode="valid")


def experiment(rng: np.random.Generator, with_outlier: bool = True) -> Experiment:
    """Sibling runs of one experiment; optionally one outlier run (label: run id, onset step)."""
    runs_n = int(rng.integers(8, 21))
    n = int(rng.integers(200, 2001))
    base = clean_curve(rng, n, kind=str(rng.choice(["loss", "accuracy"])))
    key = base.key
    is_loss = _bad(key) > 0
    runs: dict[str, Series] = {}
    spread = base.values - _smooth(base.values)
    for r in range(runs_n):
        jitter = 1 + 0.02 * rng.standard_normal()
        noise = rng.permutation(spread) * float(rng.uniform(0.8, 1.2))
        smooth = _smooth(base.values)
        vals = smooth * jitter + noise if is_loss else np.clip(smooth * jitter + noise, 0, 1)
        runs[f"run-{r:02d}"] = Series(key=key, steps=base.steps, values=vals, noise=base.noise)
    outlier: str | None = None
    onset: int | None = None
    if with_outlier:
        outlier = f"run-{int(rng.integers(0, runs_n)):02d}"
        s = runs[outlier]
        smooth = _smooth(base.values)
        mode = rng.choice(["asymptote", "slow", "late"])
        t = np.arange(n, dtype=np.float64)
        if mode == "asymptote":
            factor = float(rng.uniform(1.3, 2.0)) if is_loss else float(rng.uniform(0.6, 0.85))
            target = smooth * factor
            w = 1 - np.exp(-t / (0.1 * n))
            new = smooth * (1 - w) + target * w
        elif mode == "slow":
            idx = np.clip((t / float(rng.uniform(2.0, 4.0))).astype(int), 0, n - 1)
            new = smooth[idx]
        else:
            start = int(0.5 * n)
            bump = np.where(t >= start, (t - start) / max(1, n - start), 0.0)
            new = smooth + (1 if is_loss else -1) * bump * float(rng.uniform(0.3, 0.8)) * np.abs(smooth)
        vals = new + (s.values - smooth)
        if not is_loss:
            vals = np.clip(vals, 0, 1)
        runs[outlier] = Series(key=key, steps=s.steps, values=vals, noise=s.noise)
        # label: first step 6 sibling-spreads from the sibling median (smoothed curves)
        others = np.stack([_smooth(r.values) for rid, r in runs.items() if rid != outlier])
        med = np.median(others, axis=0)
        mad = np.median(np.abs(others - med), axis=0) * 1.4826
        scale = np.maximum(mad, 0.05 * np.abs(med))
        far = np.flatnonzero(np.abs(_smooth(vals) - med) > 6 * scale)
        if len(far) == 0:
            return experiment(rng, with_outlier)
        onset = int(s.steps[int(far[0])])
    return Experiment(key=key, runs=runs, outlier=outlier, onset_step=onset)
