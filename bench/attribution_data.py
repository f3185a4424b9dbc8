"""Labelled generator of experiments for the attribution benchmark (bench/attribution_quality.py).

Each case is one experiment of hundreds of runs: a baseline set, a candidate set and other
runs, with mixed factors (numeric and categorical params, tags, commit, package versions, GPU,
data version), missing values and noise. The metric is a planted linear function of some
factors. One factor (the true cause) changes between the groups with the largest planted
contribution (effect x change between the group means of its encoded feature) and is the label.

Confounded cases add the classic trap: the data version changes between the groups, moves
the metric itself (less than the true cause) and sets a red-herring param (max_seq_len) that
has no effect on the metric; the data version may also nudge the true cause. Naive
correlation sees the red herring co-vary with the metric; an adjusted estimate must not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runledger.analysis.attribution import AttributionInput

_GPUS = ("A100", "V100", "H100")
_OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled experiment."""

    data: AttributionInput
    true_cause: str
    confounded: bool
    red_herring: str | None
    planted: dict[str, float]  # planted contribution of each factor with an effect


def _hash(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), size=7))


def make_case(seed: int, n_runs: int = 300, n_factors: int = 14, confounded: bool | None = None) -> Case:
    """A labelled case; `confounded` None draws it (half the cases)."""
    rng = np.random.default_rng(seed)
    if confounded is None:
        confounded = bool(rng.random() < 0.5)
    n = n_runs
    u = rng.random(n)
    single = rng.random() < 0.08  # sometimes a single outlier run is the candidate
    cand = u < 0.35
    base = (u >= 0.35) & (u < 0.75)
    if single:
        idx = np.flatnonzero(cand)
        cand = np.zeros(n, dtype=bool)
        cand[idx[0]] = True
    others = ~(cand | base)

    def grouped(p_base: float, p_cand: float, p_other: float = 0.5) -> np.ndarray:
        """A binary "new value" switch with a per-group probability."""
        p = np.where(cand, p_cand, np.where(base, p_base, p_other))
        return rng.random(n) < p

    factors: dict[str, np.ndarray] = {}  # encoded features that drive the metric
    values: dict[str, list[str | float | None]] = {}

    # Data version (the confounder): v2 -> v3 between the groups in confounded cases.
    dv_new = grouped(0.05, 0.95, 0.4) if confounded else grouped(0.5, 0.5, 0.5)
    # Old v1 data: mostly in the experiment's other (older) runs, with a much lower metric. It does
    # not differ between baseline and candidate, but it makes the data version, and the red
    # herring it sets, correlate strongly with the metric over all runs.
    p_v1 = np.where(others, 0.6, 0.02) if confounded else np.full(n, 0.3)
    v1 = ~dv_new & (rng.random(n) < p_v1)
    dv = np.where(dv_new, "v3", np.where(v1, "v1", "v2"))
    values["data.version"] = list(dv)
    v1_weight = rng.uniform(3.0, 6.0) if confounded else 0.0
    factors["data.version"] = dv_new.astype(float) - v1_weight * v1
    red_herring: str | None = None
    if confounded:
        # Red herring: set from the data version (plus a few hand-tuned runs), no effect.
        seq = np.where(dv == "v3", 1024.0, np.where(dv == "v2", 512.0, 256.0))
        flip = rng.random(n) < 0.1
        seq[flip] = rng.choice([256.0, 512.0, 1024.0], size=int(flip.sum()))
        values["params.max_seq_len"] = [str(int(s)) for s in seq]
        factors["params.max_seq_len"] = np.log10(seq)
        red_herring = "params.max_seq_len"

    # Candidate causes: each may shift between groups.
    causes = [
        "params.lr",
        "params.optimizer",
        "code.commit",
        "env.torch",
        "params.dropout",
        "params.batch_size",
    ]
    true_cause = str(rng.choice(causes))
    shifted = {c: (c == true_cause) or rng.random() < 0.35 for c in causes}
    nudge = 0.25 if confounded and rng.random() < 0.5 else 0.0  # the data version nudges the true cause

    log_lr = rng.uniform(-4.5, -2.5, n)
    if shifted["params.lr"]:
        log_lr = log_lr + np.where(cand, rng.uniform(0.4, 0.9), 0.0)
    if true_cause == "params.lr":
        log_lr = log_lr + nudge * dv_new
    values["params.lr"] = [float(10**v) for v in log_lr]
    factors["params.lr"] = log_lr

    opt_new = grouped(0.2, 0.8 if shifted["params.optimizer"] else 0.2, 0.3)
    if true_cause == "params.optimizer" and nudge:
        opt_new |= dv_new & (rng.random(n) < nudge)
    values["params.optimizer"] = list(np.where(opt_new, "adamw", rng.choice(["adam", "sgd"], size=n)))
    factors["params.optimizer"] = opt_new.astype(float)

    commit_new = grouped(0.0, 0.9 if shifted["code.commit"] else 0.0, 0.2)
    old_commits = [_hash(rng) for _ in range(4)]
    new_commit = _hash(rng)
    values["code.commit"] = list(np.where(commit_new, new_commit, rng.choice(old_commits, size=n)))
    factors["code.commit"] = commit_new.astype(float)

    torch_new = grouped(0.1, 0.9 if shifted["env.torch"] else 0.1, 0.4)
    values["env.torch"] = list(np.where(torch_new, "2.3.1", "2.2.0"))
    factors["env.torch"] = torch_new.astype(float)

    dropout = rng.uniform(0.0, 0.3, n) + np.where(cand & shifted["params.dropout"], 0.2, 0.0)
    values["params.dropout"] = [float(round(d, 3)) for d in dropout]
    factors["params.dropout"] = dropout

    big_batch = grouped(0.3, 0.85 if shifted["params.batch_size"] else 0.3, 0.5)
    batch = np.where(big_batch, 128.0, np.where(rng.random(n) < 0.5, 32.0, 64.0))
    values["params.batch_size"] = [str(int(b)) for b in batch]  # MLflow params arrive as strings
    factors["params.batch_size"] = batch / 64.0

    # Fillers: no effect, some shifted (they look "changed").
    values["hardware.gpu"] = list(rng.choice(list(_GPUS), size=n))
    values["tags.owner"] = list(rng.choice(["alice", "bob", "carol"], size=n))
    values["env.python"] = ["3.11"] * n  # constant: reported as unchanged
    filler = 0
    while len(values) < n_factors:
        key = f"params.aux{filler}"
        if filler % 2:
            values[key] = list(rng.choice(["a", "b", "c"], size=n))
        else:
            values[key] = [float(v) for v in rng.normal(0, 1, n) + np.where(cand, rng.normal(0, 0.5), 0.0)]
        filler += 1

    # Missing values: a few runs did not record some params.
    for key in ("params.dropout", "params.aux0", "tags.owner"):
        if key in values:
            miss = rng.random(n) < 0.05
            values[key] = [None if m else v for v, m in zip(values[key], miss, strict=True)]

    # Planted effects, scaled so the true cause's contribution dominates.
    def change(key: str) -> float:
        f = factors[key]
        return float(f[cand].mean() - f[base].mean())

    target = rng.uniform(0.03, 0.08) * rng.choice([-1.0, 1.0])
    effects: dict[str, float] = {}
    tc_change = change(true_cause)
    if abs(tc_change) < 1e-6:
        tc_change = 1.0
    effects[true_cause] = target / tc_change
    for c in causes:
        if c != true_cause and rng.random() < 0.6:
            # Side causes: at most 40% of the true cause's contribution, and an effect no larger
            # than that per standard deviation of the factor (an unchanged factor must not swamp
            # the metric with a huge effect).
            scale = max(abs(change(c)), float(np.std(factors[c])), 1e-6)
            effects[c] = rng.uniform(-0.4, 0.4) * abs(target) / scale
    if confounded:
        ch = change("data.version")
        effects["data.version"] = (
            rng.uniform(0.45, 0.7) * target * rng.choice([-1.0, 1.0]) / max(abs(ch), 1e-6)
        )
    noise = abs(target) * rng.uniform(0.3, 0.8)
    metric = 0.8 + sum(effects[k] * factors[k] for k in effects) + rng.normal(0, noise, n)
    planted = {k: effects[k] * change(k) for k in effects}
    label = max(planted, key=lambda k: abs(planted[k]))

    missing_metric = rng.random(n) < 0.02  # a few runs crashed before logging the metric
    metric[missing_metric & others] = np.nan

    data = AttributionInput(
        run_ids=[f"run{i:04d}" for i in range(n)],
        metric=metric.astype(np.float64),
        factors=values,
        candidate=cand,
        baseline=base,
        metric_name="val_accuracy",
        higher_is_better=True,
    )
    return Case(data, label, confounded, red_herring, planted)
