"""Comparison of runs and groups of runs: pure computations (numpy, scipy, scikit-learn).

No database and no HTTP here: `services/api/compare` reads the projections and hands
plain values in. Each module is one section of POST /api/v1/compare:

- `performance`: metrics side by side, deltas against a baseline, the best marked.
- `resources`: training time, peak memory, CPU/GPU utilisation, GPU-hours, model size.
- `stability`: runs that differ only by their seed, grouped; mean, std, CV, t-interval.
- `fairness`: per-subgroup metrics as the SDK logs them; worst group, gaps and ratios.
- `importance`: permutation importance of hyperparameters for a metric, with CV.
"""

from runledger.compare.model import RunData, SeriesStat

__all__ = ["RunData", "SeriesStat"]
