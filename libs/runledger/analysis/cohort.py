"""Cohort detectors over the sibling runs of one (experiment, metric key) (numpy only, no I/O).

:class:`CohortDetector` reports

- ``outlier_run``: a run whose curve departs from its siblings' (judged on every new point), or
  whose final value is far from the finished siblings' finals (judged on :meth:`~CohortDetector.finish`);
- ``level_shift`` with ``evidence["scope"] == "runs"``: the finals of the last few finished runs
  all moved away from the finals of the runs finished before them (a metric shifting *across*
  runs, e.g. after a code or data change).

The conventions of :mod:`runledger.analysis.detection` apply (robust noise units, severity
``z / (z + threshold)``, one finding per incident, ``Anomaly.step`` = onset,
``evidence["detected_at_step"]`` = the point that made the finding certain, a plain-sentence
``evidence["message"]``). Both directions count: a run far *better* than its siblings is an
outlier too, since it usually means a different setup.

State is kept per member (one run), so the service stores only the runs that changed
(:meth:`~CohortDetector.take_dirty_members`, a few hundred bytes each); everything cohort-wide
(the per-step sibling statistics, the finish order, the level-shift baseline) is derived from
the members, and :meth:`~CohortDetector.from_members` rebuilds it exactly.
"""

from __future__ import annotations

import base64
import math
import struct
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from runledger.analysis.detection import STATE_VERSION, Anomaly, DetectorConfig, _fmt, _severity

# --------------------------------------------------------------------------- tunables
# The grid and the summary are fixed (the member state depends on them); the judgement's
# tunables are DetectorConfig fields (cohort_*), per experiment / metric.

FINE_PER_OCTAVE = 16  # sibling statistics are kept on a log-spaced grid of 16 nodes per octave ...
COARSE_RATIO = 4  # ... a member stores its whole curve at 16 / 4 = 4 buckets per octave ...
RING = 10  # ... and its last 10 fine bins (enough for the next coarse node to complete)
STEP_SCALE = 16  # the grid is log2(1 + step / 16): steps below ~16 share few nodes
PERSIST_N = 5  # streak bits kept per test (the onset is the first point of the streak, <= 5 back;
# DetectorConfig.cohort_confirm_buckets is at most this)
_MASK = (1 << (PERSIST_N - 1)) - 1
NOISE_GROUP = 16  # a run's own point noise is re-estimated every 16 first differences
FINAL_TAIL = 5  # the final value of a run is the median of its last 5 finite points
FINAL_STEP_RATIO = 1.25  # finals are compared only between runs whose last steps are within 25%
LEVEL_MAX_BASELINE = 200  # the level-shift baseline is the latest 200 earlier runs at most
SMALL_CALL = 12  # calls with at most this many points take the scalar (no numpy) path
SK_MAX = 16  # points since the EWMA restarted, counted up to this (its noise has settled by then)
X_SETTLE = 3  # an onset estimate is ended only by an EWMA of at least this many residuals after its first
# the reference's slack (cohort_interp_unc x the curvature measure) is 1 + _EXTRAP times larger
# when it is extrapolated. On a smooth curve a line through two nodes is off by ~1/8 of the measure
# between them (hence cohort_interp_unc = 0.125) and by ~1x one bin beyond; but the measure of
# node medians is mostly their scatter, not curvature, and 2x (as before) kept clean cohorts silent
_EXTRAP = 1.0
# The judgement (DetectorConfig): a point is judged against cohort_threshold, the bar raised only
# for a run whose own noise could carry a clean run there (cohort_noise_allow spreads plus
# cohort_noise_z of its noise, per test), so a departure of a quiet run confirms as soon as it
# reaches the threshold, with no margin added to the spread.

_IQR_TO_SIGMA = 1.0 / 1.349
_NOISE_FROM_ABS_DIFF = math.sqrt(math.pi) / 2  # E|x1 - x2| = 2 sigma / sqrt(pi) for Gaussian noise
_F32 = struct.Struct("<f")


def _f32(x: float) -> float:
    """``x`` rounded to float32: what the packed state keeps, so memory and restore agree."""
    return float(_F32.unpack(_F32.pack(x))[0])


def _edges(per_octave: int) -> list[int]:
    """First integer step of every log-spaced bin ``floor(per_octave * log2(1 + step / STEP_SCALE))``."""
    out = [0]
    k = 1
    while out[-1] < 2**62:
        out.append(math.ceil(STEP_SCALE * (2.0 ** (k / per_octave) - 1.0)))
        k += 1
    return out


_EDGES_F = _edges(FINE_PER_OCTAVE)
_EDGES_C = _EDGES_F[::COARSE_RATIO]
_EDGES_F_NP = np.asarray(_EDGES_F, dtype=np.int64)


def _mid(edges: list[int], i: int) -> float:
    """Mean step of the integers of bin i (the position of a bin mean of evenly logged points)."""
    return 0.5 * (edges[i] + edges[i + 1] - 1)


_POS_F = [_mid(_EDGES_F, i) for i in range(len(_EDGES_F) - 1)]
_POS_C = [_mid(_EDGES_C, i) for i in range(len(_EDGES_C) - 1)]
_POS_F_NP = np.asarray(_POS_F, dtype=np.float64)
_HAS_F = [_EDGES_F[i] < _EDGES_F[i + 1] for i in range(len(_EDGES_F) - 1)]  # bins that hold a step
_PREV_F: list[int] = []  # the nearest bin below that can hold a step (-1: none)
for _i in range(len(_HAS_F)):
    _j = _i - 1
    while _j >= 0 and not _HAS_F[_j]:
        _j -= 1
    _PREV_F.append(_j)
_NEXT_F: list[int] = [0] * len(_HAS_F)  # the nearest bin above that can hold a step
for _i in range(len(_HAS_F) - 1, -1, -1):
    _j = _i + 1
    while _j < len(_HAS_F) and not _HAS_F[_j]:
        _j += 1
    _NEXT_F[_i] = _j if _j < len(_HAS_F) else -1


# the nodes the reference of a point in fine bin g reads (lo, hi, and the three below lo for the
# extrapolation and the curvature), by g * 2 + (point in the upper half of the bin); -1: none. A version counter per
# node (-1 reads the last one, which no step reaches) keys the per-run memo of the reference.
_REFN: list[tuple[int, int, int, int, int]] = []
for _g in range(len(_HAS_F)):
    for _upper in (False, True):
        _lo = _g if _upper else _PREV_F[_g]
        _hi = _NEXT_F[_g] if _upper else _g
        _p1 = _PREV_F[_lo] if _lo >= 0 else -1
        _p2 = _PREV_F[_p1] if _p1 >= 0 else -1
        _REFN.append((_lo, _hi, _p1, _p2, _PREV_F[_p2] if _p2 >= 0 else -1))


def _pack(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str) -> list[float]:
    out: list[float] = np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64).tolist()
    return out


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _gapped(bits: int, streak: int) -> int:
    """Points back to the onset of a raw streak of ``streak`` points ending at bit 0 of ``bits``
    (bit i: the point i back was beyond the bar; PERSIST_N bits): when the point before the streak
    was not beyond but the one before that was, the streak was broken by one point of noise and the
    departure began with the run of points before the break (within the bits kept)."""
    if streak + 1 < PERSIST_N and (bits >> (streak + 1)) & 1:
        rest = bits >> (streak + 1)
        streak += 1 + (rest ^ (rest + 1)).bit_length() - 1
    return min(streak, PERSIST_N)


# --------------------------------------------------------------------------- members


class _Member:
    """One run of the cohort. Persisted fields are listed in :meth:`state`; the rest is derived."""

    __slots__ = (
        "b0",
        "bf",
        "cache",
        "cb",
        "ccnt",
        "contrib",
        "csum",
        "curve",
        "dn",
        "fb",
        "fcnt",
        "fj",
        "flagged",
        "fo",
        "fsum",
        "g0",
        "ncnt",
        "noise",
        "nsum",
        "rg",
        "ring",
        "rk",
        "rn",
        "ro",
        "rz",
        "sd",
        "sk",
        "sm",
        "su",
        "synced",
        "ts",
        "tv",
        "u",
        "up",
        "xd",
        "xu",
    )

    def __init__(self) -> None:
        self.curve: list[float] = []  # completed coarse bucket means from bucket b0 (nan: no point)
        self.b0 = -1
        self.cb = -1  # open coarse bucket (-1: none), its sum and count
        self.csum = 0.0
        self.ccnt = 0
        self.ring: list[float] = []  # the last <= RING completed fine bins, the last one is rg
        self.rg = -1
        self.g0 = -1  # first fine bin of the run
        self.fb = -1  # open fine bin, its sum and count
        self.fsum = 0.0
        self.fcnt = 0
        self.tv: list[float] = []  # last FINAL_TAIL values (float32) and their steps
        self.ts: list[int] = []
        self.up = 0  # bit i: the point i back from the last was judged beyond +threshold
        self.dn = 0  # ... beyond -threshold
        self.su = 0  # the same for the smoothed test
        self.sd = 0
        self.sm = math.nan  # EWMA of the run's residuals from the sibling reference, in spreads
        self.sk = SK_MAX  # residuals in it after the first since it restarted (capped at SK_MAX)
        # step where the EWMA last went beyond +threshold (xu) / -threshold (xd) and has stayed
        # near or beyond it since (-1: not now): the onset estimate of a departure that confirms
        # later, when a noisy run's raised bar or a streak broken by noise held it back
        self.xu = -1
        self.xd = -1
        self.nsum = 0.0  # running sum / count of |first differences| of the current noise group
        self.ncnt = 0
        self.noise = math.nan  # point noise of the run (nan: not known yet)
        self.u = 0  # cohort update sequence number of the last change
        self.fo = -1  # finish order (-1: running)
        self.bf = -1  # finish order where the level-shift baseline started when this run finished
        self.flagged = False  # outlier_run reported (once per run)
        self.fj = False  # final value judged
        # points judged with fewer than cohort_min_runs siblings at their step (the run was ahead):
        # its stored curve is rechecked from fine bin rk on as the siblings catch up (-1: none);
        # rz: signed count of consecutive rechecked bins beyond the bar, the first of them ro;
        # rn: the run's point noise when marked (early noise is larger: the recheck uses the max)
        self.rk = -1
        self.rn = 0.0
        self.ro = -1
        self.rz = 0
        # derived
        self.contrib: dict[int, float] = {}  # fine node -> the value this run adds to it
        self.synced = -1  # fine bins below this (and below the ring) have their final contribution
        self.cache: tuple[Any, ...] | None = None

    @property
    def last_step(self) -> int:
        return self.ts[-1] if self.ts else -1

    @property
    def final(self) -> float:
        return _median(self.tv)

    @property
    def level(self) -> float:
        """Where the run ended, less noisy than :attr:`final`: the median of the final and the
        means of its last 3 fine bins (the last ~10% of its steps once past a few hundred; the
        last bin may hold few points, the median keeps one odd estimate out)."""
        est = [self.final, *(v for v in self.ring[-3:] if v == v)]
        return _median(est)

    def state(self) -> dict[str, Any]:
        """JSON-ready state: float arrays as base64 little-endian float32, sums as JSON floats."""
        st: dict[str, Any] = {"v": STATE_VERSION, "u": self.u}
        if self.curve:
            st["c"] = _pack(self.curve)
            st["b0"] = self.b0
        if self.ring:
            st["r"] = _pack(self.ring)
            st["rg"] = self.rg
            st["g0"] = self.g0
        if self.cb >= 0:
            st["o"] = [self.cb, self.ccnt, self.fb, self.fcnt]
        # running sums stay float64 (exact round trip), packed: shorter than JSON numbers
        st["s"] = base64.b64encode(
            np.asarray([self.csum, self.fsum, self.nsum], dtype="<f8").tobytes()
        ).decode()
        if self.tv:
            # the tail values, the noise, (while judging) the residual EWMA and (while marked for a
            # recheck) the noise when marked, float32 too
            extra = [self.sm, self.rn] if self.rk >= 0 else [self.sm] if self.sm == self.sm else []
            st["t"] = _pack([*self.tv, self.noise, *extra])
            st["ts"] = [self.ts[0]] + [b - a for a, b in zip(self.ts, self.ts[1:], strict=False)]
        young = self.sm == self.sm and self.sk < SK_MAX  # the EWMA restarted a few points ago
        if self.up or self.dn or self.su or self.sd or young:
            st["p"] = [self.up, self.dn, self.su, self.sd] + ([self.sk] if young else [])
        st["n"] = self.ncnt
        if self.fo >= 0:
            st["f"] = [self.fo, self.bf, int(self.fj)]
        if self.flagged:
            st["x"] = 1
        if self.rk >= 0:
            st["k"] = [self.rk] if self.ro < 0 and self.rz == 0 else [self.rk, self.ro, self.rz]
        if self.xu >= 0 or self.xd >= 0:
            st["e"] = [self.xu, self.xd]
        return st

    @classmethod
    def load(cls, st: Mapping[str, Any]) -> _Member:
        if st.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported cohort member state version {st.get('v')!r}")
        m = cls()
        m.u = int(st["u"])
        if "c" in st:
            m.curve = _unpack(st["c"])
            m.b0 = int(st["b0"])
        if "r" in st:
            m.ring = _unpack(st["r"])
            m.rg = int(st["rg"])
            m.g0 = int(st["g0"])
        if "o" in st:
            m.cb, m.ccnt, m.fb, m.fcnt = (int(x) for x in st["o"])
        sums = np.frombuffer(base64.b64decode(st["s"]), dtype="<f8").tolist()
        m.csum, m.fsum, m.nsum = float(sums[0]), float(sums[1]), float(sums[2])
        if "t" in st:
            packed = _unpack(st["t"])
            m.ts = np.cumsum(np.asarray(st["ts"], dtype=np.int64)).tolist()
            k = len(m.ts)
            m.tv, m.noise = packed[:k], packed[k]
            m.sm = packed[k + 1] if len(packed) > k + 1 else math.nan
            m.rn = packed[k + 2] if len(packed) > k + 2 else 0.0
        if "p" in st:
            p = [int(x) for x in st["p"]] + [0, 0]
            m.up, m.dn, m.su, m.sd = p[:4]
            if len(st["p"]) > 4:
                m.sk = p[4]
        m.ncnt = int(st["n"])
        if "f" in st:
            m.fo, m.bf, m.fj = int(st["f"][0]), int(st["f"][1]), bool(st["f"][2])
        m.flagged = bool(st.get("x", 0))
        if "k" in st:
            k3 = [int(x) for x in st["k"]]
            m.rk, m.ro, m.rz = (k3[0], -1, 0) if len(k3) == 1 else (k3[0], k3[1], k3[2])
        if "e" in st:  # absent in states saved before the onset estimate (and while not beyond)
            m.xu, m.xd = int(st["e"][0]), int(st["e"][1])
        return m


# --------------------------------------------------------------------------- detector


class CohortDetector:
    """``outlier_run`` and cross-run ``level_shift`` over the sibling runs of one (experiment, key).

    Curve (every point, O(1) amortised). Each run keeps a bounded summary of its curve: the
    means of its points in log-spaced buckets of 4 per octave (``floor(4 log2(1 + step/16))``,
    ~45 buckets for 20k steps) and the means of its last 10 bins of a 4x finer grid. From these
    every run contributes one value per fine node (16 per octave) it has passed: the fine-bin
    mean while it is recent, the interpolation of its coarse buckets afterwards. The cohort keeps
    each node's contributions sorted, so a node's median and interquartile range are O(1). A new
    point at step ``s`` is compared with the siblings' median interpolated at ``s`` between the
    two nodes around it (extrapolated from the two nodes just below ``s`` when the siblings have
    not passed it yet, as in a fleet where runs advance together), leaving the run's own
    contributions out:

        u = (value - ref) / spread

    in sibling spreads, where ``spread`` = max(IQR / 1.349, ``cohort_rel_floor`` * |ref|) of the
    siblings plus the line's own uncertainty: ``cohort_interp_unc`` times how far the node below
    lies off the line (the curvature: a line is exact on a straight stretch), 2x that when
    extrapolating. (It was a share of the change between the two nodes, which widened the spread
    by 4-9% on every sloped stretch, so departures sitting just beyond ``cohort_threshold`` waited
    for noise to carry them over.) A node counts only with ``cohort_min_runs`` siblings.
    The run's own point noise (mean |first difference| of groups of 16 points) is *not* added to
    the spread, which delayed slow drifts: two tests run side by side (:meth:`_point`), the raw
    point ``u`` (abrupt departures) and an EWMA of ``u`` (``cohort_smooth_alpha``; drifts, the
    noise divided out), and either confirms with ``cohort_confirm_buckets`` consecutive points
    beyond its bar; the bar is ``cohort_threshold``, raised only for a run whose own noise could
    carry a clean run there (``cohort_noise_allow`` + ``cohort_noise_z`` noise units of that
    test). The EWMA takes a residual beyond the raw test's bar as that bar, so one wild point of
    heavy-tailed noise cannot carry it past its bar for a streak. The onset is the first point of
    the confirming streak (of a raw streak: of the points beyond the bar before a one-point break,
    :func:`_gapped`), or earlier where the EWMA (or a rechecked unit) went beyond the threshold
    itself and stayed within what its noise explains since (:meth:`_cross`): a noisy run's raised
    bar, or a streak broken by noise, delays certainty, not the estimated onset. That crossing is
    judged in the siblings' own spread (without the line's uncertainty, which widens the spread the
    tests use by 5-10% and held the estimate back ~10 points on slow departures) and dated back
    by half the EWMA's lag behind a steadily growing residual ((1 - alpha) / alpha points).

    Runs ahead: a point with too few siblings at its step is not judged; the run is marked to
    be rechecked from that fine bin, and when the siblings' data reaches it (any run completing a
    fine bin at or above the marker), its stored bin and bucket means there are judged against
    the siblings' fine bins (:meth:`_recheck`); the onset is the departure's step, as if judged
    in time.

    Final value (:meth:`finish`): the median of the run's last 5 points against the finals of
    the finished siblings of a comparable length (last step within 25%), robust z with the
    MAD, at least ``cohort_min_runs`` of them (a run that finished too early is judged when
    enough siblings have finished). A run is flagged ``outlier_run`` at most once.

    Cross-run level shift (:meth:`finish`): finished runs form a sequence in finish order; each
    is summarised by its level (:attr:`_Member.level`: the final and its last fine bins, less
    noisy than the final). When the last ``cohort_level_runs`` levels (of comparable lengths) lie on
    average beyond ``cohort_level_threshold`` robust units, each beyond ``cohort_level_each`` (and
    half their median) on the same side, from the levels of the >= ``cohort_level_min_baseline`` runs
    finished before them (since the last shift; scale: the larger of the MAD and the capped mean absolute
    deviation, the MAD of a few runs being unreliable), a ``level_shift`` (scope "runs") is
    attached to the run whose finish completed the evidence. The new level then becomes the baseline (the
    finish order of the first shifted run is kept on every later finished member), so a shift
    is reported once.

    Bounded: at most ``cohort_max_runs`` members; the least recently updated one is forgotten
    (it stops counting as a sibling; :meth:`take_dirty_members` reports it as None).
    """

    def __init__(self, key: str, config: DetectorConfig) -> None:
        self.key = key
        self.config = config
        self._m: dict[str, _Member] = {}
        self._nodes: dict[int, list[float]] = {}  # fine node -> sorted contributions
        self._ver = [0] * len(_HAS_F)  # fine node -> change counter (for the per-run cache)
        self._seq = 0  # update sequence (max member u)
        self._fseq = 0  # finish sequence (max member fo + 1)
        self._dirty: dict[str, bool] = {}  # run_id -> True: changed, False: evicted
        self._curve_on = "outlier_run" in config.enabled_kinds
        self._shift_on = "level_shift" in config.enabled_kinds
        self._pend: set[str] = set()  # runs with a recheck marker (_Member.rk >= 0)
        # the judgement's settings, unpacked once (the per-point path reads them every point)
        self._thr = config.cohort_threshold
        self._confirm = config.cohort_confirm_buckets
        self._conf = (1 << self._confirm) - 1
        self._alpha = config.cohort_smooth_alpha
        self._allow = config.cohort_noise_allow
        self._nz = config.cohort_noise_z
        # standard deviation of the EWMA of white noise of unit variance k points after it started
        # at one of them: sqrt(c^2k + alpha / (2 - alpha) (1 - c^2k)), c = 1 - alpha (1 at k = 0,
        # the raw point's, down to sqrt(alpha / (2 - alpha))): the smoothed test's noise term
        c2 = (1.0 - self._alpha) ** 2
        st = self._alpha / (2.0 - self._alpha)
        self._nz_s = [self._nz * math.sqrt(c2**k + st * (1.0 - c2**k)) for k in range(SK_MAX + 1)]
        self._nz_s_np = np.asarray(self._nz_s)
        # the onset estimate (_Member.xu / xd) holds until the EWMA, settled (X_SETTLE residuals
        # in), is below the threshold by more than 2 of its noise units (a dip noise does not
        # explain), or below half the threshold
        self._x_noise = [2.0 * math.sqrt(c2**k + st * (1.0 - c2**k)) for k in range(SK_MAX + 1)]
        self._x_noise_np = np.asarray(self._x_noise)
        self._x_min = 0.5 * self._thr
        # the EWMA of a steadily growing residual trails it by (1 - alpha) / alpha points (2.3 at
        # 0.3), but the point where it crosses is also the one whose noise carried it over (early
        # on a departure that hovers near the threshold): the onset estimate is dated back by half
        # that lag (1 point at 0.3; and no further than the EWMA's residuals since it restarted).
        # The full lag brought the median delay of bench.anomaly_quality's sibling outliers from
        # 2-4 to 1-3 points, but reported more of them over 5 points early (outside the match window)
        self._x_lag = min(int(0.5 * (1.0 - self._alpha) / self._alpha + 1e-9), PERSIST_N - 1)
        self._interp = config.cohort_interp_unc

    # ------------------------------------------------------------------ public API

    def update(self, run_id: str, steps: npt.ArrayLike, values: npt.ArrayLike) -> list[tuple[str, Anomaly]]:
        """Feed new points of one run; returns (run_id, anomaly) findings.

        Points whose step is not above the run's last step (replays), negative steps and
        non-finite values (the series detectors report those) are ignored.
        """
        if isinstance(steps, np.ndarray) and isinstance(values, np.ndarray) and steps.size <= SMALL_CALL:
            if steps.shape != values.shape:
                raise ValueError(f"steps and values differ in length: {steps.shape} vs {values.shape}")
            if steps.size == 1:  # the hot path of a fleet: one point per event
                return self._update_one(run_id, int(steps.item()), float(values.item()))
            if steps.size == 0:
                return []
            return self._update_small(run_id, steps.ravel().tolist(), values.ravel().tolist())
        st = np.asarray(steps, dtype=np.int64).ravel()
        va = np.asarray(values, dtype=np.float64).ravel()
        if st.shape != va.shape:
            raise ValueError(f"steps and values differ in length: {st.shape} vs {va.shape}")
        if len(st) <= SMALL_CALL:
            return self._update_small(run_id, st.tolist(), va.tolist()) if len(st) else []
        return self._update_batch(run_id, st, va)

    def finish(self, run_id: str) -> list[tuple[str, Anomaly]]:
        """The run ended: judge its final value (and finals left unjudged), then the cross-run level."""
        m = self._m.get(run_id)
        if m is None or m.fo >= 0:
            return []  # unknown (never logged this key, or forgotten) or already finished
        rg = m.rg
        if m.fcnt:
            self._close_fine(m)
        if m.ccnt:
            self._close_coarse(m)
        m.cb, m.fb = -1, -1
        self._resync(m)
        out: list[tuple[str, Anomaly]] = []
        if self._pend and m.rg != rg:
            self._closed(run_id, m, out)
        elif m.rk >= 0:
            self._recheck(run_id, m, out)  # its last bin closed: it may be judged to its end now
        prev = self._latest_finished()
        m.fo = self._fseq
        self._fseq += 1
        m.bf = prev.bf if prev is not None else 0
        self._touch(run_id, m)
        if self._curve_on:
            for rid, r in self._m.items():
                if r.fo >= 0 and not r.fj:
                    self._judge_final(rid, r, out)
        if self._shift_on and m.tv:
            self._judge_level(run_id, m, out)
        return out

    def take_dirty_members(self) -> dict[str, dict[str, Any] | None]:
        """States of the members changed since the last call; None for members forgotten since."""
        out: dict[str, dict[str, Any] | None] = {}
        for rid, alive in self._dirty.items():
            m = self._m.get(rid)
            out[rid] = m.state() if alive and m is not None else None
        self._dirty.clear()
        return out

    def members(self) -> dict[str, dict[str, Any]]:
        """Every member's state (to rebuild the detector, e.g. under a new configuration)."""
        return {rid: m.state() for rid, m in self._m.items()}

    @classmethod
    def from_members(
        cls, key: str, config: DetectorConfig, members: Mapping[str, dict[str, Any]]
    ) -> CohortDetector:
        """Rebuild a detector from member states (:meth:`members` / :meth:`take_dirty_members`)."""
        d = cls(key, config)
        loaded = sorted(((str(rid), _Member.load(st)) for rid, st in members.items()), key=lambda x: x[1].u)
        for rid, m in loaded[-config.cohort_max_runs :]:  # a smaller cap keeps the latest members
            d._m[rid] = m
            d._seq = max(d._seq, m.u)
            if m.fo >= 0:
                d._fseq = max(d._fseq, m.fo + 1)
            if m.rk >= 0:
                d._pend.add(rid)
            d._resync(m)
        return d

    # ------------------------------------------------------------------ bookkeeping

    def _member(self, run_id: str) -> _Member:
        m = self._m.get(run_id)
        if m is None:
            if len(self._m) >= self.config.cohort_max_runs:
                oldest = min(self._m, key=lambda r: self._m[r].u)
                self._forget(oldest)
            m = self._m[run_id] = _Member()
        return m

    def _forget(self, run_id: str) -> None:
        m = self._m.pop(run_id)
        self._pend.discard(run_id)
        for g in list(m.contrib):
            self._drop(m, g)
        self._dirty[run_id] = False

    def _touch(self, run_id: str, m: _Member) -> None:
        self._seq += 1
        m.u = self._seq
        self._dirty[run_id] = True

    def _latest_finished(self) -> _Member | None:
        best: _Member | None = None
        for r in self._m.values():
            if r.fo >= 0 and (best is None or r.fo > best.fo):
                best = r
        return best

    def _put(self, m: _Member, g: int, v: float) -> None:
        lst = self._nodes.get(g)
        if lst is None:
            lst = self._nodes[g] = []
        insort(lst, v)
        self._ver[g] += 1
        m.contrib[g] = v

    def _drop(self, m: _Member, g: int) -> None:
        v = m.contrib.pop(g)
        lst = self._nodes[g]
        del lst[bisect_left(lst, v)]
        self._ver[g] += 1

    def _close_fine(self, m: _Member) -> None:
        """Complete the open fine bin into the ring (contributions follow in :meth:`_resync`)."""
        g, v = m.fb, _f32(m.fsum / m.fcnt)
        if m.rg < 0:
            m.ring, m.g0 = [v], g
        else:
            m.ring.extend([math.nan] * (g - m.rg - 1))
            m.ring.append(v)
            if len(m.ring) > RING:
                del m.ring[: len(m.ring) - RING]
        m.rg = g
        m.fsum, m.fcnt = 0.0, 0

    def _close_coarse(self, m: _Member) -> None:
        c, v = m.cb, _f32(m.csum / m.ccnt)
        if m.b0 < 0:
            m.b0 = c
        else:
            m.curve.extend([math.nan] * (c - (m.b0 + len(m.curve))))
        m.curve.append(v)
        m.csum, m.ccnt = 0.0, 0

    def _resync(self, m: _Member) -> None:
        """Make the run's node contributions what its summary says (a pure function of it).

        Ring bins contribute their means; older fine bins (from the run's first) contribute the
        interpolation of the completed coarse buckets around them, once both exist.
        """
        if m.rg < 0:
            return
        rs = m.rg - len(m.ring) + 1
        start = m.g0 if m.synced < 0 else min(m.synced, rs)
        # below the ring: coarse interpolation
        if start < rs:
            pos: list[float] = []
            val: list[float] = []
            for i, v in enumerate(m.curve):
                if v == v:  # finite (not nan)
                    pos.append(_POS_C[m.b0 + i])
                    val.append(v)
            synced = rs
            for g in range(start, rs):
                want = math.nan
                if _HAS_F[g]:
                    p = _POS_F[g]
                    j = bisect_left(pos, p)
                    if j == len(pos):
                        synced = min(synced, g)  # not bracketed yet: a later coarse bucket will
                    elif pos[j] == p:
                        want = val[j]
                    elif j > 0:  # (j == 0: before the run's first coarse node, never bracketed)
                        w = (p - pos[j - 1]) / (pos[j] - pos[j - 1])
                        want = _f32(val[j - 1] + w * (val[j] - val[j - 1]))
                self._set(m, g, want)
            m.synced = synced
        else:
            m.synced = rs
        # the ring (most bins unchanged since the last close: compared here, not in _set)
        contrib = m.contrib
        for i, v in enumerate(m.ring):
            have = contrib.get(rs + i)
            if (have is None and v != v) or have == v:
                continue
            self._set(m, rs + i, v)

    def _set(self, m: _Member, g: int, want: float) -> None:
        have = m.contrib.get(g)
        if have is not None and have == want:
            return
        if have is not None:
            self._drop(m, g)
        if want == want:
            self._put(m, g, want)

    # ------------------------------------------------------------------ reference

    def _node(self, g: int, own: float | None) -> tuple[float, float, int] | None:
        """(median, spread) of the siblings' contributions at node g, leaving out ``own``."""
        lst = self._nodes.get(g)
        if lst is None:
            return None
        n = len(lst)
        e = n
        if own is not None:
            e = bisect_left(lst, own)
            n -= 1
        if n < self.config.cohort_min_runs:
            return None

        def q(p: float) -> float:
            x = p * (n - 1)
            k = int(x)
            a = lst[k] if k < e else lst[k + 1]
            if x == k:
                return a
            b = lst[k + 1] if k + 1 < e else lst[k + 2]
            return a + (x - k) * (b - a)

        med = q(0.5)
        spread = max((q(0.75) - q(0.25)) * _IQR_TO_SIGMA, self.config.cohort_rel_floor * abs(med), 1e-12)
        return med, spread, n

    def _ref(
        self, m: _Member, g: int, upper: bool
    ) -> tuple[float, float, float, float, float, int, float] | None:
        """Line through two sibling nodes around (or just below) fine bin g's point.

        Returns (p1, m1, p2, m2, spread, n_siblings, core): core is the share of the spread that
        is the siblings' own (their IQR or the floor, without the line's uncertainty); None when
        the siblings do not cover it.
        Memoised per run on the nodes' change counters, so it is recomputed only when a node
        it reads changes.
        """
        k2 = 2 * g + upper
        lo, hi, p1, p2, p3 = _REFN[k2]
        ver = self._ver
        key = (k2, ver[lo], ver[hi], ver[p1], ver[p2], ver[p3])
        c = m.cache
        if c is not None and c[0] == key:
            return c[1]  # type: ignore[no-any-return]
        res = self._ref_compute(m, lo, hi)
        m.cache = (key, res)
        return res

    def _ref_compute(
        self, m: _Member, lo: int, hi: int
    ) -> tuple[float, float, float, float, float, int, float] | None:
        if lo < 0:
            return None
        own = m.contrib
        a = self._node(lo, own.get(lo))
        b = self._node(hi, own.get(hi)) if hi >= 0 else None
        if a is not None and b is not None:
            p1, p2, n1, n2 = _POS_F[lo], _POS_F[hi], a, b
            extra = 0.0
        else:
            # the siblings have not passed the upper node (they advance with this run): go on
            # along the line through the two nodes below (<= 2 fine bins, ~9% of the step)
            if a is None:
                lo = _PREV_F[lo]
                if lo < 0:
                    return None
                a = self._node(lo, own.get(lo))
                if a is None:
                    return None
            lo2 = _PREV_F[lo]
            if lo2 < 0:
                return None
            c = self._node(lo2, own.get(lo2))
            if c is None:
                return None
            p1, p2, n1, n2 = _POS_F[lo2], _POS_F[lo], c, a
            lo = lo2
            extra = 1.0
        # the line is exact on a straight stretch: its error grows with the curvature, measured
        # by how far the node below lies off the line (without one: the change along the line)
        below = _PREV_F[lo]
        nb = self._node(below, own.get(below)) if below >= 0 else None
        if nb is not None:
            dev = abs(nb[0] - (n1[0] + (_POS_F[below] - p1) / (p2 - p1) * (n2[0] - n1[0])))
        else:
            dev = abs(n2[0] - n1[0])
        core = max(n1[1], n2[1])
        spread = core + self._interp * (1.0 + _EXTRAP * extra) * dev
        return p1, n1[0], p2, n2[0], spread, min(n1[2], n2[2]), core / spread

    # ------------------------------------------------------------------ update paths

    def _update_small(self, run_id: str, steps: list[int], values: list[float]) -> list[tuple[str, Anomaly]]:
        m = self._member(run_id)
        out: list[tuple[str, Anomaly]] = []
        if m.fo >= 0:
            return out  # points after finish: the run is judged, its summary stays as it ended
        last = m.ts[-1] if m.ts else -1
        rg = m.rg
        changed = False
        point = self._point
        for s, v in zip(steps, values, strict=True):
            if s <= last or not math.isfinite(v):
                continue
            changed = True
            last = s
            point(run_id, m, s, v, out)
        if changed:
            if m.sm == m.sm:
                m.sm = _f32(m.sm)  # what the packed state keeps
            self._touch(run_id, m)
            if self._pend and m.rg != rg:
                self._closed(run_id, m, out)
        return out

    def _update_one(self, run_id: str, s: int, v: float) -> list[tuple[str, Anomaly]]:
        """:meth:`_update_small` for one point (no list building)."""
        m = self._m.get(run_id)
        if m is None:
            m = self._member(run_id)
        out: list[tuple[str, Anomaly]] = []
        if m.fo >= 0 or s <= (m.ts[-1] if m.ts else -1) or not math.isfinite(v):
            return out
        rg = m.rg
        self._point(run_id, m, s, v, out)
        if m.sm == m.sm:
            m.sm = _f32(m.sm)  # what the packed state keeps
        self._seq += 1
        m.u = self._seq
        self._dirty[run_id] = True
        if self._pend and m.rg != rg:
            self._closed(run_id, m, out)
        return out

    def _point(self, run_id: str, m: _Member, s: int, v: float, out: list[tuple[str, Anomaly]]) -> None:
        """One new point: judge it against the sibling reference, then add it to the summary.

        The judgement is inlined here (the single-point path is the hot one in a fleet); the
        batch path (:meth:`_update_batch`) computes the same tests vectorised. Two tests, either
        confirms with ``cohort_confirm_buckets`` consecutive points beyond its bar on one side:

        - raw: ``z`` = (value - reference) / spread of the point itself (abrupt departures);
        - smoothed: an EWMA of ``z`` (``cohort_smooth_alpha``), so the point noise is divided
          out rather than added to the scale and slow drifts confirm soon after they reach the
          threshold.

        The bar is ``cohort_threshold``, raised to ``cohort_noise_allow + cohort_noise_z * (noise
        of the test in spreads)`` for a run whose own noise could otherwise carry it there. No
        reference (too few siblings there) or no noise estimate yet judges nothing and restarts
        the EWMA; the former also marks the run for a recheck of its curve (:meth:`_recheck`).
        The EWMA restarts at the first residual, and the smoothed test's noise term follows its
        noise from there (that of one point, settling to the EWMA's within ~8 points): with the
        settled bar from the start, one wild first point (heavy-tailed noise) confirmed it.
        """
        g = bisect_right(_EDGES_F, s) - 1
        if self._curve_on and not m.flagged:
            noise = m.noise
            zr = math.nan
            rx = 1.0
            if noise == noise:
                k2 = 2 * g + (s >= _POS_F[g])  # the memo of _ref, inlined
                lo, hi, p1, p2, p3 = _REFN[k2]
                ver = self._ver
                key = (k2, ver[lo], ver[hi], ver[p1], ver[p2], ver[p3])
                cache = m.cache
                if cache is not None and cache[0] == key:
                    r = cache[1]
                else:
                    r = self._ref_compute(m, lo, hi)
                    m.cache = (key, r)
                if r is None:
                    if m.rk < 0:
                        m.rk, m.ro, m.rz, m.rn = g, -1, 0, noise  # noise: float32 already
                        self._pend.add(run_id)
                else:
                    x1, m1, x2, m2, spread, _n, rx = r
                    ref = m1 + (s - x1) / (x2 - x1) * (m2 - m1)
                    zr = (v - ref) / spread
            if zr == zr:
                thr = self._thr
                q = noise / spread
                br = self._allow + self._nz * q
                if br < thr:
                    br = thr
                # the drift test takes a residual beyond the raw test's bar as that bar (the raw
                # test judges such points on its own): one wild point of heavy-tailed noise, the
                # first after a restart above all, cannot carry the EWMA past its bar for a streak
                zc = zr if -br <= zr <= br else br if zr > 0 else -br
                sm = m.sm
                if sm != sm:
                    zs, sk = zc, 0
                else:
                    zs, sk = sm + self._alpha * (zc - sm), m.sk + 1 if m.sk < SK_MAX else SK_MAX
                m.sm, m.sk = zs, sk
                bs = self._allow + self._nz_s[sk] * q
                if bs < thr:
                    bs = thr
                # the onset estimate: where the deviation reached the threshold in the siblings'
                # own spread (the line's uncertainty widens the spread the tests judge with, so
                # they hold false alarms back, but it is no part of how far the run departed)
                tx = thr * rx
                if zs >= tx or zs <= -tx or m.xu >= 0 or m.xd >= 0:
                    self._cross(m, s, zs, q, sk, tx)
                up = ((m.up & _MASK) << 1) | (zr >= br)
                dn = ((m.dn & _MASK) << 1) | (zr <= -br)
                su = ((m.su & _MASK) << 1) | (zs >= bs)
                sd = ((m.sd & _MASK) << 1) | (zs <= -bs)
                conf = self._conf
                if (up | dn | su | sd) & 1 and (
                    up & conf == conf or dn & conf == conf or su & conf == conf or sd & conf == conf
                ):
                    bits, z = (
                        (up, zr)
                        if up & conf == conf
                        else (dn, zr)
                        if dn & conf == conf
                        else (su, zs)
                        if su & conf == conf
                        else (sd, zs)
                    )
                    m.up = m.dn = m.su = m.sd = 0
                    m.flagged = True
                    self._unpend(run_id, m)
                    streak = (bits ^ (bits + 1)).bit_length() - 1  # trailing ones: the streak
                    if up & conf == conf or dn & conf == conf:  # the raw test fired
                        streak = _gapped(bits, streak)
                    onset = [*m.ts, s][-streak]  # the tail does not hold the current point yet
                    x = m.xu if z > 0 else m.xd
                    if 0 <= x < onset:
                        onset = x  # the EWMA crossed the threshold before the streak began
                    m.xu = m.xd = -1
                    out.append((run_id, self._curve_anomaly_at(onset, s, v, z, ref, g, m)))
                else:
                    m.up, m.dn, m.su, m.sd = up, dn, su, sd
            else:
                m.sm = math.nan  # (an onset estimate stands: an unjudged point is no evidence)
                m.up = (m.up & _MASK) << 1
                m.dn = (m.dn & _MASK) << 1
                m.su = (m.su & _MASK) << 1
                m.sd = (m.sd & _MASK) << 1
        # -- noise of the run (first differences, groups of NOISE_GROUP)
        tv = m.tv
        if tv:
            m.nsum += abs(v - tv[-1])
            m.ncnt += 1
            if m.ncnt == NOISE_GROUP:
                m.noise = _f32(m.nsum / NOISE_GROUP * _NOISE_FROM_ABS_DIFF)
                m.nsum, m.ncnt = 0.0, 0
        tv.append(_f32(v))
        m.ts.append(s)
        if len(tv) > FINAL_TAIL:
            del tv[0], m.ts[0]
        # -- summary
        if g != m.fb:
            resync = False
            if m.fcnt:
                self._close_fine(m)
                resync = True
            m.fb = g
            c = g // COARSE_RATIO
            if c != m.cb:
                if m.ccnt:
                    self._close_coarse(m)
                m.cb = c
            if resync:
                self._resync(m)
        m.fsum += v
        m.fcnt += 1
        m.csum += v
        m.ccnt += 1

    def _cross(self, m: _Member, s: int, zs: float, q: float, sk: int, thr: float) -> None:
        """Track where the EWMA went beyond the threshold ``thr`` (the onset of a departure that
        confirms later, once the raised bar or an unbroken streak is reached): kept until the
        settled EWMA falls back by more than its noise explains."""
        if zs >= thr and m.xu < 0:
            m.xu = self._lagged(m, s, sk)
        elif zs <= -thr and m.xd < 0:
            m.xd = self._lagged(m, s, sk)
        if sk >= X_SETTLE:
            lo = thr - self._x_noise[sk] * q
            if lo < self._x_min:
                lo = self._x_min
            if zs < lo:
                m.xu = -1
            if zs > -lo:
                m.xd = -1

    def _lagged(self, m: _Member, s: int, sk: int) -> int:
        """The step ``min(lag, sk)`` points before point ``s`` (whose EWMA crossed; not yet in the tail)."""
        back = sk if sk < self._x_lag else self._x_lag
        ts = m.ts
        return ts[-back] if 0 < back <= len(ts) else s

    def _cross_unit(self, m: _Member, start: int, z: float, nu: float) -> None:
        """:meth:`_cross` for a rechecked unit (older than the run's newest points) starting at
        step ``start``, ``nu`` its noise in spreads: one beyond the threshold before the estimate
        moves it back; one below what noise explains after it ends it."""
        thr = self._thr
        lo = max(thr - 2.0 * nu, self._x_min)
        if z < lo and 0 <= m.xu <= start:
            m.xu = -1
        if z > -lo and 0 <= m.xd <= start:
            m.xd = -1
        if z >= thr and (m.xu < 0 or start < m.xu):
            m.xu = start
        elif z <= -thr and (m.xd < 0 or start < m.xd):
            m.xd = start

    def _update_batch(
        self, run_id: str, st: npt.NDArray[np.int64], va: npt.NDArray[np.float64]
    ) -> list[tuple[str, Anomaly]]:
        """Many points at once: the same judgement as :meth:`_point`, vectorised (same findings)."""
        m = self._member(run_id)
        out: list[tuple[str, Anomaly]] = []
        if m.fo >= 0:
            return out
        last = m.ts[-1] if m.ts else -1
        running = np.maximum.accumulate(np.concatenate([[last], st]))[:-1]
        keep = (st > running) & np.isfinite(va)
        if not keep.all():
            st, va = st[keep], va[keep]
        n = len(st)
        if n == 0:
            return out
        if n <= SMALL_CALL:
            return self._update_small(run_id, st.tolist(), va.tolist())
        rg = m.rg
        gf = np.searchsorted(_EDGES_F_NP, st, side="right") - 1
        v32 = va.astype(np.float32).astype(np.float64)
        # -- point noise in effect at each point (before its own difference joins)
        if m.tv:
            prev = np.concatenate([[m.tv[-1]], v32[:-1]])
            d = np.abs(va - prev)
            first = 0
        else:
            d = np.abs(va[1:] - v32[:-1])
            first = 1  # the first point of the run has no difference
        noise_at = np.full(n, m.noise)
        done = np.flatnonzero((m.ncnt + np.arange(1, len(d) + 1)) % NOISE_GROUP == 0)
        csum = np.cumsum(d)
        new_noise = m.noise
        new_nsum, new_ncnt = m.nsum, m.ncnt
        if len(done):
            sums = np.diff(np.concatenate([[-m.nsum], csum[done]]))
            sums[0] = m.nsum + csum[done[0]]
            noises = (sums / NOISE_GROUP * _NOISE_FROM_ABS_DIFF).astype(np.float32).astype(np.float64)
            # the difference at index k belongs to point k + first; the group ending there sets the
            # noise of the points after it
            starts = done + first + 1
            idx = np.searchsorted(starts, np.arange(n), side="right") - 1
            has = idx >= 0
            noise_at[has] = noises[idx[has]]
            new_noise = float(noises[-1])
            new_nsum = float(csum[-1] - csum[done[-1]])
            new_ncnt = len(d) - 1 - int(done[-1])
        else:
            new_nsum = m.nsum + (float(csum[-1]) if len(d) else 0.0)
            new_ncnt = m.ncnt + len(d)
        if self._curve_on and not m.flagged:
            self._judge_batch(run_id, m, st, va, gf, noise_at, out)
        m.noise, m.nsum, m.ncnt = new_noise, new_nsum, new_ncnt
        # -- tails
        m.tv = (m.tv + v32[-FINAL_TAIL:].tolist())[-FINAL_TAIL:]
        m.ts = (m.ts + st[-FINAL_TAIL:].tolist())[-FINAL_TAIL:]
        # -- summary: fine bins and coarse buckets completed by this call
        self._fold(m, gf, va, fine=True)
        self._fold(m, gf // COARSE_RATIO, va, fine=False)
        self._resync(m)
        self._touch(run_id, m)
        if self._pend and m.rg != rg:
            self._closed(run_id, m, out)
        return out

    def _judge_batch(
        self,
        run_id: str,
        m: _Member,
        st: npt.NDArray[np.int64],
        va: npt.NDArray[np.float64],
        gf: npt.NDArray[np.int64],
        noise_at: npt.NDArray[np.float64],
        out: list[tuple[str, Anomaly]],
    ) -> None:
        """:meth:`_point`'s judgement of a call's points at once (the reference does not depend on
        the run's own points, so it is the same as point by point); the EWMA alone is a loop,
        and only where the smoothed test could fire."""
        n = len(st)
        upper = st >= _POS_F_NP[gf]
        keyv = gf * 2 + upper
        uk, inv = np.unique(keyv, return_inverse=True)
        params = np.full((len(uk), 6), np.nan)
        for i, k in enumerate(uk.tolist()):
            r = self._ref(m, k >> 1, bool(k & 1))
            if r is not None:
                params[i] = (*r[:5], r[6])
        p1, m1, p2, m2, spread, rx = (params[inv, j] for j in range(6))
        ref = m1 + (st - p1) / (p2 - p1) * (m2 - m1)
        with np.errstate(invalid="ignore"):
            zr = (va - ref) / spread
            zr[np.isnan(noise_at)] = np.nan
            q = noise_at / spread
            thr = self._thr
            br = np.maximum(self._allow + self._nz * q, thr)
        ok = ~np.isnan(zr)
        idx = np.arange(n)
        # residuals in the EWMA after its first, at each point (it restarts after an unjudged one)
        sm0 = m.sm
        start = -(m.sk + 2) if sm0 == sm0 else -1
        sk = np.minimum(idx - np.maximum.accumulate(np.where(ok, start, idx)) - 1, SK_MAX)
        with np.errstate(invalid="ignore"):
            bs = np.maximum(self._allow + self._nz_s_np[np.maximum(sk, 0)] * q, thr)
        # -- the smoothed test: EWMA (of the residuals held within the raw bar, as in _point)
        # restarted after every unjudged point
        with np.errstate(invalid="ignore"):
            zc = np.clip(zr, -br, br)
        zrl = zc.tolist()
        bound = float(np.max(np.abs(zc[ok]))) if ok.any() else 0.0
        if sm0 == sm0:
            bound = max(bound, abs(sm0))
        # the EWMA is a convex combination of sm and the z's: it may cross a bar (or, with an onset
        # estimate carried in, drop below where that ends)
        # (the onset estimate's threshold: in the siblings' own spread, as in _point)
        tx = thr * rx
        if bound >= (float(np.min(tx[ok])) if ok.any() else thr) or m.xu >= 0 or m.xd >= 0:
            a = self._alpha
            zsl = []
            sm = sm0
            for x in zrl:
                if x != x:
                    sm = math.nan
                elif sm != sm:
                    sm = x
                else:
                    sm = sm + a * (x - sm)
                zsl.append(sm)
            zs = np.asarray(zsl)
        else:
            zs = None
        with np.errstate(invalid="ignore"):
            tests = [zr >= br, zr <= -br]
            if zs is not None:
                tests += [zs >= bs, zs <= -bs]
        # consecutive run lengths, carrying the streaks of the previous points in
        conf = self._confirm
        hit_at = n
        lengths = []
        for t, bits in zip(tests, (m.up, m.dn, m.su, m.sd), strict=False):
            carry = (bits ^ (bits + 1)).bit_length() - 1
            lastf = np.maximum.accumulate(np.where(t, -1 - carry, idx))
            run = idx - lastf
            lengths.append(run)
            hits = np.flatnonzero(run >= conf)
            if len(hits):
                hit_at = min(hit_at, int(hits[0]))
        # the first unjudged point for lack of siblings (before any hit) marks a recheck
        if m.rk < 0:
            no_ref = np.flatnonzero(np.isnan(ref[:hit_at]) & ~np.isnan(noise_at[:hit_at]))
            if len(no_ref):
                m.rk, m.ro, m.rz = int(gf[no_ref[0]]), -1, 0
                m.rn = float(noise_at[no_ref[0]])
                self._pend.add(run_id)
        if hit_at < n:
            i = hit_at
            j = next(k for k, run in enumerate(lengths) if run[i] >= conf)  # up, down, then smoothed
            run = lengths[j]
            z = float(zr[i]) if j < 2 else float(zs[i])  # type: ignore[index]
            streak = min(int(run[i]), PERSIST_N)
            if j < 2 and streak < PERSIST_N:  # the raw test: the points before a one-point break
                bits = (m.up, m.dn)[j]
                for x in tests[j][max(0, i + 1 - PERSIST_N) : i + 1].tolist():
                    bits = ((bits & _MASK) << 1) | x
                streak = _gapped(bits, streak)
            onset = (m.ts + st[max(0, i + 1 - PERSIST_N) : i + 1].tolist())[-streak]
            if zs is not None:
                x = self._cross_at(m, m.xu if z > 0 else m.xd, zs if z > 0 else -zs, q, sk, st, i, tx)
                if 0 <= x < onset:
                    onset = x  # the EWMA crossed the threshold before the streak began
            m.xu = m.xd = -1
            m.flagged = True
            m.up = m.dn = m.su = m.sd = 0
            self._unpend(run_id, m)
            sm_end = float(zs[i]) if zs is not None else math.nan
            if zs is None:  # only the raw test can have fired: the EWMA up to i
                sm_end = self._ewma_end(zc[: i + 1], sm0)
            m.sm, m.sk = sm_end, int(sk[i])
            v = float(va[i])
            out.append(
                (run_id, self._curve_anomaly_at(onset, int(st[i]), v, z, float(ref[i]), int(gf[i]), m))
            )
        else:
            bits_out = []
            for t, bits in zip(tests, (m.up, m.dn, m.su, m.sd), strict=False):
                for x in t[-PERSIST_N:].tolist():
                    bits = ((bits & _MASK) << 1) | x
                bits_out.append(bits)
            if zs is None:
                # the smoothed tests stayed within their bars: no bits set
                for bits in (m.su, m.sd):
                    b = bits
                    for _ in range(min(n, PERSIST_N)):
                        b = (b & _MASK) << 1
                    bits_out.append(b)
                m.sm = self._ewma_end(zc, sm0)
            else:
                m.sm = zsl[-1]
                m.xu = self._cross_at(m, m.xu, zs, q, sk, st, n - 1, tx)
                m.xd = self._cross_at(m, m.xd, -zs, q, sk, st, n - 1, tx)
            m.up, m.dn, m.su, m.sd = bits_out
            m.sk = max(int(sk[-1]), 0)
        if m.sm == m.sm:
            m.sm = _f32(m.sm)

    def _cross_at(
        self,
        m: _Member,
        x0: int,
        zs: npt.NDArray[np.float64],
        q: npt.NDArray[np.float64],
        sk: npt.NDArray[np.int64],
        st: npt.NDArray[np.int64],
        i: int,
        tx: npt.NDArray[np.float64],
    ) -> int:
        """:meth:`_cross` over points ``[0, i]`` of a call, vectorised, for one direction (``zs``
        the EWMA signed towards it, nan where unjudged; ``x0`` the estimate carried in; ``tx``
        the threshold at each point)."""
        thr = tx[: i + 1]
        z = zs[: i + 1]
        k = sk[: i + 1]
        with np.errstate(invalid="ignore"):
            lo = np.maximum(thr - self._x_noise_np[np.maximum(k, 0)] * q[: i + 1], self._x_min)
            ended = np.flatnonzero((z < lo) & (k >= X_SETTLE))  # below what noise explains
        start = 0
        if len(ended):
            start, x0 = int(ended[-1]) + 1, -1
        if x0 >= 0:
            return x0
        with np.errstate(invalid="ignore"):
            beyond = np.flatnonzero(z[start:] >= thr[start:])
        if not len(beyond):
            return -1
        j = start + int(beyond[0])
        back = min(self._x_lag, max(int(k[j]), 0))  # dated back as in _cross
        if back <= j:
            return int(st[j - back])
        ts = m.ts
        return ts[j - back] if back - j <= len(ts) else int(st[j])

    def _ewma_end(self, zr: npt.NDArray[np.float64], sm: float) -> float:
        """The EWMA after ``zr`` (restarted after its last unjudged point), without the loop."""
        bad = np.flatnonzero(np.isnan(zr))
        if len(bad):
            if bad[-1] == len(zr) - 1:
                return math.nan
            zr, sm = zr[bad[-1] + 1 :], math.nan
        if sm != sm:
            sm, zr = float(zr[0]), zr[1:]
        k = len(zr)
        if k == 0:
            return sm
        c = 1.0 - self._alpha
        w = c ** np.arange(k - 1, -1, -1, dtype=np.float64)  # old weights underflow to 0: harmless
        return float(c**k * sm + self._alpha * float(np.dot(w, zr)))

    def _fold(self, m: _Member, bins: npt.NDArray[np.int64], va: npt.NDArray[np.float64], fine: bool) -> None:
        """Add a call's points to the open bin / bucket, completing the ones it moves past."""
        change = np.flatnonzero(bins[1:] != bins[:-1]) + 1
        bounds = np.concatenate([[0], change, [len(bins)]])
        sums = np.add.reduceat(va, bounds[:-1])
        for j in range(len(bounds) - 1):
            b = int(bins[bounds[j]])
            cnt = int(bounds[j + 1] - bounds[j])
            if fine:
                if b != m.fb:
                    if m.fcnt:
                        self._close_fine(m)
                    m.fb = b
                m.fsum += float(sums[j])
                m.fcnt += cnt
            else:
                if b != m.cb:
                    if m.ccnt:
                        self._close_coarse(m)
                    m.cb = b
                m.csum += float(sums[j])
                m.ccnt += cnt

    # ------------------------------------------------------------------ recheck (runs ahead)

    def _unpend(self, run_id: str, m: _Member) -> None:
        m.rk, m.ro, m.rz = -1, -1, 0
        self._pend.discard(run_id)

    def _closed(self, run_id: str, m: _Member, out: list[tuple[str, Anomaly]]) -> None:
        """``m`` completed fine bins up to ``m.rg``: recheck the runs marked at or below them.

        Only this call's closes can complete a sibling node, so a marked run is looked at only
        when a node at or above its marker changed (or its own bins completed): O(marked runs)
        per completed bin, and few runs are ahead of all but a few siblings at a time.
        """
        g = m.rg
        for rid in sorted(self._pend):  # sorted: findings in a stable order
            r = self._m.get(rid)
            if r is not None and (rid == run_id or r.rk <= g):
                self._recheck(rid, r, out)

    def _recheck(self, run_id: str, m: _Member, out: list[tuple[str, Anomaly]]) -> None:
        """Judge the run's stored curve from bin ``m.rk`` on where its siblings now have data.

        The run was ahead of all but a few siblings there. Units: its fine-bin means while they
        are in its ring, its coarse-bucket means below (both means of its points, as the
        siblings' fine-bin means are: no interpolation, biased on curved stretches); the siblings'
        reference is the step-weighted mean of their node medians over the unit's fine bins (each
        with >= ``cohort_min_runs`` siblings), the spread their step-weighted mean spread. The
        bar is the point test's with the run's noise (the larger of now and when marked: early
        points are noisier) divided by sqrt(points in the unit, from its step stride).
        ``cohort_confirm_buckets`` consecutive units beyond it on one side confirm, or one unit
        of at least 4x that many points; the onset is the first step of the first of them and
        ``detected_at_step`` the last step of the confirming unit (its data made the departure
        certain); ``reported_at_step`` is the run's last step when it was reported.
        """
        if m.flagged or not self._curve_on:
            self._unpend(run_id, m)
            self._dirty[run_id] = True
            return
        if m.noise != m.noise or m.rg < 0:
            return
        noise = max(m.noise, m.rn)  # the noise when it was marked covers the earlier bins
        before = (m.rk, m.ro, m.rz)
        b = max(m.rk, m.g0)
        rs = m.rg - len(m.ring) + 1
        ts = m.ts
        stride = max(1.0, (ts[-1] - ts[0]) / (len(ts) - 1)) if len(ts) > 1 else 1.0
        thr, conf = self._thr, self._confirm
        stop = m.last_step + 1
        contrib = m.contrib
        node = self._node
        while b <= m.rg:
            if b < rs:  # below the ring: the coarse bucket holding b
                c = b // COARSE_RATIO
                i = c - m.b0
                val = m.curve[i] if m.b0 >= 0 and 0 <= i < len(m.curve) else math.nan
                lo, hi = max(c * COARSE_RATIO, m.g0), c * COARSE_RATIO + COARSE_RATIO - 1
            else:
                val = m.ring[b - rs]
                lo = hi = b
            if val != val:
                b = hi + 1
                continue
            w_sum = m_sum = s_sum = 0.0
            n_min = 1 << 30
            for g in range(lo, hi + 1):
                if not _HAS_F[g]:
                    continue
                nd = node(g, contrib.get(g))
                if nd is None:
                    break
                w = min(_EDGES_F[g + 1], stop) - _EDGES_F[g]  # the run's steps in the bin
                w_sum += w
                m_sum += w * nd[0]
                s_sum += w * nd[1]
                n_min = min(n_min, nd[2])
            else:
                if w_sum == 0:
                    b = hi + 1
                    continue
                ref, spread = m_sum / w_sum, s_sum / w_sum
                z = (val - ref) / spread
                nu = noise / math.sqrt(max(1.0, w_sum / stride)) / spread  # the unit's noise
                bar = max(thr, self._allow + self._nz * nu)
                side = 1 if z >= bar else -1 if z <= -bar else 0
                self._cross_unit(m, _EDGES_F[lo], z, nu)
                if side and m.rz * side > 0:
                    m.rz += side
                else:
                    m.rz, m.ro = side, (lo if side else -1)
                if side and w_sum >= 4 * conf * stride:
                    # a mean of >= 4x as many points as the point test's streak: one wild point
                    # moves it by a quarter of that at most, so it confirms alone
                    m.rz = side * conf
                b = hi + 1
                if abs(m.rz) >= conf:
                    onset = _EDGES_F[m.ro]
                    x = m.xu if m.rz > 0 else m.xd
                    if 0 <= x < onset:
                        onset = x  # the departure crossed the threshold before the streak began
                    m.xu = m.xd = -1
                    if ts and onset > ts[-1]:
                        onset = ts[-1]
                    end = min(_EDGES_F[hi + 1] - 1, m.last_step)
                    m.flagged = True
                    self._unpend(run_id, m)
                    self._dirty[run_id] = True
                    out.append((run_id, self._recheck_anomaly(onset, end, val, z, ref, n_min, m)))
                    return
                continue
            break  # a node of this unit lacks siblings: wait for them
        m.rk = b
        if b > m.rg and (m.sm == m.sm or m.fo >= 0):
            self._unpend(run_id, m)  # caught up: the point test judges the run's new points again
        if (m.rk, m.ro, m.rz) != before:
            self._dirty[run_id] = True  # stored again (its recency, m.u, is unchanged)

    def _recheck_anomaly(
        self, onset: int, end: int, v: float, z: float, ref: float, n: int, m: _Member
    ) -> Anomaly:
        c = self.config
        return Anomaly(
            "outlier_run",
            onset,
            _severity(z, c.cohort_threshold),
            {
                "message": (
                    f"{self.key}: the curve of this run left its {n} sibling runs around step {onset}: its "
                    f"mean up to step {end} is {_fmt(v)}, {abs(z):.1f} robust deviations "
                    f"{'above' if z > 0 else 'below'} their median {_fmt(ref)} (judged when the siblings "
                    f"reached those steps; this run was at step {m.last_step})"
                ),
                "basis": "curve",
                "value": v,
                "expected": ref,
                "robust_z": z,
                "threshold": c.cohort_threshold,
                "siblings": n,
                "detected_at_step": end,
                "reported_at_step": m.last_step,
            },
        )

    # ------------------------------------------------------------------ findings

    def _curve_anomaly_at(
        self, onset: int, s: int, v: float, z: float, ref: float, g: int, m: _Member
    ) -> Anomaly:
        r = self._ref(m, g, s >= _POS_F[g])
        n = r[5] if r is not None else 0
        c = self.config
        return Anomaly(
            "outlier_run",
            onset,
            _severity(z, c.cohort_threshold),
            {
                "message": (
                    f"{self.key}: the curve of this run left its {n} sibling runs around step {onset}: at step "
                    f"{s} it is {_fmt(v)}, {abs(z):.1f} robust deviations {'above' if z > 0 else 'below'} "
                    f"their median {_fmt(ref)}"
                ),
                "basis": "curve",
                "value": v,
                "expected": ref,
                "robust_z": z,
                "threshold": c.cohort_threshold,
                "siblings": n,
                "detected_at_step": s,
            },
        )

    def _judge_final(self, run_id: str, m: _Member, out: list[tuple[str, Anomaly]]) -> None:
        c = self.config
        if not m.tv:
            m.fj = True
            return
        last = m.last_step
        others = [
            r.final
            for rid, r in self._m.items()
            if rid != run_id
            and r.fo >= 0
            and r.tv
            and last / FINAL_STEP_RATIO <= r.last_step <= last * FINAL_STEP_RATIO
        ]
        if len(others) < c.cohort_min_runs:
            return  # judged when more siblings of a comparable length have finished
        m.fj = True
        if m.flagged:
            return
        arr = np.asarray(others)
        med = float(np.median(arr))
        scale = max(1.4826 * float(np.median(np.abs(arr - med))), c.cohort_rel_floor * abs(med), 1e-12)
        final = m.final
        z = (final - med) / scale
        if abs(z) < c.cohort_threshold:
            return
        m.flagged = True
        self._dirty[run_id] = True
        out.append(
            (
                run_id,
                Anomaly(
                    "outlier_run",
                    last,
                    _severity(z, c.cohort_threshold),
                    {
                        "message": (
                            f"{self.key}: the final value of this run ({_fmt(final)}) is {abs(z):.1f} robust "
                            f"deviations {'above' if z > 0 else 'below'} the median {_fmt(med)} of the finals "
                            f"of {len(others)} finished sibling runs"
                        ),
                        "basis": "final",
                        "value": final,
                        "expected": med,
                        "robust_z": z,
                        "scale": scale,
                        "threshold": c.cohort_threshold,
                        "siblings": len(others),
                        "detected_at_step": last,
                    },
                ),
            )
        )

    def _judge_level(self, run_id: str, m: _Member, out: list[tuple[str, Anomaly]]) -> None:
        c = self.config
        runs, threshold = c.cohort_level_runs, c.cohort_level_threshold
        seq = sorted(
            ((r.fo, rid, r) for rid, r in self._m.items() if r.fo >= m.bf and r.tv), key=lambda x: x[0]
        )
        if len(seq) < runs + c.cohort_level_min_baseline:
            return
        cand = seq[-runs:]
        ref_step = _median([float(r.last_step) for _, _, r in cand])
        if any(
            not ref_step / FINAL_STEP_RATIO <= r.last_step <= ref_step * FINAL_STEP_RATIO for *_, r in cand
        ):
            return  # runs of different lengths: their finals are not comparable
        base = [
            (rid, r.level)
            for _, rid, r in seq[:-runs]
            if ref_step / FINAL_STEP_RATIO <= r.last_step <= ref_step * FINAL_STEP_RATIO
        ][-LEVEL_MAX_BASELINE:]
        if len(base) < c.cohort_level_min_baseline:
            return
        arr = np.asarray([v for _, v in base])
        med = float(np.median(arr))
        dev = np.abs(arr - med)
        mad = 1.4826 * float(np.median(dev))
        # the MAD of 8-20 runs is often far too small (half of them happen to agree): the mean
        # absolute deviation is steadier; deviations are capped at 5 MADs so a failed run in the
        # baseline cannot inflate it much
        mean_dev = 1.2533 * float(np.mean(np.minimum(dev, 5.0 * mad)))
        scale = max(mad, mean_dev, c.cohort_level_rel_floor * abs(med), 1e-12)
        finals = [r.level for *_, r in cand]
        zs = [(f - med) / scale for f in finals]
        # each candidate clearly off on the same side, and together far off: the mean of k
        # independent runs is sqrt(k) less noisy than one, so a 6-spread shift is caught reliably
        # while one outlier run (or two) among ordinary ones is not a shift
        # a run half-way is before the change (or noise)
        each = max(c.cohort_level_each, 0.5 * abs(_median(zs)))
        if not (all(z >= each for z in zs) or all(z <= -each for z in zs)):
            return
        if abs(sum(zs) / len(zs)) < threshold:
            return
        # the new level is the baseline from now on: kept on this (the latest finished) member
        m.bf = cand[0][0]
        new = _median(finals)
        z = (new - med) / scale
        cand_ids = [rid for _, rid, _ in cand]
        out.append(
            (
                run_id,
                Anomaly(
                    "level_shift",
                    m.last_step,
                    _severity(z, threshold),
                    {
                        "scope": "runs",
                        "message": (
                            f"{self.key}: the final values of the last {len(cand)} finished runs (median "
                            f"{_fmt(new)}) all moved {'above' if z > 0 else 'below'} the median {_fmt(med)} "
                            f"of the {len(base)} runs finished before them, by {abs(z):.1f} robust deviations"
                        ),
                        "candidate_run_ids": cand_ids,
                        "baseline_run_ids": [rid for rid, _ in base],
                        "shift": new - med,
                        "robust_z": z,
                        "value": new,
                        "expected": med,
                        "scale": scale,
                        "threshold": threshold,
                        "detected_at_step": m.last_step,
                    },
                ),
            )
        )
