"""Causal attribution of a metric shift between a baseline and a candidate set of runs.

Method (why: gcm.distribution_change took ~19 s on a 3-node toy, far over the 30 s budget at
20 factors; a linear decomposition takes well under a second and dowhy still does the
identification and the refutations):

1. Encode each factor as a block of numeric columns (see `_encode`): numeric values as is
   (log10 when positive and spanning >= 2 orders of magnitude), categorical values one-hot
   against the baseline's dominant level (at most `_MAX_LEVELS` levels, the rest pooled as
   "<other>"), a missing-value indicator where a factor is unrecorded on some runs.
2. Drop factors that are constant, or whose block has the same mean in both groups
   ("unchanged"); group factors whose blocks are linearly dependent ("inseparable": e.g. commit
   and torch version changed together in every run) into one merged factor.
3. Graph: the default one (every factor -> metric; data/hardware/environment factors -> the
   others) or the user's. For every factor, dowhy identifies the controlled direct effect on the
   metric (`nonparametric-cde`, maximal backdoor adjustment): the adjustment set blocks the
   confounders (data version -> red-herring param) and the mediated paths.
4. Estimate: least squares of the metric on the factor's block and its adjustment set, over all
   runs with the metric (baseline, candidate and the others: more runs, better effects).
   contribution = effect . (candidate mean - baseline mean of the block): the part of the shift
   the factor's change explains. Under the default graph every adjustment set is "all other
   factors", so contributions add up to the explained part of the shift.
5. Intervals: percentile interval of a Bayesian bootstrap over runs (vectorised weighted least
   squares), widened to at least the classical OLS interval (the bootstrap alone cannot see the
   noise of a level recorded on one run, e.g. a single-run candidate).
6. Refute the top-k factors with dowhy (placebo treatment, random common cause, data subset),
   a bounded number of simulations each.

Only numpy at import: dowhy (and pandas) are imported inside the functions that need them
(`import dowhy` takes seconds).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from runledger.analysis.causal_graph import (
    METRIC_NODE,
    ancestors,
    contract,
    default_graph,
    factor_kind,
    validate_graph,
)

_MAX_LEVELS = 6  # one-hot columns per categorical factor; rarer levels pooled as "<other>"
_MISSING = "<missing>"
_LOG_RATIO = 10.0  # max/min of a positive numeric factor from which log10 is considered
_OTHER = "<other>"
# Kinds whose values are labels even when they look like numbers (versions "2.3", hashes "1234567").
_ALWAYS_CATEGORICAL = ("code", "environment", "data")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttributionInput:
    """Runs of one experiment: the metric, the factor values, and the two groups to compare."""

    run_ids: list[str]
    metric: np.ndarray  # float64 per run (NaN = missing: those runs are dropped)
    factors: dict[str, list[str | float | None]]  # factor name -> value per run (None = not recorded)
    candidate: np.ndarray  # bool per run: in the candidate set
    baseline: np.ndarray  # bool per run: in the baseline set (disjoint from candidate)
    metric_name: str = "metric"
    higher_is_better: bool | None = None  # for wording ("improved"/"worsened")


@dataclass(frozen=True, slots=True)
class AttributionOptions:
    """Knobs of `attribute`."""

    factors: list[str] | None = None  # restrict to these
    graph: list[tuple[str, str]] | None = None  # (cause, effect) edges over factor names and "metric"
    confidence: float = 0.95
    bootstrap: int = 200
    refute_top: int = 5  # refute the top-k factors (bounded time)
    seed: int = 0
    refute_simulations: int = 20  # simulations per dowhy refuter


@dataclass(slots=True)
class FactorAttribution:
    """One (possibly merged) factor's share of the shift."""

    factor: str
    members: list[str]
    kind: str
    contribution: float
    ci_low: float
    ci_high: float
    share: float | None
    effect: float | None
    effect_unit: str
    baseline_value: str | float | None
    candidate_value: str | float | None
    adjusted_for: list[str]
    refutations: dict[str, dict[str, Any]] | None = None
    sentence: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "factor": self.factor,
            "members": self.members,
            "kind": self.kind,
            "contribution": _num(self.contribution),
            "ci_low": _num(self.ci_low),
            "ci_high": _num(self.ci_high),
            "share": _num(self.share),
            "effect": _num(self.effect),
            "effect_unit": self.effect_unit,
            "baseline_value": _num(self.baseline_value),
            "candidate_value": _num(self.candidate_value),
            "adjusted_for": self.adjusted_for,
            "refutations": self.refutations,
            "sentence": self.sentence,
        }


@dataclass(slots=True)
class AttributionResult:
    """Ranked attribution of a metric shift; `to_dict` is what the service publishes."""

    metric: str
    baseline_mean: float
    candidate_mean: float
    shift: float
    n_baseline: int
    n_candidate: int
    n_runs_used: int
    method: str
    graph: list[tuple[str, str]]
    factors: list[FactorAttribution]
    unchanged: list[str]
    inseparable: list[list[str]]
    naive_ranking: list[dict[str, Any]]
    unexplained: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (floats, strings, lists, dicts; no NaN/inf: those become None)."""
        return {
            "metric": self.metric,
            "baseline_mean": _num(self.baseline_mean),
            "candidate_mean": _num(self.candidate_mean),
            "shift": _num(self.shift),
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "n_runs_used": self.n_runs_used,
            "method": self.method,
            "graph": [list(e) for e in self.graph],
            "factors": [f.to_dict() for f in self.factors],
            "unchanged": self.unchanged,
            "inseparable": self.inseparable,
            "naive_ranking": self.naive_ranking,
            "unexplained": _num(self.unexplained),
            "warnings": self.warnings,
        }


def _num(x: Any) -> Any:
    """A JSON-safe scalar: numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------- encoding


@dataclass(slots=True)
class _Block:
    """A factor encoded as numeric columns over the used runs."""

    name: str
    members: list[str]
    kind: str
    columns: np.ndarray  # (n, k)
    labels: list[str]  # column labels
    numeric: bool
    log_scaled: bool
    baseline_value: str | float | None
    candidate_value: str | float | None
    primary: int | None  # column whose coefficient is reported as `effect`
    effect_unit: str


def _as_float(v: str | float | None) -> float | None:
    """The value as a float, None when missing, NaN when not a number."""
    if v is None:
        return None
    if isinstance(v, bool):
        return math.nan  # a flag is a label, not a quantity
    if isinstance(v, int | float | np.integer | np.floating):
        f = float(v)
        return None if math.isnan(f) else f
    s = str(v).strip()
    if s == "" or s.lower() in ("none", "null", "nan"):
        return None
    try:
        f = float(s)
    except ValueError:
        return math.nan
    return f if math.isfinite(f) else math.nan


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _encode(name: str, values: list[str | float | None], base: np.ndarray, cand: np.ndarray) -> _Block | None:
    """Encode one factor; None when it is constant over the runs."""
    kind = factor_kind(name)
    floats = [_as_float(v) for v in values]
    observed = [f for f in floats if f is not None]
    numeric = kind not in _ALWAYS_CATEGORICAL and bool(observed) and not any(math.isnan(f) for f in observed)
    if numeric:
        return _encode_numeric(name, kind, floats, base, cand)
    return _encode_categorical(name, kind, values, base, cand)


def _skew(v: np.ndarray) -> float:
    sd = float(v.std())
    return float(np.mean((v - v.mean()) ** 3)) / sd**3 if sd > 0 else 0.0


def _log_scale(obs: np.ndarray) -> bool:
    """Encode as log10: positive values spanning >= an order of magnitude whose log is less skewed.

    Swept rates (lr 1e-5..1e-2, weight decay) are spread geometrically: steps in log units are
    what matters and log10 makes them symmetric. A bounded linear range (dropout 0.01..0.5)
    also spans a large ratio, but its log is skewed: it stays linear.
    """
    if obs.min() <= 0 or obs.max() / obs.min() < _LOG_RATIO:
        return False
    return abs(_skew(np.log10(obs))) < abs(_skew(obs))


def _encode_numeric(
    name: str, kind: str, floats: list[float | None], base: np.ndarray, cand: np.ndarray
) -> _Block | None:
    x = np.array([math.nan if f is None else f for f in floats], dtype=np.float64)
    missing = np.isnan(x)
    obs = x[~missing]
    if obs.size == 0:
        return None
    log_scaled = _log_scale(obs)
    v = np.log10(x) if log_scaled else x.copy()
    fill = float(np.nanmean(v))
    v[missing] = fill  # imputed at the mean; the indicator column carries "not recorded"
    cols = [v]
    labels = [f"log10({name})" if log_scaled else name]
    if missing.any():
        cols.append(missing.astype(np.float64))
        labels.append(f"{name} {_MISSING}")
    mat = np.column_stack(cols)
    if np.all(mat.max(axis=0) - mat.min(axis=0) == 0):
        return None

    def summary(mask: np.ndarray) -> float | None:
        sel = x[mask & ~missing]
        return float(sel.mean()) if sel.size else None

    unit = f"per log10 unit of {name} (x10)" if log_scaled else f"per unit of {name}"
    return _Block(name, [name], kind, mat, labels, True, log_scaled, summary(base), summary(cand), 0, unit)


def _dominant(levels: np.ndarray, mask: np.ndarray) -> str | None:
    sel = levels[mask]
    if sel.size == 0:
        return None
    vals, counts = np.unique(sel, return_counts=True)
    return str(vals[int(np.argmax(counts))])


def _encode_categorical(
    name: str, kind: str, values: list[str | float | None], base: np.ndarray, cand: np.ndarray
) -> _Block | None:
    levels = np.array([_label(v) for v in values], dtype=object)
    uniq = np.unique(levels)
    if uniq.size < 2:
        return None
    ref = _dominant(levels, base)
    cand_dom = _dominant(levels, cand)
    others = [str(u) for u in uniq if u != ref]
    nb, nc = max(int(base.sum()), 1), max(int(cand.sum()), 1)

    def score(level: str) -> tuple[float, int]:
        hit = levels == level
        # Levels whose frequency changed most between the groups first, then the common ones.
        return (-abs(float(hit[cand].sum()) / nc - float(hit[base].sum()) / nb), -int(hit.sum()))

    others.sort(key=score)
    kept, pooled = others[:_MAX_LEVELS], others[_MAX_LEVELS:]
    cols = [(levels == lv).astype(np.float64) for lv in kept]
    labels = [f"{name}={lv}" for lv in kept]
    if pooled:
        cols.append(np.isin(levels, pooled).astype(np.float64))
        labels.append(f"{name}={_OTHER}")
    primary = kept.index(cand_dom) if cand_dom in kept else None
    unit = f"{cand_dom} vs {ref}" if primary is not None else f"levels vs {ref}"
    return _Block(
        name, [name], kind, np.column_stack(cols), labels, False, False, ref, cand_dom, primary, unit
    )


def _label(v: str | float | None) -> str:
    if v is None:
        return _MISSING
    if isinstance(v, float):
        if math.isnan(v):
            return _MISSING
        return repr(int(v)) if v.is_integer() else repr(v)
    return str(v)


# --------------------------------------------------------------------------- grouping


def _rank(m: np.ndarray) -> int:
    if m.shape[1] == 0:
        return 0
    c = m - m.mean(axis=0)
    s = np.linalg.svd(c, compute_uv=False)
    return int((s > s[0] * 1e-9).sum()) if s.size and s[0] > 0 else 0


def _group_inseparable(blocks: list[_Block]) -> list[list[int]]:
    """Groups (index lists) of blocks linked by linear dependence between their columns."""
    n = len(blocks)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    ranks = [_rank(b.columns) for b in blocks]
    for i in range(n):
        for j in range(i + 1, n):
            joint = _rank(np.hstack([blocks[i].columns, blocks[j].columns]))
            if joint < ranks[i] + ranks[j]:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _merge(blocks: list[_Block]) -> _Block:
    """One block for factors whose effects cannot be separated (independent columns only)."""
    mat = np.hstack([b.columns for b in blocks])
    labels = [lab for b in blocks for lab in b.labels]
    # Keep a maximal independent subset of the columns (pivoted by greedy rank growth).
    keep: list[int] = []
    for j in range(mat.shape[1]):
        if _rank(mat[:, [*keep, j]]) > len(keep):
            keep.append(j)
    names = [m for b in blocks for m in b.members]
    kinds = sorted({b.kind for b in blocks})
    return _Block(
        " + ".join(names),
        names,
        "+".join(kinds),
        mat[:, keep],
        [labels[j] for j in keep],
        False,
        False,
        "; ".join(f"{b.name}={_show(b.baseline_value)}" for b in blocks),
        "; ".join(f"{b.name}={_show(b.candidate_value)}" for b in blocks),
        None,
        "joint change of the group",
    )


def _show(v: str | float | None) -> str:
    if v is None:
        return "unrecorded"
    return _fmt(v) if isinstance(v, float) else v


# --------------------------------------------------------------------------- estimation


def _solve(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """OLS coefficients, their classical covariance (None when no residual degrees of freedom), rank.

    Through the p x p Gram matrix (minimum-norm via its pseudo-inverse): an SVD of the n x p
    design was ~100x slower on the shared cores, and the columns are well scaled.
    """
    gram = d.T @ d
    inv = np.linalg.pinv(gram, hermitian=True)
    beta = inv @ (d.T @ y)
    rank = int(np.linalg.matrix_rank(gram, hermitian=True))
    dof = d.shape[0] - rank
    if dof <= 0:
        return beta, None, rank
    resid = y - d @ beta
    s2 = float(resid @ resid) / dof
    return beta, s2 * inv, rank


def _bootstrap(d: np.ndarray, y: np.ndarray, weights: np.ndarray, chunk: int = 50) -> np.ndarray:
    """Coefficients of weighted least squares for each weight row (B, p), batched in numpy."""
    p = d.shape[1]
    # A ridge this small only keeps singular replicates solvable (scale: mean diagonal of D'D).
    ridge = 1e-9 * float(np.mean(np.sum(d * d, axis=0))) * np.eye(p)
    out = np.empty((weights.shape[0], p))
    for s in range(0, weights.shape[0], chunk):
        w = weights[s : s + chunk]  # (b, n)
        dw = w[:, :, None] * d[None, :, :]  # (b, n, p)
        g = np.einsum("bnp,nq->bpq", dw, d, optimize=True) + ridge
        r = np.einsum("bnp,n->bp", dw, y, optimize=True)
        out[s : s + chunk] = np.linalg.solve(g, r[:, :, None])[:, :, 0]
    return out


# --------------------------------------------------------------------------- identification


def _identify(edges: list[tuple[str, str]], nodes: list[str], warn: list[str]) -> dict[str, list[str]]:
    """Adjustment set of each node's controlled direct effect on the metric, identified by dowhy.

    Nodes without an edge into the metric are absent from the result (no direct effect by the graph).
    """
    direct = [n for n in nodes if (n, METRIC_NODE) in set(edges)]
    if not direct:
        return {}
    import networkx as nx  # type: ignore[import-untyped]
    import pandas as pd  # type: ignore[import-untyped]
    from dowhy import CausalModel  # type: ignore[import-untyped]

    ids = {n: f"n{i}" for i, n in enumerate(nodes)}
    back = {v: k for k, v in ids.items()}
    ids[METRIC_NODE] = "y"
    g = nx.DiGraph()
    g.add_nodes_from(ids.values())
    g.add_edges_from((ids[a], ids[b]) for a, b in edges)
    # Identification reads only the graph; a one-row frame satisfies the column checks.
    frame = pd.DataFrame(np.zeros((2, len(ids))), columns=list(ids.values()))
    out: dict[str, list[str]] = {}
    parents = {n: {a for a, b in edges if b == METRIC_NODE and a != n} for n in direct}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in direct:
            try:
                model = CausalModel(data=frame, treatment=ids[n], outcome="y", graph=g)
                est = model.identify_effect(
                    estimand_type="nonparametric-cde",
                    method_name="maximal-adjustment",
                    proceed_when_unidentifiable=True,
                )
                found = {back[v] for v in est.get_backdoor_variables() or [] if v in back}
                # Plus the metric's other parents: regressing the metric on all its parents is its
                # mechanism (valid for the direct effect), and it absorbs the co-changes that choosing
                # the groups induces between factors the graph leaves independent (lr and data version
                # both changed in the candidate runs).
                out[n] = sorted(found | parents[n])
            except Exception as exc:  # dowhy rejects some graphs; fall back to the metric's other parents
                out[n] = sorted(parents[n])
                warn.append(f"dowhy could not identify the effect of {n} ({exc}); adjusted for {out[n]}")
    return out


# --------------------------------------------------------------------------- refutation


def _scores(covars: np.ndarray, treat: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The adjustment set as two columns: its least-squares fits of the metric and of the treatment.

    Adjusting for these two gives exactly the estimate of adjusting for every column
    (Frisch-Waugh-Lovell: both residuals are the same), while each dowhy refuter fit stays at a
    handful of columns instead of ~60 (statsmodels took ~0.4 s a fit at 1,000 runs).
    """
    if covars.shape[1] == 0:
        return covars
    d = np.column_stack([np.ones(y.size), covars])
    coef = np.linalg.pinv(d.T @ d, hermitian=True) @ (d.T @ np.column_stack([y, treat]))
    fitted: np.ndarray = d @ coef
    return fitted[:, [j for j in range(2) if fitted[:, j].std() > 0]]


def _refute(
    y: np.ndarray,
    treat: np.ndarray,
    covars: np.ndarray,
    estimate: float,
    tol: float,
    sims: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """dowhy refuters for one factor; the treatment is scaled so that its effect is the contribution."""
    import pandas as pd
    from dowhy import CausalModel

    cols = [f"w{j}" for j in range(covars.shape[1])]
    frame = pd.DataFrame(covars, columns=cols)
    frame["t"] = treat
    frame["y"] = y
    out: dict[str, dict[str, Any]] = {}
    dlog = logging.getLogger("dowhy")
    level = dlog.level
    dlog.setLevel(logging.WARNING)  # dowhy logs every simulation at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CausalModel(data=frame, treatment="t", outcome="y", common_causes=cols or None)
            # Maximal adjustment: the default searches subsets of the covariates (exponential).
            ident = model.identify_effect(method_name="maximal-adjustment", proceed_when_unidentifiable=True)
            est = model.estimate_effect(ident, method_name="backdoor.linear_regression", effect_modifiers=[])
            dowhy_estimate = float(est.value)
            runs: dict[str, tuple[str, dict[str, Any]]] = {
                "placebo": ("placebo_treatment_refuter", {"placebo_type": "permute"}),
                "random_common_cause": ("random_common_cause", {}),
                "data_subset": ("data_subset_refuter", {"subset_fraction": 0.8}),
            }
            for key, (method, kwargs) in runs.items():
                try:
                    ref = model.refute_estimate(
                        ident, est, method_name=method, num_simulations=sims, random_seed=seed, **kwargs
                    )
                    new = float(ref.new_effect)
                    p = (ref.refutation_result or {}).get("p_value")
                except Exception as exc:  # a refuter failing must not lose the attribution
                    out[key] = {"passed": None, "error": str(exc)}
                    continue
                # Placebo: the effect of a permuted treatment must vanish; the others: stay put.
                target = 0.0 if key == "placebo" else dowhy_estimate
                out[key] = {
                    "passed": bool(abs(new - target) <= tol),
                    "estimate": _num(dowhy_estimate),
                    "new_effect": _num(new),
                    "expected": _num(target),
                    "tolerance": _num(tol),
                    "p_value": _num(float(p)) if p is not None else None,
                    "simulations": sims,
                }
    finally:
        dlog.setLevel(level)
    return out


# --------------------------------------------------------------------------- main


def attribute(data: AttributionInput, options: AttributionOptions | None = None) -> AttributionResult:
    """Attribute the candidate-minus-baseline shift of the metric to the factors that changed.

    Raises ValueError for unusable input: mismatched lengths, overlapping or empty groups,
    fewer than 3 runs with the metric, no factor that differs, or a malformed graph.
    """
    opts = options or AttributionOptions()
    warn: list[str] = []
    y_all, base_all, cand_all = _check_input(data, opts)
    used = ~np.isnan(y_all)
    n_dropped = int((~used).sum())
    if n_dropped:
        warn.append(f"{n_dropped} run(s) without {data.metric_name} dropped")
    y = y_all[used]
    base, cand = base_all[used], cand_all[used]
    if y.size < 3:
        raise ValueError(f"only {y.size} run(s) have {data.metric_name}: need at least 3")
    if not base.any():
        raise ValueError(f"no baseline run has {data.metric_name}")
    if not cand.any():
        raise ValueError(f"no candidate run has {data.metric_name}")
    base_mean, cand_mean = float(y[base].mean()), float(y[cand].mean())
    shift = cand_mean - base_mean

    names = list(opts.factors) if opts.factors is not None else list(data.factors)
    unknown = [f for f in names if f not in data.factors]
    if unknown:
        raise ValueError(f"options.factors names unknown factor(s): {unknown}")
    idx = np.flatnonzero(used)

    # Encode; constant factors and factors with the same mean in both groups are "unchanged".
    unchanged: list[str] = []
    blocks: list[_Block] = []
    for name in names:
        vals = data.factors[name]
        b = _encode(name, [vals[i] for i in idx], base, cand)
        if b is None:
            unchanged.append(name)
            continue
        blocks.append(b)
    deltas = [b.columns[cand].mean(axis=0) - b.columns[base].mean(axis=0) for b in blocks]
    if not any(np.any(np.abs(d) > 1e-12) for d in deltas):
        raise ValueError(
            f"no factor differs between the baseline and the candidate runs (checked {len(names)} factors)"
        )

    # Inseparable groups: merged into one block (their effects are not identifiable apart).
    inseparable: list[list[str]] = []
    merged: list[_Block] = []
    rename: dict[str, str] = {}
    for grp in _group_inseparable(blocks):
        if len(grp) == 1:
            merged.append(blocks[grp[0]])
            continue
        mb = _merge([blocks[i] for i in grp])
        inseparable.append(mb.members)
        for m in mb.members:
            rename[m] = mb.name
        merged.append(mb)
    blocks = merged
    deltas = [b.columns[cand].mean(axis=0) - b.columns[base].mean(axis=0) for b in blocks]
    changed = [bool(np.any(np.abs(d) > 1e-12)) for d in deltas]
    for b, ch in zip(blocks, changed, strict=True):
        if not ch:
            unchanged.extend(b.members)

    # Graph over the encoded factors.
    present = [m for b in blocks for m in b.members]
    if opts.graph is None:
        edges = default_graph(present)
        method_graph = "default graph"
    else:
        user = validate_graph(opts.graph, names, [data.metric_name])
        keep = set(present)
        edges = [(a, b) for a, b in user if a in keep and (b in keep or b == METRIC_NODE)]
        mentioned = {n for e in edges for n in e}
        for m in present:
            if m not in mentioned:
                warn.append(f"{m} is not in the graph: assumed to affect the metric directly")
                edges.append((m, METRIC_NODE))
        method_graph = "user graph"
    edges = contract(edges, rename)
    block_names = [b.name for b in blocks]
    adjust = _identify(edges, block_names, warn)
    reach_metric = ancestors(edges, METRIC_NODE)

    # Estimate each block's direct effect with its adjustment set; designs are shared when equal.
    rng = np.random.default_rng(opts.seed)
    nb = max(int(opts.bootstrap), 0)
    weights = rng.exponential(1.0, size=(nb, y.size)) if nb else np.empty((0, y.size))
    z = NormalDist().inv_cdf(0.5 + opts.confidence / 2)
    by_name = {b.name: i for i, b in enumerate(blocks)}
    fits: dict[frozenset[str], tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]] = {}
    results: list[FactorAttribution] = []
    refute_inputs: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    n_cols = 1 + sum(b.columns.shape[1] for b in blocks)
    if n_cols >= y.size:
        warn.append(
            f"{y.size} runs for {n_cols - 1} encoded factor columns: effects are poorly identified; "
            "supply more runs or restrict options.factors"
        )
    for i, b in enumerate(blocks):
        if not changed[i]:
            continue
        delta = deltas[i]
        if b.name not in adjust:
            why = (
                "has no edge to the metric in the graph"
                if b.name in reach_metric
                else "does not reach the metric"
            )
            results.append(_no_direct(b, why, shift))
            continue
        adj = [a for a in adjust[b.name] if a in by_name]
        key = frozenset([b.name, *adj])
        if key not in fits:
            order = [b.name, *adj]
            d = np.column_stack([np.ones(y.size), *[blocks[by_name[n]].columns for n in order]])
            beta, cov, rank = _solve(d, y)
            if rank < d.shape[1]:
                warn.append(
                    f"design for {b.name} is rank deficient ({rank} < {d.shape[1]}): minimum-norm fit"
                )
            boot = _bootstrap(d, y, weights) if nb else np.empty((0, d.shape[1]))
            fits[key] = (order, d, beta, cov, boot)
        order, d, beta, cov, boot = fits[key]
        start = 1 + sum(blocks[by_name[n]].columns.shape[1] for n in order[: order.index(b.name)])
        sl = slice(start, start + b.columns.shape[1])
        contrib = float(beta[sl] @ delta)
        se = math.sqrt(max(float(delta @ cov[sl, sl] @ delta), 0.0)) if cov is not None else math.inf
        lo, hi = contrib - z * se, contrib + z * se
        if boot.shape[0] >= 10:
            bc = boot[:, sl] @ delta
            alpha = (1 - opts.confidence) / 2
            blo, bhi = np.quantile(bc, [alpha, 1 - alpha])
            lo, hi = min(lo, float(blo)), max(hi, float(bhi))
        effect = float(beta[sl][b.primary]) if b.primary is not None else None
        results.append(
            FactorAttribution(
                factor=b.name,
                members=b.members,
                kind=b.kind,
                contribution=contrib,
                ci_low=lo,
                ci_high=hi,
                share=contrib / shift if shift != 0 else None,
                effect=effect,
                effect_unit=b.effect_unit,
                baseline_value=b.baseline_value,
                candidate_value=b.candidate_value,
                adjusted_for=adj,
            )
        )
        # dowhy treatment: the block projected on its change, 0 at the baseline mean and 1 at the
        # candidate's, so its effect is the contribution; the block's other directions and the
        # adjustment set are covariates (same fit, reparametrised).
        base_mean_cols = b.columns[base].mean(axis=0)
        centered = b.columns - base_mean_cols
        treat = centered @ delta / float(delta @ delta)
        basis = np.linalg.svd(np.eye(delta.size) - np.outer(delta, delta) / float(delta @ delta))[0]
        orth = centered @ basis[:, : delta.size - 1] if delta.size > 1 else np.empty((y.size, 0))
        covars = np.column_stack([orth, *[blocks[by_name[n]].columns for n in adj]])
        refute_inputs[b.name] = (treat, covars, max(hi - lo, 0.0) / 2)

    results.sort(key=lambda r: -abs(r.contribution))
    explained = sum(r.contribution for r in results)

    if opts.refute_top > 0:
        for r in results[: opts.refute_top]:
            if r.factor not in refute_inputs:
                continue
            treat, covars, half = refute_inputs[r.factor]
            tol = max(0.1 * abs(r.contribution), half if math.isfinite(half) else 0.0, 1e-12)
            r.refutations = _refute(
                y, treat, _scores(covars, treat, y), r.contribution, tol, opts.refute_simulations, opts.seed
            )

    for rank, r in enumerate(results, start=1):
        r.sentence = _sentence(r, rank, shift, data.metric_name, data.higher_is_better, opts.confidence)

    naive = _naive(blocks, deltas, y, base)
    if int(cand.sum()) == 1:
        warn.append("the candidate is a single run: its unique levels rest on one observation")
    method = (
        f"linear controlled-direct-effect decomposition ({method_graph}; adjustment sets identified by "
        f"dowhy, nonparametric-cde with maximal backdoor adjustment); {opts.confidence:.0%} intervals from "
        f"{nb} Bayesian-bootstrap replicates widened to at least the OLS interval; dowhy refuters "
        f"(placebo, random common cause, data subset; {opts.refute_simulations} simulations) on the top "
        f"{opts.refute_top}"
    )
    return AttributionResult(
        metric=data.metric_name,
        baseline_mean=base_mean,
        candidate_mean=cand_mean,
        shift=shift,
        n_baseline=int(base.sum()),
        n_candidate=int(cand.sum()),
        n_runs_used=int(y.size),
        method=method,
        graph=edges,
        factors=results,
        unchanged=sorted(set(unchanged)),
        inseparable=inseparable,
        naive_ranking=naive,
        unexplained=shift - explained,
        warnings=warn,
    )


def _check_input(
    data: AttributionInput, opts: AttributionOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(data.run_ids)
    y = np.asarray(data.metric, dtype=np.float64).reshape(-1)
    base = np.asarray(data.baseline, dtype=bool).reshape(-1)
    cand = np.asarray(data.candidate, dtype=bool).reshape(-1)
    for label, arr in (("metric", y), ("baseline", base), ("candidate", cand)):
        if arr.size != n:
            raise ValueError(f"{label} has {arr.size} values for {n} runs")
    for name, vals in data.factors.items():
        if len(vals) != n:
            raise ValueError(f"factor {name!r} has {len(vals)} values for {n} runs")
    if not base.any():
        raise ValueError("the baseline set is empty")
    if not cand.any():
        raise ValueError("the candidate set is empty")
    if (base & cand).any():
        raise ValueError(f"{int((base & cand).sum())} run(s) are in both the baseline and the candidate set")
    if not data.factors:
        raise ValueError("no factors supplied")
    if not 0 < opts.confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {opts.confidence}")
    return y, base, cand


def _naive(
    blocks: list[_Block], deltas: list[np.ndarray], y: np.ndarray, base: np.ndarray
) -> list[dict[str, Any]]:
    """|Pearson correlation| of each factor (projected on its change) with the metric: for comparison only."""
    out: list[dict[str, Any]] = []
    for b, d in zip(blocks, deltas, strict=True):
        if float(d @ d) == 0:
            continue
        t = (b.columns - b.columns[base].mean(axis=0)) @ d
        if t.std() == 0 or y.std() == 0:
            continue
        out.append({"factor": b.name, "correlation": float(np.corrcoef(t, y)[0, 1])})
    out.sort(key=lambda r: -abs(r["correlation"]))
    return out


def _no_direct(b: _Block, why: str, shift: float) -> FactorAttribution:
    return FactorAttribution(
        factor=b.name,
        members=b.members,
        kind=b.kind,
        contribution=0.0,
        ci_low=0.0,
        ci_high=0.0,
        share=0.0 if shift != 0 else None,
        effect=None,
        effect_unit=f"none ({why})",
        baseline_value=b.baseline_value,
        candidate_value=b.candidate_value,
        adjusted_for=[],
    )


def _signed(x: float) -> str:
    return f"{x:+.4g}"


def _sentence(
    r: FactorAttribution, rank: int, shift: float, metric: str, higher: bool | None, conf: float
) -> str:
    """One plain sentence about a factor's part in the shift."""
    if len(r.members) > 1:
        what = (
            f"{', '.join(r.members[:-1])} and {r.members[-1]} changed together in every run, so their "
            "effects cannot be separated; together they"
        )
    else:
        what = f"{r.factor} ({_show(r.baseline_value)} -> {_show(r.candidate_value)})"
    if r.effect_unit.startswith("none ("):
        return f"#{rank}: {what} changed but {r.effect_unit[6:-1]}, so no direct part of the shift is attributed to it."
    share = f" ({r.share:.0%} of the {_signed(shift)} shift)" if r.share is not None else ""
    ci = f"{conf:.0%} CI {_signed(r.ci_low)} to {_signed(r.ci_high)}"
    text = f"#{rank}: {what} account{'' if len(r.members) > 1 else 's'} for {_signed(r.contribution)} of {metric}{share}, {ci}"
    if r.ci_low <= 0 <= r.ci_high:
        text += "; the interval includes 0, so the effect is not clear"
    elif higher is not None:
        good = (r.contribution > 0) == higher
        text += f"; it {'improved' if good else 'worsened'} {metric}"
    if r.refutations:
        failed = [k.replace("_", " ") for k, v in r.refutations.items() if v.get("passed") is False]
        text += f"; refutation failed: {', '.join(failed)}" if failed else "; refutations passed"
    return text + "."
