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

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
STATE_VERSION = 1

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
    # outlier_run (CohortDetector)
    cohort_min_runs: int = 5
    cohort_threshold: float = 6.0
    cohort_rel_floor: float = 0.05  # sibling spread is at least 5% of |median| (tiny cohorts)
    cohort_confirm_buckets: int = 2
    cohort_max_runs: int = 500
    cohort_buckets_per_octave: int = 4

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
    )
    for name in positive:
        v = getattr(c, name)
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if c.explode_ratio <= 1:
        raise ValueError(f"explode_ratio must be > 1, got {c.explode_ratio!r}")
    if not 0 <= c.cohort_rel_floor < 10:
        raise ValueError(f"cohort_rel_floor must be in [0, 10), got {c.cohort_rel_floor!r}")
    if c.spike_return >= c.spike_threshold:
        raise ValueError("spike_return must be below spike_threshold")
    bounds = {
        "warmup_steps": (0, 10**9),
        "spike_max_len": (1, 50),
        "change_confirm": (2, 50),
        "plateau_patience": (5, 5000),
        "cohort_min_runs": (2, 10_000),
        "cohort_confirm_buckets": (1, 100),
        "cohort_max_runs": (10, 100_000),
        "cohort_buckets_per_octave": (1, 32),
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
    part = np.partition(sliding_window_view(x, HALF_WINDOW), [5, 6], axis=1)
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


def _break_fit(y: FloatArray, k_lo: int, k_hi: int) -> tuple[int, str, float]:
    """Best continuous "line, then a change" fit of y; the change starts at index k in [k_lo, k_hi].

    The model is ``a + b t + c g(t - k)`` with g a step (``t >= k``), a ramp (``max(t - k, 0)``,
    a linear divergence) or a bend (``max(t - k, 0) ** 2``, an accelerating one, e.g. an
    exponential explosion, whose onset a ramp fit would place late). The baseline line
    absorbs the ordinary trend (a loss still decaying), so the onset is where the series left
    its own trend, not where it crossed a threshold. Returns (k, shape, c): the shape whose best
    break explains the most variance. Cost O(len(y) * (k_hi - k_lo)), run only at findings.
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
        if gain[j] > best[0]:
            best = (float(gain[j]), int(k[j]), shape, float(hy[j] / hh[j]) if hh[j] > 1e-12 else 0.0)
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

    Cost: O(points) numpy work per batch plus Python work only at candidate points (points past
    a threshold), so clean data runs at ~1-2M points/s; state is O(HISTORY + 2 * patience).
    """

    def __init__(self, key: str, config: DetectorConfig) -> None:
        self.key = key
        self.config = config
        self.direction: Direction = config.direction_for(key)
        self._sign = 1.0 if self.direction == "min" else -1.0
        self._start = max(config.warmup_steps, MIN_HISTORY)
        self.n = 0  # finite points seen
        self.last_step: int | None = None
        self.in_non_finite = False
        self.resolution = math.inf  # smallest non-zero |difference| seen (quantised metrics)
        self.hist_y: FloatArray = np.empty(0, dtype=np.float64)
        self.hist_steps: IntArray = np.empty(0, dtype=np.int64)
        self.z_hist: list[float] = []  # z of the last 3 points (pre-onset drift)
        # excursion in progress (spike vs change decision pending)
        self.exc: dict[str, Any] | None = None
        self.quiet_until = 0  # global index before which no excursion opens
        # best level so far (running min of the level) and its recent history
        self.best = math.nan
        self.best_hist: FloatArray = np.full(3 * config.plateau_patience, np.nan)
        self.reset_gi = 0
        self.best_from = 0  # the best level is tracked from this global index on
        self.div_armed = True
        self.div_rearm = math.nan
        self.plateau_open = False  # a plateau was reported and the series has not improved since
        self.plateau_ref = math.nan

    # ------------------------------------------------------------------ public API

    def update(self, steps: npt.ArrayLike, values: npt.ArrayLike) -> list[Anomaly]:
        """Feed new points (arrival order); returns the findings they complete, in order."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        va = np.asarray(values, dtype=np.float64).ravel()
        if st.shape != va.shape:
            raise ValueError(f"steps and values differ in length: {st.shape} vs {va.shape}")
        if len(st) == 0:
            return []
        prev = np.int64(self.last_step if self.last_step is not None else np.iinfo(np.int64).min)
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
            for i, a in self._scan(batch):
                out.append((int(pos[i]), a))
        out.sort(key=lambda t: t[0])
        return [a for _, a in out]

    def to_state(self) -> dict[str, Any]:
        """Bounded JSON-serialisable state (NaN stored as None)."""
        return {
            "v": STATE_VERSION,
            "direction": self.direction,
            "n": self.n,
            "last_step": self.last_step,
            "in_non_finite": self.in_non_finite,
            "resolution": None if math.isinf(self.resolution) else self.resolution,
            "hist_y": self.hist_y.tolist(),
            "hist_steps": self.hist_steps.tolist(),
            "z_hist": [_nan_to_none(v) for v in self.z_hist],
            "exc": self.exc,
            "quiet_until": self.quiet_until,
            "best": _nan_to_none(self.best),
            "best_hist": [_nan_to_none(float(v)) for v in self.best_hist],
            "reset_gi": self.reset_gi,
            "best_from": self.best_from,
            "div_armed": self.div_armed,
            "div_rearm": _nan_to_none(self.div_rearm),
            "plateau_open": self.plateau_open,
            "plateau_ref": _nan_to_none(self.plateau_ref),
        }

    @classmethod
    def from_state(cls, key: str, config: DetectorConfig, state: dict[str, Any]) -> SeriesDetector:
        """Restore a detector saved by :meth:`to_state` (same key and config expected).

        A state saved under a different ``plateau_patience`` is adapted (its best-level history
        is truncated or padded), so config changes between batches do not break restores.
        """
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported detector state version {state.get('v')!r}")
        d = cls(key, config)
        d.direction = cast(Direction, state["direction"]) if config.direction is None else d.direction
        d._sign = 1.0 if d.direction == "min" else -1.0
        d.n = int(state["n"])
        d.last_step = None if state["last_step"] is None else int(state["last_step"])
        d.in_non_finite = bool(state["in_non_finite"])
        d.resolution = math.inf if state["resolution"] is None else float(state["resolution"])
        d.hist_y = np.asarray(state["hist_y"], dtype=np.float64)
        d.hist_steps = np.asarray(state["hist_steps"], dtype=np.int64)
        d.z_hist = [_none_to_nan(v) for v in state["z_hist"]]
        d.exc = state["exc"]
        d.quiet_until = int(state["quiet_until"])
        d.best = _none_to_nan(state["best"])
        bh = np.asarray([_none_to_nan(v) for v in state["best_hist"]], dtype=np.float64)
        want = 3 * config.plateau_patience
        d.best_hist = bh[-want:] if len(bh) >= want else np.concatenate([np.full(want - len(bh), np.nan), bh])
        d.reset_gi = int(state["reset_gi"])
        d.best_from = int(state["best_from"])
        d.div_armed = bool(state["div_armed"])
        d.div_rearm = _none_to_nan(state["div_rearm"])
        d.plateau_open = bool(state["plateau_open"])
        d.plateau_ref = _none_to_nan(state["plateau_ref"])
        return d

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
        h = len(self.hist_y)
        ext = np.concatenate([self.hist_y, y])
        ext_steps = np.concatenate([self.hist_steps, steps])
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
        self.hist_y = ext[-HISTORY:].copy()
        self.hist_steps = ext_steps[-HISTORY:].copy()
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
            if "plateau" in en:
                bh = np.concatenate([self.best_hist, best])
                if self.plateau_open:
                    ev |= active & (best <= self.plateau_ref - c.plateau_prior_progress * s)
                else:
                    ev |= active & self._plateau_cond(bh, len(self.best_hist), s, lv)
            hits = np.flatnonzero(ev)
            stop = int(hits[0]) if len(hits) else end - cur
            # commit the quiet points before the event
            if stop > 0:
                self._commit_best(best[:stop])
                self.z_hist = (self.z_hist + [float(v) for v in zz[max(0, stop - 3) : stop]])[-3:]
            cur += stop
            if cur < end and len(hits):
                self._point(b, cur, out)
                cur += 1
        return out

    def _plateau_cond(
        self, bh: FloatArray, first: int, s: FloatArray, lv: FloatArray
    ) -> npt.NDArray[np.bool_]:
        """Plateau test for the points bh[first:] (bh: best-level history, lower is better).

        Over three consecutive patience windows W1, W2, W3 (W3 the most recent) the best level
        improved by p1, p2, p3: a plateau is p3 < min_delta while p1 and p2 >= prior_progress
        and the trend did not already fade (p2^2 / p1, i.e. the progress
        expected over W3 by a geometric fit of p1, p2, is >= 3 min_delta), progress was steady
        (p1 and p2 within a factor 4 / 3 of each other), and the current level is within
        min_delta of the best (flat, not getting worse: that is divergence). Smooth convergence
        and an LR-step drop that settles (large p2 after a small p1) fail the last tests.
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
        hit: npt.NDArray[np.bool_] = flat & (p1 >= rho) & (p2 >= rho) & fade & steady
        return hit

    def _reset_best(self, onset_gi: int) -> None:
        """Forget the best level after a change; plateau waits 2 * patience points after it."""
        self.best = math.nan
        self.best_hist[:] = np.nan
        self.reset_gi = onset_gi
        self.best_from = onset_gi + HALF_WINDOW

    def _commit_best(self, best: FloatArray) -> None:
        if len(best):
            self.best = float(best[-1])
            self.best_hist = np.concatenate([self.best_hist, best])[-len(self.best_hist) :]

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
        old_hist = self.best_hist
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
            elif self._plateau_cond(
                np.concatenate([old_hist, [best]]), len(old_hist), np.array([s]), np.array([lv])
            )[0]:
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
            k, _, _ = _break_fit(b.ext_y[w0 : b.ext0 + i + 1], p_exc - w0 - 16, p_exc - w0)
            step = int(b.ext_steps[w0 + k])
            self._divergence(step, det, e["pred"], new_level, mag, "abrupt", trend_t, i, gi, out)
            return
        # the best level restarts once the level window holds only post-change points
        self._reset_best(int(e["gi"]))
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
        k, shape, _ = _break_fit(w, o - w0 - 10, o - w0 + HALF_WINDOW)
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
            self._reset_best(int(b.gi[i]) - (p - (lo + onset_pos)))
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
        self._reset_best(gi)
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
        self.plateau_open = True
        self.plateau_ref = best
        if "plateau" not in c.enabled_kinds:
            return
        bh = self.best_hist
        p2 = (float(bh[-2 * P - 1]) - float(bh[-P - 1])) / s
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
