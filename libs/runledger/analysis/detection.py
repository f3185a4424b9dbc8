"""Streaming anomaly detection over metric series (numpy only, no I/O).

Two detectors, both fed incrementally and both with a bounded, JSON-serialisable state:

- :class:`SeriesDetector` watches one series (run_id, metric key) and reports ``non_finite``,
  ``spike``, ``divergence``, ``plateau`` and ``level_shift``.
- :class:`CohortDetector` watches the sibling runs of one (experiment, key) and reports
  ``outlier_run`` (curve or final value far from the siblings').

Conventions shared by every detector:

- Direction. Internally every series is turned into "lower is better" (``y = x`` for a minimised
  metric, ``y = -x`` for a maximised one), so divergence is always "y goes up" and plateau is
  always "y stops going down". Messages and evidence use the raw values.
- Noise unit. Thresholds are robust z-scores: deviations divided by a robust noise scale ``s``
  estimated from the first differences of the last 64 points (differences cancel trends; the
  max of the median- and the upper-quartile-based estimates keeps quantised metrics, whose
  median difference is 0, from dividing by ~0). ``s`` is re-estimated every 16 points.
- Candidates. A point past ``spike_threshold`` on the cheap two-median baseline is re-checked
  against a trimmed least-squares line over the 24 points before it and a noise scale from all
  ~95 differences of the history (heavy-tailed noise otherwise passes as spikes).
- Onsets of trends. A divergence is reported at the break of the best continuous "own trend,
  then a step / ramp / accelerating bend" fit (:func:`_break_fit`), not where it crossed a
  threshold; a step whose new level keeps rising is a divergence, not a level shift.
- Warm-up. The first ``warmup_steps`` finite points (and at least :data:`MIN_HISTORY` points,
  the history the windows need) feed the state but never alarm. ``non_finite`` alarms during
  warm-up too by default (a NaN at step 3 is a bug, not noise): ``non_finite_in_warmup``.
- Steps. A point whose step is <= the last step seen by the detector is ignored (replays and
  out-of-order duplicates from at-least-once delivery); steps need not be contiguous, and
  delays are counted in points of the series.
- One finding per incident. After a spike, a level shift or a divergence the detector waits
  until its windows hold only post-change data; a divergence re-arms only once the series has
  come back near its former best; a plateau re-arms only after the series improves again.
- ``Anomaly.step`` is the onset of the incident (the first offending point; for plateau the
  step where progress stopped, for a trend the estimated start of the trend);
  ``evidence["detected_at_step"]`` is the point whose arrival made the finding certain.
- Severity maps the robust magnitude ``z`` onto 0..1 monotonically: ``z / (z + threshold)``,
  i.e. 0.5 exactly at the threshold, -> 1 for huge deviations. Non-finite values get 1.0.
"""

from __future__ import annotations

import binascii
import dataclasses
import math
import re
import sys
from array import array
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

Direction = Literal["min", "max"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

KINDS: tuple[str, ...] = ("non_finite", "spike", "divergence", "plateau", "level_shift", "outlier_run")

# Window geometry (fixed, not tunable: the persisted state layout depends on it).
HALF_WINDOW = 12  # the baseline is predicted from two medians of 12 points
PRED_WINDOW = 2 * HALF_WINDOW
SCALE_DIFFS = 64  # the noise scale comes from the last 64 first differences ...
SCALE_STRIDE = 16  # ... re-estimated every 16 points (a 16x cheaper rolling quantile)
MIN_SCALE_DIFFS = 15
MIN_HISTORY = PRED_WINDOW + 1  # points needed before anything but non_finite can alarm
HISTORY = 96  # raw points kept in the state: >= SCALE_DIFFS + SCALE_STRIDE + 1 and PRED_WINDOW
LEVEL_LAG = HALF_WINDOW // 2  # the level (median of the last 12 points) lags a trend by ~6 points
STATE_VERSION = 2  # 2: packed arrays, best-level history rebuilt from the raw points
SHORT_BATCH = 48  # batches up to this many points take the scalar path (numpy's fixed costs dominate)
_SLACK = 8  # array buffers grow this far past their logical length before being trimmed
_INT64_MIN = -(2**63)
_NEVER = -(2**62)  # a global point index long before any series (no int64 overflow in differences)
# Plateau after an abrupt stop: the best level (a running minimum of the lagging level) creeps
# down for about LEVEL_LAG more points, so the last window turns flat only a few points after the
# window before it stopped passing the shape test. That shape counts for this many points more
# (at most patience // 2) ...
PLATEAU_MEMORY = 5
# ... if the last window past its first LEVEL_LAG points (the creep) moved less than this fraction
# of plateau_min_delta: the slow residual progress after a 10x LR decay does not. (5 and 0.35: no
# new false plateau on 10,800 clean curves, 6 and 0.5 each add some; see bench/RESULTS.md.)
PLATEAU_SETTLED = 0.35
_FLOAT_MAX = sys.float_info.max

_MAXIMISE = re.compile(
    r"(acc|accuracy|f1|f_1|fscore|auc|auroc|roc|precision|prec|recall|map|ndcg|bleu|rouge|meteor|"
    r"reward|return|score|iou|miou|dice|r2|psnr|ssim|spearman|pearson|corr|win_rate|winrate|"
    r"success|hit|hits|mrr|top1|top5|top_1|top_5|exact_match|em|kappa|throughput|tokens_per_sec)"
)
_MINIMISE = re.compile(
    r"(loss|error|err|perplexity|ppl|mse|mae|rmse|nll|wer|cer|ece|fid|cost|regret|mape|smape|"
    r"kl|divergence|distance|latency|brier|hinge|entropy|bpb|bpc|bits_per)"
)


def infer_direction(key: str) -> Direction:
    """The improvement direction of a metric, from its name.

    The key is split into tokens on ``/ . : - _`` and spaces (so ``val/acc``, ``train_loss``,
    ``eval.top1_accuracy`` and ``valAccuracy`` all work, camelCase is split too); the last token
    that names a known metric decides (``val_loss_of_best_acc`` is about ``acc``... no: the
    *last* known token wins, so ``acc_loss`` is a loss). Minimised names are checked before
    maximised ones within one token. Unknown names default to ``"min"``: most logged scalars
    without a recognisable name are losses or costs, and ``min`` only changes which way
    ``divergence``/``plateau`` look, never ``spike``/``level_shift``.
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    tokens = [t for t in re.split(r"[/.:\-_\s]+", spaced.lower()) if t]
    for token in reversed(tokens):
        if _MINIMISE.fullmatch(token):
            return "min"
        if _MAXIMISE.fullmatch(token):
            return "max"
    # Fall back to substrings (``valloss``, ``top1accuracy``) before the default.
    low = key.lower()
    if _MINIMISE.search(low) and not _MAXIMISE.search(low):
        return "min"
    if _MAXIMISE.search(low) and not _MINIMISE.search(low):
        return "max"
    return "min"


# The SDK's system metrics (runledger_sdk.system_metrics). Cumulative counters only ever
# grow, so divergence and level shifts on them are the run doing I/O, not a problem; the
# gauges (CPU, memory, GPU) move with the workload's phases (data loading, evaluation),
# which the trend and change detectors would report on every run.
SYSTEM_PREFIX = "system/"
_SYSTEM_COUNTERS = re.compile(r"system/(disk_(read|write)_bytes|network_(sent|recv)_bytes|wall_time_s)")
_SYSTEM_KINDS = frozenset({"non_finite", "spike"})


def default_config(key: str) -> DetectorConfig:
    """The defaults for one metric before tenant overrides: every kind for model metrics;
    for system metrics only non-finite values, and spikes on the gauges (a tenant can
    enable more through the detector settings)."""
    if not key.startswith(SYSTEM_PREFIX):
        return _DEFAULT
    if _SYSTEM_COUNTERS.fullmatch(key):
        return _SYSTEM_COUNTER_DEFAULT
    return _SYSTEM_GAUGE_DEFAULT


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One finding. ``evidence`` is JSON-serialisable and always has a one-sentence ``message``."""

    kind: str
    step: int
    severity: float
    evidence: dict[str, Any]


def _severity(z: float, threshold: float) -> float:
    """Monotone map of a robust magnitude onto 0..1: 0.5 at the threshold, -> 1 as z grows."""
    z = abs(z)
    if not math.isfinite(z):
        return 1.0
    return round(z / (z + max(threshold, 1e-9)), 4)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Tunable thresholds (per tenant / experiment / metric via :meth:`with_overrides`).

    Thresholds are in robust noise units (see the module docstring) unless noted.
    """

    direction: Direction | None = None  # None: infer_direction(key)
    warmup_steps: int = 20  # first N finite points never alarm (effective: max(N, MIN_HISTORY))
    enabled_kinds: frozenset[str] = field(default_factory=lambda: frozenset(KINDS))
    non_finite_in_warmup: bool = True
    # spike / level_shift / abrupt divergence: a point this far from the baseline opens an
    # excursion; it is a spike if it comes back within spike_max_len points, a change if the
    # median of the first change_confirm points stays beyond change_persist.
    spike_threshold: float = 7.0
    spike_max_len: int = 3
    spike_return: float = 3.0
    change_confirm: int = 5
    change_persist: float = 4.0
    # a change is a trend (divergence when bad) when its post-onset slope t-statistic or the
    # pre-onset drift (mean z of the 3 points before) exceeds these.
    trend_t: float = 3.0
    pre_drift: float = 2.5
    explode_ratio: float = 5.0  # a bad change to >= 5x (or <= 1/5x) the old level is a divergence
    # slow divergence: the level (median of 12) this far above the best level so far.
    divergence_threshold: float = 8.0
    # plateau: the best level improved less than plateau_min_delta over plateau_patience points
    # although it improved at least plateau_prior_progress over the patience window before.
    plateau_patience: int = 30
    plateau_min_delta: float = 1.4
    plateau_prior_progress: float = 6.0
    # outlier_run (CohortDetector): a run's curve this far (in sibling spreads) from its
    # siblings' median, with at least cohort_min_runs siblings there, confirmed on
    # cohort_confirm_buckets consecutive points (or rechecked bins); finals use the same threshold.
    cohort_min_runs: int = 5
    cohort_threshold: float = 6.0
    cohort_rel_floor: float = 0.05  # sibling spread is at least 5% of |median| (tiny cohorts)
    # Consecutive points (or rechecked bins) beyond the threshold, 1-5. Three, not two: siblings with
    # heavy-tailed noise put two points in a row past the bar often enough to flag clean runs.
    cohort_confirm_buckets: int = 3
    cohort_max_runs: int = 500
    cohort_smooth_alpha: float = 0.3  # EWMA weight of the newest residual (the drift test; lag ~2.3 points)
    # the bar is raised above cohort_threshold for a run whose own noise could carry a clean run
    # there: cohort_noise_allow spreads plus cohort_noise_z of its noise (per test)
    cohort_noise_allow: float = 3.0
    cohort_noise_z: float = 5.0
    # the reference (a line through two sibling nodes) is uncertain by cohort_interp_unc x how far
    # the node below lies off that line (the curvature), 2x that when extrapolated beyond the nodes
    cohort_interp_unc: float = 0.125
    # level_shift across runs: the last cohort_level_runs finished runs on average beyond
    # cohort_level_threshold robust units from the levels of >= cohort_level_min_baseline runs
    # finished before them, each beyond cohort_level_each; their spread >= cohort_level_rel_floor * |median|
    cohort_level_runs: int = 3
    cohort_level_threshold: float = 4.0
    cohort_level_each: float = 3.0
    cohort_level_min_baseline: int = 8
    cohort_level_rel_floor: float = 0.002

    def __post_init__(self) -> None:
        _validate(self)

    def direction_for(self, key: str) -> Direction:
        """The configured direction, or the one inferred from the key."""
        return self.direction if self.direction is not None else infer_direction(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ish form (``enabled_kinds`` as a sorted list); ``with_overrides`` accepts it back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = sorted(v) if isinstance(v, frozenset) else v
        return out

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> DetectorConfig:
        """A copy with ``overrides`` applied; unknown keys or bad types/values raise ValueError.

        Accepts ``enabled_kinds`` as a list of kind names, or ``disabled_kinds`` to remove some.
        Integers are accepted for float thresholds; bools are never accepted as numbers.
        """
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ValueError(f"detector overrides must be a mapping, got {type(overrides).__name__}")
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name == "disabled_kinds":
                kinds = _kinds(name, value)
                base = changes.get("enabled_kinds", self.enabled_kinds)
                changes["enabled_kinds"] = frozenset(base) - kinds
                continue
            if name not in known:
                raise ValueError(
                    f"unknown detector setting {name!r}; known: {', '.join(sorted([*known, 'disabled_kinds']))}"
                )
            default = getattr(DetectorConfig(), name)
            if name == "direction":
                if value is not None and value not in ("min", "max"):
                    raise ValueError(f"direction must be 'min', 'max' or null, got {value!r}")
                changes[name] = value
            elif name == "enabled_kinds":
                changes[name] = _kinds(name, value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean, got {value!r}")
                changes[name] = value
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{name} must be an integer, got {value!r}")
                changes[name] = value
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number, got {value!r}")
                changes[name] = float(value)
        return dataclasses.replace(self, **changes)


def _kinds(name: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f"{name} must be a list of kinds, got {value!r}")
    bad = [k for k in value if k not in KINDS]
    if bad:
        raise ValueError(f"{name}: unknown kind(s) {bad!r}; known: {', '.join(KINDS)}")
    return frozenset(cast(list[str], list(value)))


def _validate(c: DetectorConfig) -> None:
    if c.direction not in (None, "min", "max"):
        raise ValueError(f"direction must be 'min', 'max' or None, got {c.direction!r}")
    if not isinstance(c.enabled_kinds, frozenset) or not c.enabled_kinds <= set(KINDS):
        raise ValueError(f"enabled_kinds must be a subset of {KINDS}")
    positive = (
        "spike_threshold",
        "spike_return",
        "change_persist",
        "trend_t",
        "pre_drift",
        "divergence_threshold",
        "plateau_min_delta",
        "plateau_prior_progress",
        "cohort_threshold",
        "cohort_level_threshold",
        "cohort_level_each",
    )
    for name in positive:
        v = getattr(c, name)
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if c.explode_ratio <= 1:
        raise ValueError(f"explode_ratio must be > 1, got {c.explode_ratio!r}")
    for name in ("cohort_rel_floor", "cohort_interp_unc", "cohort_level_rel_floor", "cohort_noise_allow"):
        v = getattr(c, name)
        if not (isinstance(v, int | float) and 0 <= v < 10):
            raise ValueError(f"{name} must be in [0, 10), got {v!r}")
    if not (isinstance(c.cohort_noise_z, int | float) and 0 <= c.cohort_noise_z < 100):
        raise ValueError(f"cohort_noise_z must be in [0, 100), got {c.cohort_noise_z!r}")
    if not (isinstance(c.cohort_smooth_alpha, int | float) and 0 < c.cohort_smooth_alpha <= 1):
        raise ValueError(f"cohort_smooth_alpha must be in (0, 1], got {c.cohort_smooth_alpha!r}")
    if c.cohort_level_each > c.cohort_level_threshold:
        raise ValueError("cohort_level_each must not exceed cohort_level_threshold")
    if c.spike_return >= c.spike_threshold:
        raise ValueError("spike_return must be below spike_threshold")
    bounds = {
        "warmup_steps": (0, 10**9),
        "spike_max_len": (1, 50),
        "change_confirm": (2, 50),
        "plateau_patience": (5, 5000),
        "cohort_min_runs": (2, 10_000),
        # the onset is looked up in the run's last 5 points (its stored tail)
        "cohort_confirm_buckets": (1, 5),
        "cohort_max_runs": (10, 100_000),
        "cohort_level_runs": (1, 50),
        "cohort_level_min_baseline": (2, 1000),
    }
    for name, (lo, hi) in bounds.items():
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    if c.spike_max_len >= c.change_confirm:
        raise ValueError("spike_max_len must be below change_confirm")


# --------------------------------------------------------------------------- vectorised helpers


def _rolling_median12(x: FloatArray) -> FloatArray:
    """Medians of every window x[j:j+12] (partition is ~3x faster than np.median here)."""
    if len(x) < HALF_WINDOW:
        return np.empty(0, dtype=np.float64)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    rows = len(x) - HALF_WINDOW + 1
    # a strided view built directly (sliding_window_view's checks cost ~15 us on short inputs);
    # a full sort is faster than partition on few rows, and both put the same values at 5 and 6
    win = np.ndarray((rows, HALF_WINDOW), dtype=np.float64, buffer=x, strides=(8, 8))
    part = np.sort(win, axis=1) if rows < 256 else np.partition(win, [5, 6], axis=1)
    out: FloatArray = 0.5 * (part[:, 5] + part[:, 6])
    return out


def _scale_of(diffs: FloatArray) -> FloatArray:
    """Robust noise sigma from rows of |first differences| (any row length >= 2)."""
    k = diffs.shape[1]
    k50, k75 = (k - 1) // 2, min(k - 1, (3 * k) // 4)
    part = np.partition(diffs, [k50, k75], axis=1)
    # |N(0, 2 s^2)|: median = 0.954 s, 75th percentile = 1.627 s.
    return cast(FloatArray, np.maximum(part[:, k50] / 0.954, part[:, k75] / 1.627))


def _changepoint_split(y: FloatArray) -> tuple[int, float]:
    """Best split of y into two constant segments: (index of the first point after, SSE)."""
    n = len(y)
    c1 = np.cumsum(y)
    c2 = np.cumsum(y * y)
    k = np.arange(1, n)  # left = y[:k]
    left = c2[k - 1] - c1[k - 1] ** 2 / k
    rs, rs2, rn = c1[-1] - c1[k - 1], c2[-1] - c2[k - 1], n - k
    sse = left + rs2 - rs**2 / rn
    j = int(np.argmin(sse))
    return j + 1, float(sse[j])


def _hinge_split(y: FloatArray, min_seg: int = 4) -> int:
    """Break of the best continuous "line, then flat" fit of y (the first flat point)."""
    n = len(y)
    t = np.arange(n, dtype=np.float64)
    k = np.arange(min_seg, n - min_seg + 1, dtype=np.float64)
    if len(k) == 0:
        return n // 2
    h = np.minimum(t[None, :] - k[:, None], 0.0)  # regressor per candidate break
    hc = h - h.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        explained = (hc @ yc) ** 2 / (hc * hc).sum(axis=1)
    return int(k[int(np.nanargmax(explained))])


_SHAPES = ("step", "ramp", "bend")
# a bend (accelerating change) is preferred to a ramp only when it explains this many noise
# variances more (a 4-sigma improvement): on a linear ramp plus noise a parabola starting a few
# points early fits about as well, and its break came out 6-9 points before the onset
BEND_EVIDENCE = 16.0


def _break_fit(y: FloatArray, k_lo: int, k_hi: int, s: float = 0.0) -> tuple[int, str, float]:
    """Best continuous "line, then a change" fit of y; the change starts at index k in [k_lo, k_hi].

    The model is ``a + b t + c g(t - k)`` with g a step (``t >= k``), a ramp (``max(t - k, 0)``,
    a linear divergence) or a bend (``max(t - k, 0) ** 2``, an accelerating one, e.g. an
    exponential explosion, whose onset a ramp fit would place late). The baseline line
    absorbs the ordinary trend (a loss still decaying), so the onset is where the series left
    its own trend, not where it crossed a threshold. Returns (k, shape, c): the shape whose best
    break explains the most variance, except that a bend beating a ramp (which beats the step) by
    less than ``BEND_EVIDENCE`` noise variances (``s`` the noise scale) gives way to the ramp: a
    parabola from an earlier break mimics a ramp, so the bend's break is trusted only when the
    acceleration is evident. Cost O(len(y) * (k_hi - k_lo)), run only at findings.
    """
    n = len(y)
    k_lo, k_hi = max(1, k_lo), min(n - 2, k_hi)
    if n < 6 or k_hi < k_lo:
        return max(0, min(n - 1, k_hi)), "step", 0.0
    t = np.arange(n, dtype=np.float64)
    tc = t - t.mean()
    tt = float(tc @ tc)
    yp = y - y.mean() - (tc @ (y - y.mean())) / tt * tc  # y with its line projected out
    k = np.arange(k_lo, k_hi + 1, dtype=np.float64)
    rel = t[None, :] - k[:, None]
    best: tuple[float, int, str, float] = (-1.0, int(k_lo), "step", 0.0)
    fits: dict[str, tuple[float, int, str, float]] = {}
    for shape in _SHAPES:
        if shape == "step":
            h = (rel >= 0).astype(np.float64)
        elif shape == "ramp":
            h = np.maximum(rel, 0.0)
        else:
            h = np.maximum(rel, 0.0) ** 2
        hp = h - h.mean(axis=1, keepdims=True)
        hp -= ((hp @ tc) / tt)[:, None] * tc[None, :]
        hh = (hp * hp).sum(axis=1)
        hy = hp @ yp
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = np.where(hh > 1e-12, hy * hy / hh, 0.0)
        j = int(np.argmax(gain))
        fits[shape] = (float(gain[j]), int(k[j]), shape, float(hy[j] / hh[j]) if hh[j] > 1e-12 else 0.0)
        if gain[j] > best[0]:
            best = fits[shape]
    ramp = fits["ramp"]
    if best[2] == "bend" and ramp[0] >= fits["step"][0] and best[0] - ramp[0] < BEND_EVIDENCE * s * s:
        best = ramp
    return best[1], best[2], best[3]


def _local_line(y: FloatArray, s: float) -> tuple[float, float]:
    """Prediction of the point after y and the slope, from a line fitted to y (outliers trimmed).

    Least squares over the (up to 24) points before a candidate, refitted once without the
    points more than 3.5 noise units off (earlier spikes): the extrapolation errs by ~0.35
    noise units instead of ~0.6 for the two-median baseline of the vectorised scan.
    """
    n = len(y)
    if n < 4:
        return (float(y[-1]) if n else 0.0), 0.0
    t = np.arange(n, dtype=np.float64)
    keep = np.ones(n, dtype=bool)
    for _ in range(2):
        tk, yk = t[keep], y[keep]
        tm, ym = tk.mean(), yk.mean()
        den = float(((tk - tm) ** 2).sum())
        slope = float(((tk - tm) @ (yk - ym)) / den) if den > 0 else 0.0
        fit = ym + slope * (t - tm)
        new_keep = np.abs(y - fit) <= 3.5 * s
        if new_keep.sum() < max(4, n // 2) or (new_keep == keep).all():
            break
        keep = new_keep
    return float(ym + slope * (n - tm)), slope


def _linear_sse(y: FloatArray) -> tuple[float, float]:
    """Least-squares line through y against 0..n-1: (slope, SSE)."""
    t = np.arange(len(y), dtype=np.float64)
    tc = t - t.mean()
    slope = float(tc @ (y - y.mean()) / (tc @ tc))
    resid = y - y.mean() - slope * tc
    return slope, float(resid @ resid)


# --------------------------------------------------------------------------- state helpers


def _tail(buf: array[Any], k: int, dtype: type[np.generic]) -> Any:
    """A numpy copy of the last k items of an array buffer (the copy releases the buffer)."""
    view = np.frombuffer(buf, dtype=dtype)
    out = view[len(view) - k :].copy()
    del view
    return out


def _pack_steps(buf: array[int], h: int) -> list[int]:
    """The last h steps as [first, d1, c1, d2, c2, ...]: run lengths of their differences."""
    if h == 0:
        return []
    n = len(buf)
    first = buf[n - h]
    if h == 1:
        return [first]
    stride = buf[n - 1] - buf[n - 2]
    # the common case, evenly spaced steps: an arithmetic progression has first + (h-1) * stride
    # as its last item, but so do others; confirm on the array only when the ends agree
    st = np.frombuffer(buf, dtype=np.int64)[n - h :]
    d = np.diff(st)
    del st
    if buf[n - 1] - first == stride * (h - 1) and bool((d == stride).all()):
        return [first, stride, h - 1]
    cut = np.flatnonzero(d[1:] != d[:-1]) + 1
    starts = np.concatenate([[0], cut])
    counts = np.diff(np.concatenate([starts, [len(d)]]))
    pairs = np.stack([d[starts], counts], axis=1).ravel().tolist()
    return [first, *pairs]


def _unpack_steps(code: list[int]) -> array[int]:
    if not code:
        return array("q")
    first, runs = int(code[0]), code[1:]
    if len(runs) == 2:  # evenly spaced
        stride, count = int(runs[0]), int(runs[1])
        if stride <= 0 or count < 0:
            raise ValueError("detector state: bad step code")
        return array("q", np.arange(first, first + stride * count + 1, stride, dtype=np.int64).tobytes())
    if len(runs) % 2:
        raise ValueError("detector state: bad step code")
    d = np.repeat(np.asarray(runs[0::2], dtype=np.int64), np.asarray(runs[1::2], dtype=np.int64))
    st = np.concatenate([[first], first + np.cumsum(d, dtype=np.int64)]).astype(np.int64)
    return array("q", st.tobytes())


def _rebuild_best(
    ys: FloatArray, n: int, length: int, head: FloatArray, start: int, best_from: int, reset_at: int
) -> FloatArray:
    """The best-level history (entries of the global points n - length .. n - 1) from the raw
    points ys (the last len(ys) of n) and the stored entries ``head``, which start at global
    max(0, n - length).

    The best level is the running minimum (fmin) of the level of the active points (index >=
    ``start`` and >= ``best_from``); every entry up to the last reset (``reset_at``) is NaN.
    """
    out = np.empty(length)
    g0 = max(0, n - length)
    i0 = g0 - (n - length)
    out[:i0] = np.nan  # points before the series began
    g1 = g0 + len(head)  # first rebuilt entry (global)
    out[i0 : i0 + len(head)] = head
    if g1 >= n:
        return out
    h = len(ys)
    seed = out[g1 - 1 - (n - length)] if g1 - 1 > reset_at and g1 - 1 >= n - length else np.nan
    # the levels count from the first point that is active, has 11 points before it in ys and
    # comes after the last reset; the entries before it carry the seed (fmin ignores NaN)
    a = max(g1, start, best_from, reset_at + 1, n - h + HALF_WINDOW - 1)
    vals = np.full(n - g1 + 1, np.nan)
    vals[0] = seed
    if a < n:
        vals[a - g1 + 1 :] = _rolling_median12(ys[a - (n - h) - (HALF_WINDOW - 1) :])
    out[g1 - (n - length) :] = np.fmin.accumulate(vals)[1:]
    return out


# --------------------------------------------------------------------------- series detector


@dataclass
class _Batch:
    """Per-point arrays of the finite points of one batch (y: lower is better)."""

    y: FloatArray
    steps: IntArray
    gi: IntArray  # global index of the point among the series' finite points
    z: FloatArray  # (y - baseline) / s; NaN before the windows are full
    pred: FloatArray
    slope: FloatArray
    s: FloatArray
    level: FloatArray  # median of the last 12 points (NaN before 12)
    ext_y: FloatArray  # history + batch, to look back for onsets
    ext_steps: IntArray
    ext0: int  # position of the batch's first point in ext


class SeriesDetector:
    """Streaming detector of one series (run_id, metric key); see the module docstring.

    Two equivalent paths: batches of up to :data:`SHORT_BATCH` points (the fleet case: one
    point per call) are walked point by point on plain floats and small ``array`` buffers,
    longer ones go through the vectorised numpy preparation and scan. Both take exactly the
    same decisions on bit-identical numbers, so findings never depend on how a series is
    chunked. Candidate points (rare) take the full per-point logic in either path.
    State: O(HISTORY + 3 * patience) floats in memory; the persisted form packs the raw points
    and rebuilds the best-level history from them (it is a running minimum of their levels).
    """

    __slots__ = (
        "_ap_from",
        "_bh",
        "_bh_len",
        "_lv",
        "_plat_lag",
        "_plat_mem",
        "_sig",
        "_sig_blk",
        "_sign",
        "_st",
        "_start",
        "_stride",
        "_want_div",
        "_want_exc",
        "_want_plat",
        "_win",
        "_y",
        "best",
        "best_from",
        "config",
        "direction",
        "div_armed",
        "div_rearm",
        "exact_from",
        "exc",
        "in_non_finite",
        "key",
        "last_step",
        "n",
        "plateau_open",
        "plateau_ref",
        "plateau_shape_at",
        "quiet_until",
        "reset_at",
        "reset_gi",
        "resolution",
        "z_hist",
    )

    def __init__(self, key: str, config: DetectorConfig) -> None:
        self._setup(key, config, config.direction_for(key))

    def _setup(self, key: str, config: DetectorConfig, direction: Direction) -> None:
        self.key = key
        self.config = config
        self.direction: Direction = direction
        self._sign = 1.0 if direction == "min" else -1.0
        self._start = max(config.warmup_steps, MIN_HISTORY)
        en = config.enabled_kinds
        self._want_exc = bool(en & {"spike", "level_shift", "divergence"})
        self._want_div = "divergence" in en
        self._want_plat = "plateau" in en
        self.n = 0  # finite points seen
        self.last_step: int | None = None
        self.in_non_finite = False
        self.resolution = math.inf  # smallest non-zero |difference| seen (quantised metrics)
        # raw history (y: lower is better) of the last HISTORY finite points and their steps;
        # append-only buffers trimmed every _SLACK points (the logical view is the tail)
        self._y: array[float] = array("d")
        self._st: array[int] = array("q")
        self.z_hist: list[float] = []  # z of the last 3 points (pre-onset drift)
        # excursion in progress (spike vs change decision pending)
        self.exc: dict[str, Any] | None = None
        self.quiet_until = 0  # global index before which no excursion opens
        # best level so far (running min of the level) and its last 3 * patience values
        self.best = math.nan
        self._bh_len = 3 * config.plateau_patience
        self._plat_mem = min(PLATEAU_MEMORY, config.plateau_patience // 2)
        self._plat_lag = min(LEVEL_LAG, config.plateau_patience // 2)
        self._bh: array[float] = array("d", [math.nan]) * self._bh_len
        self.reset_gi = 0
        self.reset_at = -1  # global index of the point at which the best level was last reset
        self.exact_from = 0  # best-level history before this index is persisted verbatim
        self.best_from = 0  # the best level is tracked from this global index on
        self.div_armed = True
        self.div_rearm = math.nan
        self.plateau_open = False  # a plateau was reported and the series has not improved since
        self.plateau_ref = math.nan
        # the last point at which the progress before it looked like a plateau's (_plateau_cond)
        self.plateau_shape_at = _NEVER
        # scalar-path caches, rebuilt from the raw history when missing (None)
        self._win: array[float] | None = None  # the last 12 values, sorted
        self._lv: array[float] = array("d")  # levels of the last 13 points, slot = index % 13
        self._sig = math.nan  # noise scale of the 16-point block _sig_blk
        self._sig_blk = -1
        # the steps of the points _ap_from .. n - 1 are evenly spaced by _stride (compact state)
        self._ap_from = 0
        self._stride = 0

    # ------------------------------------------------------------------ public API

    @property
    def hist_y(self) -> FloatArray:
        """The last HISTORY finite points (lower is better), as a new array."""
        return cast(FloatArray, _tail(self._y, min(self.n, HISTORY), np.float64))

    @property
    def hist_steps(self) -> IntArray:
        """Steps of :attr:`hist_y`, as a new array."""
        return cast(IntArray, _tail(self._st, min(self.n, HISTORY), np.int64))

    @property
    def best_hist(self) -> FloatArray:
        """The best level after each of the last 3 * patience points (NaN: not tracked), a copy."""
        return cast(FloatArray, _tail(self._bh, self._bh_len, np.float64))

    def update(self, steps: npt.ArrayLike, values: npt.ArrayLike) -> list[Anomaly]:
        """Feed new points (arrival order); returns the findings they complete, in order."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        va = np.asarray(values, dtype=np.float64).ravel()
        if st.shape != va.shape:
            raise ValueError(f"steps and values differ in length: {st.shape} vs {va.shape}")
        k = len(st)
        if k == 0:
            return []
        if k <= SHORT_BATCH:
            return self._update_short(st.tolist(), va.tolist())
        prev = np.int64(self.last_step if self.last_step is not None else _INT64_MIN)
        running = np.maximum.accumulate(np.concatenate([[prev], st]))[:-1]
        keep = st > running  # ignore replays / out-of-order points
        st, va = st[keep], va[keep]
        if len(st) == 0:
            return []
        self.last_step = int(st[-1])
        out: list[tuple[int, Anomaly]] = []  # (batch position, anomaly) to merge in order
        finite = np.isfinite(va)
        if not finite.all():
            self._non_finite(st, va, finite, out)
        elif self.in_non_finite:
            self.in_non_finite = False
        pos = np.flatnonzero(finite)
        if len(pos):
            batch = self._prepare(st[finite], va[finite] * self._sign)
            self._win = None  # the scalar path's caches are stale now
            self._sig_blk = -1
            for i, a in self._scan(batch):
                out.append((int(pos[i]), a))
        out.sort(key=lambda t: t[0])
        return [a for _, a in out]

    def to_state(self) -> dict[str, Any]:
        """Bounded JSON-serialisable state (NaN stored as None, float arrays as base64).

        The raw points are kept exactly (float32 only when that is lossless, as for metrics
        logged from float32 tensors); steps as a run-length code of their differences; of the
        best-level history only the entries the raw points cannot rebuild.
        """
        n = self.n
        h = min(n, HISTORY)
        L = self._bh_len
        ys = np.frombuffer(self._y, dtype=np.float64)[len(self._y) - h :]
        with np.errstate(over="ignore"):  # beyond float32's range: stored as float64
            y32 = ys.astype(np.float32)
        if bool((y32 == ys).all()):
            y_code = "f" + binascii.b2a_base64(y32.tobytes(), newline=False).decode()
        else:
            y_code = "d" + binascii.b2a_base64(ys.tobytes(), newline=False).decode()
        del ys  # release the buffer export of self._y
        # best-level entries of points before the series began are NaN and those from the first
        # rebuilt one on follow from the raw points: only the ones between are stored
        g0 = max(0, n - L)
        g1 = max(g0, min(n, self._first_rebuilt(n, h)))
        b0 = len(self._bh) - L + (g0 - (n - L))
        head = self._bh[b0 : b0 + (g1 - g0)]
        state: dict[str, Any] = {
            "v": STATE_VERSION,
            "direction": self.direction,
            "n": n,
            "last_step": self.last_step,
            "in_non_finite": self.in_non_finite,
            "resolution": None if math.isinf(self.resolution) else self.resolution,
            "y": y_code,
            "steps": self._steps_code(h),
            "z_hist": [_nan_to_none(v) for v in self.z_hist],
            "quiet_until": self.quiet_until,
            "bh": [L, binascii.b2a_base64(head.tobytes(), newline=False).decode()],
            "start": self._start,
            "reset_gi": self.reset_gi,
            "reset_at": self.reset_at,
            "best_from": self.best_from,
            "div_armed": self.div_armed,
            "div_rearm": _nan_to_none(self.div_rearm),
            "plateau_open": self.plateau_open,
            "plateau_ref": _nan_to_none(self.plateau_ref),
        }
        if self.exc is not None:
            state["exc"] = self.exc
        if self.exact_from > n - L:
            state["exact_from"] = self.exact_from
        if self.plateau_shape_at >= n - self._plat_mem:  # only while it can still count
            state["plateau_shape_at"] = self.plateau_shape_at
        return state

    @classmethod
    def from_state(cls, key: str, config: DetectorConfig, state: dict[str, Any]) -> SeriesDetector:
        """Restore a detector saved by :meth:`to_state` (same key and config expected).

        A state saved under a different ``plateau_patience`` is adapted (its best-level history
        is truncated or padded), so config changes between batches do not break restores.
        A state of another version raises ValueError (the caller starts the series afresh).
        """
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported detector state version {state.get('v')!r}")
        d = cls.__new__(cls)
        direction = cast(Direction, state["direction"]) if config.direction is None else config.direction
        if direction not in ("min", "max"):
            raise ValueError(f"bad direction in detector state: {direction!r}")
        d._setup(key, config, direction)
        n = d.n = int(state["n"])
        h = min(n, HISTORY)
        d.last_step = None if state["last_step"] is None else int(state["last_step"])
        d.in_non_finite = bool(state["in_non_finite"])
        d.resolution = math.inf if state["resolution"] is None else float(state["resolution"])
        y_code = str(state["y"])
        raw = binascii.a2b_base64(y_code[1:])
        if y_code[0] == "f":
            ys = np.frombuffer(raw, dtype=np.float32).astype(np.float64)
        else:
            ys = np.frombuffer(raw, dtype=np.float64)
        d._st = _unpack_steps(state["steps"])
        if len(ys) != h or len(d._st) != h:
            raise ValueError("detector state: history length does not match n")
        if len(state["steps"]) == 3:
            d._ap_from, d._stride = n - h, int(state["steps"][1])
        else:
            d._track_stride(np.frombuffer(d._st.tobytes(), dtype=np.int64), n - h)
        d._y = array("d", ys.tobytes())
        d.z_hist = [_none_to_nan(v) for v in state["z_hist"]]
        d.exc = state.get("exc")
        d.quiet_until = int(state["quiet_until"])
        d.reset_gi = int(state["reset_gi"])
        d.reset_at = int(state["reset_at"])
        d.best_from = int(state["best_from"])
        d.div_armed = bool(state["div_armed"])
        d.div_rearm = _none_to_nan(state["div_rearm"])
        d.plateau_open = bool(state["plateau_open"])
        d.plateau_ref = _none_to_nan(state["plateau_ref"])
        # optional: states saved before it existed still load (at worst one plateau is missed)
        d.plateau_shape_at = int(state.get("plateau_shape_at", _NEVER))
        saved_len, head_code = state["bh"]
        saved_len = int(saved_len)
        exact_from = int(state.get("exact_from", 0))
        head = np.frombuffer(binascii.a2b_base64(head_code), dtype=np.float64)
        bh = _rebuild_best(ys, n, saved_len, head, int(state["start"]), d.best_from, d.reset_at)
        want = d._bh_len
        bh = bh[-want:] if len(bh) >= want else np.concatenate([np.full(want - len(bh), np.nan), bh])
        d._bh = array("d", bh.tobytes())
        d.best = float(bh[-1])
        # entries the new config would not rebuild the same way are persisted verbatim from now on
        if want != saved_len or int(state["start"]) != d._start:
            exact_from = max(exact_from, n)
        d.exact_from = exact_from
        return d

    def _steps_code(self, h: int) -> list[int]:
        """The last h steps as [first, d1, c1, d2, c2, ...]: run lengths of their differences."""
        if h and self._ap_from <= self.n - h:
            first = self._st[len(self._st) - h]
            return [first, self._stride, h - 1] if h > 1 else [first]
        return _pack_steps(self._st, h)

    def _track_stride(self, steps: IntArray, g0: int) -> None:
        """Recompute _ap_from / _stride from the steps of the global points g0 .. n - 1."""
        if len(steps) < 2:
            self._ap_from, self._stride = g0, 0
            return
        d = np.diff(steps)
        last = int(d[-1])
        breaks = np.flatnonzero(d != last)
        self._ap_from = g0 + (int(breaks[-1]) + 1 if len(breaks) else 0)
        self._stride = last

    def _first_rebuilt(self, n: int, h: int) -> int:
        """Global index of the first best-level entry rebuilt from the raw points on restore."""
        first = n - h + HALF_WINDOW - 1 if n > h else 0  # its level needs 11 points before it
        # ... and it continues a running minimum: the oldest entry has no predecessor to rebuild from
        return max(first, self.exact_from, n - self._bh_len + 1)

    # ------------------------------------------------------------------ scalar path

    def _update_short(self, steps: list[int], values: list[float]) -> list[Anomaly]:
        """A short batch point by point: the same numbers and decisions as _prepare + _scan."""
        out: list[Anomaly] = []
        last = self.last_step if self.last_step is not None else _INT64_MIN
        isfinite = math.isfinite
        for step, v in zip(steps, values, strict=True):
            if step <= last:
                continue  # a replay / out-of-order point
            last = self.last_step = step
            if isfinite(v):
                self.in_non_finite = False
                self._finite_point(step, v * self._sign, out)
            elif not self.in_non_finite:
                self.in_non_finite = True
                self._non_finite_start(step, v, out)
        return out

    def _non_finite_start(self, step: int, v: float, out: list[Anomaly]) -> None:
        """The first point of a run of non-finite values (same finding as :meth:`_non_finite`)."""
        c = self.config
        if "non_finite" not in c.enabled_kinds:
            return
        if self.n < self._start and not c.non_finite_in_warmup:
            return
        text = "NaN" if math.isnan(v) else ("+inf" if v > 0 else "-inf")
        out.append(
            Anomaly(
                "non_finite",
                step,
                1.0,
                {
                    "message": f"{self.key} is {text} at step {step}",
                    "value": text,
                    "detected_at_step": step,
                    "direction": self.direction,
                },
            )
        )

    def _init_fast(self) -> array[float]:
        """Rebuild the scalar path's caches (sorted level window, recent levels) from the raw points."""
        h = min(self.n, HISTORY)
        ys = self._y
        tail = ys[len(ys) - min(h, PRED_WINDOW) :]
        win = array("d", sorted(tail[len(tail) - min(len(tail), HALF_WINDOW) :]))
        lv = array("d", [math.nan]) * (HALF_WINDOW + 1)
        m12 = _rolling_median12(np.frombuffer(tail.tobytes(), dtype=np.float64))
        n = self.n
        for j, v in enumerate(m12.tolist()[-(HALF_WINDOW + 1) :]):  # levels of the last points
            lv[(n - min(len(m12), HALF_WINDOW + 1) + j) % (HALF_WINDOW + 1)] = v
        self._lv = lv
        self._win = win
        self._sig_blk = -1
        return win

    def _block_scale(self, g: int, gi: int) -> float:
        """Noise scale of the 16-point block starting at global g (see :meth:`_scales`); the
        point gi is the last one in the raw buffer."""
        if g >= SCALE_DIFFS + 1:
            lo = g - (SCALE_DIFFS + 1)
        elif g - 1 >= MIN_SCALE_DIFFS:
            lo = 0
        else:
            return math.nan
        ys = self._y
        end = len(ys) - 1 - (gi - g)  # buffer position of global g (exclusive end of the values)
        vals = ys[end - (g - lo) : end]
        d = sorted([abs(b - a) for a, b in pairwise(vals)])
        k = len(d)
        a50 = d[(k - 1) // 2] / 0.954
        a75 = d[min(k - 1, (3 * k) // 4)] / 1.627
        return a50 if a50 >= a75 else a75

    def _finite_point(self, step: int, y: float, out: list[Anomaly]) -> None:
        """One finite point (y: lower is better): the preparation of :meth:`_prepare` on floats,
        then the quiet-point test of :meth:`_scan`; events go to :meth:`_point`."""
        win = self._win
        if win is None:
            win = self._init_fast()
        gi = self.n
        ys = self._y
        res = self.resolution  # the floor uses the differences before this point only
        if gi:
            dy = abs(y - ys[-1])
            if gi >= HALF_WINDOW:
                del win[bisect_left(win, ys[-HALF_WINDOW])]
        else:
            dy = 0.0
        insort(win, y)
        level = 0.5 * (win[5] + win[6]) if gi >= HALF_WINDOW - 1 else math.nan
        lvb = self._lv  # a ring: the slot of gi holds the level of gi - 13 until overwritten
        slot = gi % (HALF_WINDOW + 1)
        if gi >= PRED_WINDOW:
            med_b = lvb[slot - 1]  # (slot -1 wraps to the last slot)
            slope = (med_b - lvb[slot]) / HALF_WINDOW
            pred = med_b + slope * (HALF_WINDOW + 1) / 2
        else:
            slope = pred = math.nan
        lvb[slot] = level
        ys.append(y)
        sts = self._st
        if gi:
            ds = step - sts[-1]
            if ds != self._stride:
                self._stride = ds
                self._ap_from = gi - 1
        sts.append(step)
        if len(ys) > HISTORY + 1 + _SLACK:
            del ys[: len(ys) - HISTORY - 1]
            del sts[: len(sts) - HISTORY - 1]
        self.n = gi + 1
        if 0.0 < dy < res:
            self.resolution = dy
        blk = gi // SCALE_STRIDE
        if blk != self._sig_blk:
            self._sig = self._block_scale(blk * SCALE_STRIDE, gi)
            self._sig_blk = blk
        sig = self._sig
        if sig != sig:
            s = z = math.nan
        else:
            # as np.nan_to_num(pred): NaN -> 0, +-inf -> +-max float
            pn = (
                0.0
                if pred != pred
                else (pred if abs(pred) <= _FLOAT_MAX else math.copysign(_FLOAT_MAX, pred))
            )
            fl = 1e-6 * abs(pn) + 1e-12
            r = 0.0 if res == math.inf else res
            if r > fl:
                fl = r
            s = sig if sig >= fl else fl
            z = (y - pred) / s
        # the quiet-point test of _scan
        active = gi >= self._start
        best = self.best
        if active and gi >= self.best_from and level == level:
            best = level if best != best or level < best else best
        if self.exc is None and not (active and self._is_event(gi, z, s, level, best)):
            bh = self._bh
            bh.append(best)
            if len(bh) > self._bh_len + _SLACK:
                del bh[: len(bh) - self._bh_len]
            self.best = best
            zh = self.z_hist
            zh.append(z)
            if len(zh) > 3:
                del zh[0]
            return
        b = self._event_batch(step, y, gi, z, pred, slope, s, level)
        found: list[tuple[int, Anomaly]] = []
        self._point(b, 0, found)
        out.extend(a for _, a in found)

    def _is_event(self, gi: int, z: float, s: float, lv: float, best: float) -> bool:
        """Whether an active point needs the full per-point logic (the events of :meth:`_scan`)."""
        c = self.config
        if self._want_exc and abs(z) >= c.spike_threshold and gi >= self.quiet_until:
            return True
        if self._want_div:
            if self.div_armed:
                if lv - best >= c.divergence_threshold * s:
                    return True
            elif lv <= self.div_rearm and gi >= self.best_from:
                return True
        if self._want_plat:
            if self.plateau_open:
                return best <= self.plateau_ref - c.plateau_prior_progress * s
            return self._plateau_hit(gi, s, lv, best)
        return False

    def _plateau_hit(self, gi: int, s: float, lv: float, b3: float) -> bool:
        """:meth:`_plateau_cond` for one new point gi (best level b3) on floats, same arithmetic;
        like :meth:`_scan` it records gi in plateau_shape_at when the shape test holds."""
        c = self.config
        P = c.plateau_patience
        bh = self._bh  # the entries before this point; bh[-3P] is the oldest
        b1, b2 = bh[-2 * P], bh[-P]
        p2 = b1 - b2
        rho = c.plateau_prior_progress * s
        if p2 >= rho:  # (the cheap test first: False on NaN, as before the windows fill)
            p1 = bh[-3 * P] - b1
            if (
                p1 >= rho
                and p2 * p2 >= 3.0 * c.plateau_min_delta * s * p1
                and p1 <= 4.0 * p2
                and p2 <= 3.0 * p1
                and bh[-P - P // 3] - b2 >= 0.2 * p2
            ):
                self.plateau_shape_at = gi
        if gi - self.plateau_shape_at > self._plat_mem:
            return False
        md_s = c.plateau_min_delta * s
        if not (b2 - b3 < md_s and lv - b3 < md_s):
            return False
        return (
            self.plateau_shape_at == gi
            or bh[-P + self._plat_lag] - b3 < PLATEAU_SETTLED * c.plateau_min_delta * s
        )

    def _event_batch(
        self, step: int, y: float, gi: int, z: float, pred: float, slope: float, s: float, level: float
    ) -> _Batch:
        """A one-point batch for :meth:`_point`: the point and up to HISTORY points before it."""
        k = min(gi, HISTORY) + 1
        ext = _tail(self._y, k, np.float64)
        ext_steps = _tail(self._st, k, np.int64)
        return _Batch(
            np.array([y]),
            np.array([step], dtype=np.int64),
            np.array([gi], dtype=np.int64),
            np.array([z]),
            np.array([pred]),
            np.array([slope]),
            np.array([s]),
            np.array([level]),
            ext,
            ext_steps,
            k - 1,
        )

    # ------------------------------------------------------------------ non-finite

    def _non_finite(
        self, st: IntArray, va: FloatArray, finite: npt.NDArray[np.bool_], out: list[tuple[int, Anomaly]]
    ) -> None:
        nf = ~finite
        prev_nf = np.concatenate([[self.in_non_finite], nf[:-1]])
        starts = np.flatnonzero(nf & ~prev_nf)
        self.in_non_finite = bool(nf[-1])
        if "non_finite" not in self.config.enabled_kinds:
            return
        # finite points before each start, to know whether it falls in the warm-up
        fin = finite.astype(np.int64)
        finite_before = np.cumsum(fin)[starts] - fin[starts] + self.n
        for i, fb in zip(starts.tolist(), finite_before.tolist(), strict=True):
            if fb < self._start and not self.config.non_finite_in_warmup:
                continue
            v = float(va[i])
            text = "NaN" if math.isnan(v) else ("+inf" if v > 0 else "-inf")
            out.append(
                (
                    i,
                    Anomaly(
                        "non_finite",
                        int(st[i]),
                        1.0,
                        {
                            "message": f"{self.key} is {text} at step {int(st[i])}",
                            "value": text,
                            "detected_at_step": int(st[i]),
                            "direction": self.direction,
                        },
                    ),
                )
            )

    # ------------------------------------------------------------------ vectorised preparation

    def _prepare(self, steps: IntArray, y: FloatArray) -> _Batch:
        k = len(y)
        h = min(self.n, HISTORY)
        ext = np.concatenate([_tail(self._y, h, np.float64), y])
        ext_steps = np.concatenate([_tail(self._st, h, np.int64), steps])
        n0 = self.n
        gi = np.arange(n0, n0 + k, dtype=np.int64)
        p = np.arange(h, h + k)  # positions in ext
        m12 = _rolling_median12(ext)
        pred = np.full(k, np.nan)
        slope = np.full(k, np.nan)
        level = np.full(k, np.nan)
        ok = p >= PRED_WINDOW
        if ok.any():
            med_b = m12[p[ok] - HALF_WINDOW]
            med_a = m12[p[ok] - PRED_WINDOW]
            sl = (med_b - med_a) / HALF_WINDOW
            slope[ok] = sl
            pred[ok] = med_b + sl * (HALF_WINDOW + 1) / 2  # extrapolate from the window centre
        okl = p >= HALF_WINDOW - 1
        level[okl] = m12[p[okl] - (HALF_WINDOW - 1)]
        s = self._scales(ext, h, n0, gi, pred)
        z = (y - pred) / s
        self.n = n0 + k
        self._y = array("d", ext[-HISTORY:].tobytes())
        self._st = array("q", ext_steps[-HISTORY:].tobytes())
        self._track_stride(ext_steps, n0 - h)
        return _Batch(y, steps, gi, z, pred, slope, s, level, ext, ext_steps, h)

    def _scales(self, ext: FloatArray, h: int, n0: int, gi: IntArray, pred: FloatArray) -> FloatArray:
        """Noise scale per point: from the |diffs| of <= 64 points before its 16-point block."""
        d = np.abs(np.diff(ext))  # d[j] = |ext[j+1] - ext[j]|, ext[j] has global index n0 - h + j
        g = (gi // SCALE_STRIDE) * SCALE_STRIDE  # block start (global)
        blocks, inv = np.unique(g, return_inverse=True)
        sig = np.full(len(blocks), np.nan)
        # diffs among global values [g-65, g-1] -> diff indices (global) g-65 .. g-2
        end = blocks - 1 - (n0 - h)  # exclusive end in d (ext position of value g-1)
        full = blocks - (SCALE_DIFFS + 1) >= 0
        if full.any():
            win = sliding_window_view(d, SCALE_DIFFS)  # win[j] = d[j : j + 64]
            sig[full] = _scale_of(win[end[full] - SCALE_DIFFS])
        for b in np.flatnonzero(~full & (blocks - 1 >= MIN_SCALE_DIFFS)).tolist():
            lo = max(0, int(blocks[b]) - (SCALE_DIFFS + 1) - (n0 - h))
            sig[b] = _scale_of(d[lo : int(end[b])][None, :])[0]
        s = sig[inv]
        # floor: a constant or heavily quantised series must not divide by ~0, so the scale is
        # at least the resolution of the data (the smallest non-zero difference seen so far)
        dn = np.where(d > 0, d, np.inf)
        new_d = dn[max(h - 1, 0) :]
        lead = [self.resolution] * (2 if h == 0 else 1)
        res = np.minimum.accumulate(np.concatenate([lead, new_d]))[: len(gi)]
        if len(new_d):
            self.resolution = float(min(self.resolution, float(new_d.min())))
        floor = np.maximum(1e-6 * np.abs(np.nan_to_num(pred)) + 1e-12, np.where(np.isinf(res), 0.0, res))
        return cast(FloatArray, np.where(np.isnan(s), np.nan, np.maximum(s, floor)))

    # ------------------------------------------------------------------ event scan

    def _scan(self, b: _Batch) -> list[tuple[int, Anomaly]]:
        """Walk the batch: numpy between events, Python at events (candidates, triggers)."""
        c = self.config
        en = c.enabled_kinds
        out: list[tuple[int, Anomaly]] = []
        k = len(b.y)
        want_exc = bool(en & {"spike", "level_shift", "divergence"})
        cur = 0
        while cur < k:
            if self.exc is not None:
                self._point(b, cur, out)
                cur += 1
                continue
            # Vectorised look-ahead over a block: running best and the first event.
            end = min(k, cur + 4096)
            lv = b.level[cur:end]
            active = b.gi[cur:end] >= self._start
            lv_act = np.where(active & (b.gi[cur:end] >= self.best_from), lv, np.nan)
            best = np.fmin.accumulate(np.concatenate([[self.best], lv_act]))[1:]
            ev = np.zeros(end - cur, dtype=bool)
            zz = b.z[cur:end]
            if want_exc:
                ev |= active & (np.abs(zz) >= c.spike_threshold) & (b.gi[cur:end] >= self.quiet_until)
            s = b.s[cur:end]
            if "divergence" in en:
                if self.div_armed:
                    ev |= active & ((lv - best) >= c.divergence_threshold * s)
                else:
                    # re-arm once the level (whose window lags) holds only post-finding points
                    ev |= active & (lv <= self.div_rearm) & (b.gi[cur:end] >= self.best_from)
            shape_at: IntArray | None = None  # plateau_shape_at as of each point
            if "plateau" in en:
                if self.plateau_open:
                    ev |= active & (best <= self.plateau_ref - c.plateau_prior_progress * s)
                else:
                    bh = np.concatenate([self.best_hist, best])
                    plat, shape_at = self._plateau_cond(bh, self._bh_len, s, lv, int(b.gi[cur]))
                    ev |= active & plat
            hits = np.flatnonzero(ev)
            stop = int(hits[0]) if len(hits) else end - cur
            # commit the quiet points before the event
            if stop > 0:
                self._commit_best(best[:stop])
                if shape_at is not None:
                    self.plateau_shape_at = int(shape_at[stop - 1])
                self.z_hist = (self.z_hist + [float(v) for v in zz[max(0, stop - 3) : stop]])[-3:]
            cur += stop
            if cur < end and len(hits):
                self._point(b, cur, out)
                cur += 1
        return out

    def _plateau_cond(
        self, bh: FloatArray, first: int, s: FloatArray, lv: FloatArray, gi0: int
    ) -> tuple[npt.NDArray[np.bool_], IntArray]:
        """Plateau test for the points bh[first:] (bh: best-level history, lower is better), the
        first of them global point gi0; also the last point at which the shape test held, as of
        each point (plateau_shape_at, to commit).

        Over three consecutive patience windows W1, W2, W3 (W3 the most recent) the best level
        improved by p1, p2, p3. The shape test: p1 and p2 >= prior_progress, the trend did not
        already fade (p2^2 / p1, i.e. the progress expected over W3 by a geometric fit of p1, p2,
        is >= 3 min_delta), progress was steady (p1 and p2 within a factor 4 / 3 of each other)
        and still going at the end of W2. A plateau is a flat W3 (p3 < min_delta and the current
        level within min_delta of the best: not getting worse, that is divergence) while the
        shape test holds, or held within the last :data:`PLATEAU_MEMORY` points and W3 after its
        first LEVEL_LAG points is flatter still (:data:`PLATEAU_SETTLED`). Smooth convergence and
        an LR-step drop that settles (large p2 after a small p1) fail the shape test.
        """
        c = self.config
        P = c.plateau_patience
        j = np.arange(first, len(bh))
        b0, b1, b2, b3 = bh[j - 3 * P], bh[j - 2 * P], bh[j - P], bh[j]
        p1, p2, p3 = b0 - b1, b1 - b2, b2 - b3
        rho = c.plateau_prior_progress * s
        with np.errstate(invalid="ignore", divide="ignore"):
            fade = p2 * p2 >= 3.0 * c.plateau_min_delta * s * p1
        flat = (p3 < c.plateau_min_delta * s) & (lv - b3 < c.plateau_min_delta * s)
        # steady progress before: not the tail of a fast transition (p1 >> p2), nor a burst of
        # progress that settles (p2 >> p1: an LR step drop, whose new level is then flat)
        steady = (p1 <= 4.0 * p2) & (p2 <= 3.0 * p1)
        # ... and still going at the end of W2 (its last third brought >= 20% of p2): an abrupt
        # stop, not a transition that settled exponentially within W2
        late = bh[j - P - P // 3] - b2
        steady &= late >= 0.2 * p2
        shape = (p1 >= rho) & (p2 >= rho) & fade & steady
        # After an abrupt stop the best level (a running minimum of the lagging 12-point median)
        # creeps down for a few more points, so p3 falls below min_delta only some points after
        # onset + P, when W2's last third already lies on the plateau and fails "still going"
        # (8% of the plateaus were missed so on seed 4): a shape seen in the last few points counts
        gi = np.arange(gi0, gi0 + len(j), dtype=np.int64)
        shape_at = np.maximum.accumulate(np.where(shape, gi, self.plateau_shape_at))
        settled = bh[j - P + self._plat_lag] - b3 < PLATEAU_SETTLED * c.plateau_min_delta * s
        recent = (gi - shape_at <= self._plat_mem) & settled
        hit: npt.NDArray[np.bool_] = flat & ((shape_at == gi) | recent)
        return hit, shape_at

    def _reset_best(self, onset_gi: int, at_gi: int) -> None:
        """Forget the best level after a change (found at point at_gi); plateau waits 2 * patience
        points after it."""
        self.best = math.nan
        self._bh = array("d", [math.nan]) * self._bh_len
        self.reset_gi = onset_gi
        self.reset_at = at_gi
        self.best_from = onset_gi + HALF_WINDOW

    def _commit_best(self, best: FloatArray) -> None:
        if len(best):
            self.best = float(best[-1])
            bh = self._bh
            bh.frombytes(np.ascontiguousarray(best, dtype=np.float64).tobytes())
            if len(bh) > self._bh_len + _SLACK:
                del bh[: len(bh) - self._bh_len]

    def _point(self, b: _Batch, i: int, out: list[tuple[int, Anomaly]]) -> None:
        """Full per-point logic (same decisions the vectorised scan takes for quiet points)."""
        c = self.config
        en = c.enabled_kinds
        gi = int(b.gi[i])
        active = gi >= self._start
        z = float(b.z[i])
        lv = float(b.level[i])
        s = float(b.s[i])
        best = self.best
        if active and gi >= self.best_from and not math.isnan(lv):
            best = lv if math.isnan(best) else min(best, lv)
        old_hist = self.best_hist  # a copy
        self._commit_best(np.array([best]))
        pre = list(self.z_hist)
        self.z_hist = ([*self.z_hist, z])[-3:]
        if not active:
            return
        if self.exc is not None:
            self._excursion_step(b, i, out)
            return
        opened = False
        if (
            en & {"spike", "level_shift", "divergence"}
            and abs(z) >= c.spike_threshold
            and gi >= self.quiet_until
        ):
            # a candidate: re-check against a sharper baseline (the cheap two-median baseline
            # errs by ~0.6 noise units, enough for heavy-tailed noise to cross the threshold)
            p = b.ext0 + i
            pred, slope = _local_line(b.ext_y[max(0, p - PRED_WINDOW) : p], s)
            # ... and a steadier noise scale: all the (up to 95) differences of the history, not
            # only the last 64 (a 64-difference quantile is ~15% off, often enough for a 5-sigma
            # heavy-tail draw to pass as a 7-sigma spike); never below the scan's scale
            d = np.abs(np.diff(b.ext_y[max(0, p - HISTORY) : p]))
            if len(d) > SCALE_DIFFS:
                s = max(s, float(_scale_of(d[None, :])[0]))
            z = (float(b.y[i]) - pred) / s
            opened = abs(z) >= c.spike_threshold
        if opened:
            pre_drift = float(np.mean(pre)) * math.copysign(1.0, z) if len(pre) == 3 else 0.0
            self.exc = {
                "gi": gi,
                "step": int(b.steps[i]),
                "sign": 1 if z > 0 else -1,
                "pred": pred,
                "slope": slope,
                "s": s,
                "zs": [z],
                "ys": [float(b.y[i])],
                "out": 1,  # consecutive points still out, from the onset
                "pre_drift": pre_drift if math.isfinite(pre_drift) else 0.0,
            }
            return
        if "divergence" in en:
            if self.div_armed and lv - best >= c.divergence_threshold * s:
                self._slow_divergence(b, i, best, out)
                return
            if not self.div_armed and lv <= self.div_rearm and gi >= self.best_from:
                self.div_armed = True
        if "plateau" in en:
            if self.plateau_open:
                if best <= self.plateau_ref - c.plateau_prior_progress * s:
                    self.plateau_open = False
            else:
                hit, shape_at = self._plateau_cond(
                    np.concatenate([old_hist, [best]]), len(old_hist), np.array([s]), np.array([lv]), gi
                )
                self.plateau_shape_at = int(shape_at[0])
                if hit[0]:
                    self._plateau(b, i, best, out)

    # ------------------------------------------------------------------ incidents

    def _excursion_step(self, b: _Batch, i: int, out: list[tuple[int, Anomaly]]) -> None:
        """One more point of an open excursion: decide spike vs change when the data allows."""
        c = self.config
        e = cast(dict[str, Any], self.exc)
        gi = int(b.gi[i])
        dt = gi - int(e["gi"])
        zf = (float(b.y[i]) - (e["pred"] + e["slope"] * dt)) / e["s"]  # against the frozen baseline
        e["zs"].append(zf)
        e["ys"].append(float(b.y[i]))
        sign = e["sign"]
        if e["out"] == dt and sign * zf >= c.spike_return:
            e["out"] = dt + 1
        returned = sign * zf < c.spike_return
        if returned and e["out"] <= c.spike_max_len:
            self.exc = None
            self.quiet_until = gi + 1
            self._emit_spike(e, int(b.steps[i]), out, i)
            return
        if len(e["zs"]) < c.change_confirm:
            return
        self.exc = None
        zs = np.asarray(e["zs"])
        if sign * float(np.median(zs)) < c.change_persist:
            # it did not persist: a (long-ish) spike
            self.quiet_until = gi + 1
            self._emit_spike(e, int(b.steps[i]), out, i)
            return
        # a persistent change: the windows must refill with post-change data before the next one
        self.quiet_until = int(e["gi"]) + PRED_WINDOW
        t = np.arange(len(zs), dtype=np.float64)
        tc = t - t.mean()
        trend_t = float(tc @ zs / math.sqrt(tc @ tc)) * sign  # slope / SE with unit noise
        old = e["pred"] * self._sign
        new_level = float(np.median(e["ys"][-3:]))
        new = new_level * self._sign
        ratio = abs(new) / abs(old) if old != 0 else math.inf
        exploded = ratio >= c.explode_ratio or ratio <= 1 / c.explode_ratio
        trending = trend_t >= c.trend_t or e["pre_drift"] >= c.pre_drift
        bad = sign > 0
        step = int(e["step"])
        det = int(b.steps[i])
        mag = float(np.median(np.abs(zs)))
        if bad and (trending or exploded):
            if not self.div_armed:
                return  # still the same divergence
            # a trend crosses the threshold a few points after it starts: its onset is the break
            # of the best "own trend, then ramp / bend" fit over the 24 points before the
            # excursion and the excursion itself (searched up to 16 points back)
            p_exc = b.ext0 + i - dt
            w0 = max(0, p_exc - PRED_WINDOW)
            k, _, _ = _break_fit(b.ext_y[w0 : b.ext0 + i + 1], p_exc - w0 - 16, p_exc - w0, e["s"])
            step = int(b.ext_steps[w0 + k])
            self._divergence(step, det, e["pred"], new_level, mag, "abrupt", trend_t, i, gi, out)
            return
        # the best level restarts once the level window holds only post-change points
        self._reset_best(int(e["gi"]), gi)
        if not bad and trending:
            return  # faster improvement (e.g. an LR drop settling): not a step, not reported
        if "level_shift" not in self.config.enabled_kinds or not self.div_armed:
            return  # (during an unresolved divergence: part of that incident)
        ex, nw = e["pred"] * self._sign, new_level * self._sign
        out.append(
            (
                i,
                Anomaly(
                    "level_shift",
                    step,
                    _severity(mag, c.change_persist),
                    {
                        "message": (
                            f"{self.key} shifted from {_fmt(ex)} to {_fmt(nw)} at step {step} and stayed "
                            f"({mag:.1f} noise units, {'worse' if bad else 'better'} for a {self.direction}imised metric)"
                        ),
                        "value": nw,
                        "expected": ex,
                        "shift": nw - ex,
                        "robust_z": mag,
                        "threshold": c.spike_threshold,
                        "noise_scale": e["s"],
                        "window": c.change_confirm,
                        "direction": self.direction,
                        "worse": bad,
                        "detected_at_step": det,
                    },
                ),
            )
        )

    def _emit_spike(self, e: dict[str, Any], det: int, out: list[tuple[int, Anomaly]], i: int) -> None:
        # during an unresolved divergence the series is off its course (an explosion saturating,
        # a partial recovery): its excursions belong to that incident, already reported
        if "spike" not in self.config.enabled_kinds or not self.div_armed:
            return
        z = float(e["zs"][0])
        v = e["ys"][0] * self._sign
        ex = e["pred"] * self._sign
        up = v > ex
        out.append(
            (
                i,
                Anomaly(
                    "spike",
                    int(e["step"]),
                    _severity(z, self.config.spike_threshold),
                    {
                        "message": (
                            f"{self.key} {'jumped' if up else 'dropped'} to {_fmt(v)} at step {e['step']}, "
                            f"{abs(z):.1f} MADs {'above' if up else 'below'} the rolling median {_fmt(ex)}"
                        ),
                        "value": v,
                        "expected": ex,
                        "robust_z": abs(z),
                        "threshold": self.config.spike_threshold,
                        "noise_scale": e["s"],
                        "length": int(e["out"]),
                        "window": PRED_WINDOW,
                        "direction": self.direction,
                        "detected_at_step": det,
                    },
                ),
            )
        )

    def _slow_divergence(self, b: _Batch, i: int, best: float, out: list[tuple[int, Anomaly]]) -> None:
        """The level drifted far above the best: a trend (divergence) or a step (level shift)."""
        c = self.config
        s = float(b.s[i])
        p = b.ext0 + i
        # onset: after the last point at which the level was still within 2 noise units of the best
        lo = max(0, p - HISTORY + 1)
        seg = b.ext_y[lo : p + 1]
        lv = np.array([np.nan] * len(seg))
        if len(seg) >= HALF_WINDOW:
            lv[HALF_WINDOW - 1 :] = _rolling_median12(seg)
        near = np.flatnonzero(lv <= best + 2.0 * s)
        o_lv = int(near[-1]) + 1 if len(near) else 0
        o = max(0, o_lv - LEVEL_LAG)
        # step or trend, and where did it start? The best continuous "own trend, then a step /
        # ramp / bend" fit over [o - 24, now], its break searched around the level-based guess
        w0 = max(0, o - PRED_WINDOW)
        w = seg[w0:]
        k, shape, _ = _break_fit(w, o - w0 - 10, o - w0 + HALF_WINDOW, s)
        onset_pos = w0 + k
        slope = _linear_sse(w[k:])[0] if len(w) - k >= 3 else 0.0
        # a step whose new level keeps rising is the start of a divergence, not a level shift
        m = len(w) - k
        rising = m >= 3 and slope * math.sqrt(m * (m * m - 1) / 12.0) / s >= c.trend_t
        is_step = shape == "step" and not rising
        step = int(b.ext_steps[lo + onset_pos])
        det = int(b.steps[i])
        lvl = float(b.level[i])
        z = (lvl - best) / s
        if is_step:
            self._reset_best(int(b.gi[i]) - (p - (lo + onset_pos)), int(b.gi[i]))
            if "level_shift" not in c.enabled_kinds:
                return
            ex, nw = best * self._sign, lvl * self._sign
            out.append(
                (
                    i,
                    Anomaly(
                        "level_shift",
                        step,
                        _severity(z, c.divergence_threshold),
                        {
                            "message": (
                                f"{self.key} shifted from {_fmt(ex)} to {_fmt(nw)} around step {step} and stayed "
                                f"({z:.1f} noise units worse for a {self.direction}imised metric)"
                            ),
                            "value": nw,
                            "expected": ex,
                            "shift": nw - ex,
                            "robust_z": z,
                            "threshold": c.divergence_threshold,
                            "noise_scale": s,
                            "window": HALF_WINDOW,
                            "direction": self.direction,
                            "worse": True,
                            "detected_at_step": det,
                        },
                    ),
                )
            )
            return
        self._divergence(step, det, best, lvl, z, "trend", slope / s, i, int(b.gi[i]), out)

    def _divergence(
        self,
        step: int,
        det: int,
        expected_y: float,
        value_y: float,
        z: float,
        how: str,
        trend: float,
        i: int,
        gi: int,
        out: list[tuple[int, Anomaly]],
    ) -> None:
        c = self.config
        old_best = self.best
        self.div_armed = False
        s_ref = abs(value_y - expected_y) / max(z, 1e-9)
        self.div_rearm = (
            old_best if not math.isnan(old_best) else expected_y
        ) + 0.5 * c.divergence_threshold * s_ref
        self._reset_best(gi, gi)
        if "divergence" not in c.enabled_kinds:
            return
        ex, v = expected_y * self._sign, value_y * self._sign
        verb = "rose" if self.direction == "min" else "fell"
        out.append(
            (
                i,
                Anomaly(
                    "divergence",
                    step,
                    _severity(z, c.divergence_threshold if how == "trend" else c.change_persist),
                    {
                        "message": (
                            f"{self.key} is diverging: it {verb} from {_fmt(ex)} to {_fmt(v)} since step {step} "
                            f"({z:.1f} noise units, {how}, {self.direction}imised metric)"
                        ),
                        "value": v,
                        "expected": ex,
                        "robust_z": z,
                        "threshold": c.divergence_threshold if how == "trend" else c.spike_threshold,
                        "trend_t": trend,
                        "shape": how,
                        "direction": self.direction,
                        "detected_at_step": det,
                    },
                ),
            )
        )

    def _plateau(self, b: _Batch, i: int, best: float, out: list[tuple[int, Anomaly]]) -> None:
        c = self.config
        P = c.plateau_patience
        s = float(b.s[i])
        # the progress before: W2 as of the last point the shape test held (this one, or one of
        # the last PLATEAU_MEMORY, see _plateau_cond), so it is the progress the test judged
        d = int(b.gi[i]) - self.plateau_shape_at
        self.plateau_open = True
        self.plateau_ref = best
        self.plateau_shape_at = _NEVER  # re-armed only by new progress
        if "plateau" not in c.enabled_kinds:
            return
        bh = self._bh
        p2 = (float(bh[-2 * P - 1 - d]) - float(bh[-P - 1 - d])) / s
        p3 = (float(bh[-P - 1]) - best) / s
        # onset: the break of a continuous line-then-flat fit over the last 2 patience windows
        p = b.ext0 + i
        lo = max(0, p - 2 * P + 1)
        seg = b.ext_y[lo : p + 1]
        onset = lo + _hinge_split(seg) if len(seg) >= 8 else max(0, p - P)
        step = int(b.ext_steps[onset])
        det = int(b.steps[i])
        v = float(b.level[i]) * self._sign
        out.append(
            (
                i,
                Anomaly(
                    "plateau",
                    step,
                    _severity(p2, c.plateau_prior_progress),
                    {
                        "message": (
                            f"{self.key} stopped improving around step {step}: its best level {_fmt(best * self._sign)} "
                            f"moved {p3:.1f} noise units over the last {P} points after improving "
                            f"{p2:.1f} over the {P} before"
                        ),
                        "value": v,
                        "best": best * self._sign,
                        "progress_before": p2,
                        "progress_recent": p3,
                        "threshold": c.plateau_min_delta,
                        "window": P,
                        "noise_scale": s,
                        "direction": self.direction,
                        "detected_at_step": det,
                    },
                ),
            )
        )


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def _none_to_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


_DEFAULT = DetectorConfig()
_SYSTEM_GAUGE_DEFAULT = DetectorConfig(enabled_kinds=_SYSTEM_KINDS)
_SYSTEM_COUNTER_DEFAULT = DetectorConfig(enabled_kinds=frozenset({"non_finite"}))
