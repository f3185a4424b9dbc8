"""Model size: bytes of a logged model's files and, for common frameworks, its parameter count.

`run.log_model(name, path=..., model=...)` logs two `system/*` metrics of the run, one
point per logged model (step = that key's next step):

    system/model_size_bytes   bytes of the model's files (all files below `path`, or the
                              pickle of `model` when no path is given)
    system/model_parameters   parameters of `model`, when it is of a kind counted below

What counts as a parameter (`count_parameters`); frameworks are never imported here, an
object is recognised only when its framework is already imported by the caller:

- torch `nn.Module`: sum of `p.numel()` over `model.parameters()` (trainable or not;
  buffers such as batch-norm statistics are not parameters).
- Keras / TensorFlow models: `model.count_params()` (a model that is not built has none).
- XGBoost (`Booster`, or an sklearn-style `XGBModel` through `get_booster()`): the number
  of tree nodes (splits and leaves) in `get_dump()`.
- scikit-learn estimators, fitted: a `Pipeline` sums its steps; ensembles (`estimators_`)
  sum their members; a tree counts its nodes (`tree_.node_count`); an MLP the values of
  `coefs_` and `intercepts_`; a linear model the values of `coef_` and `intercept_`; any
  other estimator the values in its fitted array attributes (names ending in `_`, e.g.
  `cluster_centers_`, `components_`, a scaler's `mean_` and `scale_`), except labels and
  names (`classes_`, `labels_`, `feature_names_in_`), derived summaries
  (`feature_importances_`) and 0-d values (`n_iter_`, `inertia_`). Unfitted: unknown.
- numpy arrays (anything with an integer `size` and a `shape`) and tensors (`numel()`):
  their number of values; a mapping (a state dict) or a list/tuple of them: the sum.

Anything else is unknown (None): `system/model_parameters` is then not logged.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

MODEL_SIZE_KEY = "system/model_size_bytes"
MODEL_PARAMETERS_KEY = "system/model_parameters"

# Fitted sklearn attributes that are not learned parameters.
_NOT_PARAMETERS = frozenset({"classes_", "feature_names_in_", "feature_importances_", "labels_"})
_MAX_DEPTH = 20  # of nested containers and meta-estimators


def _module_of(obj: Any) -> str:
    return type(obj).__module__ or ""


def _array_size(obj: Any) -> int | None:
    """Values in a numpy array or a tensor; None for anything else."""
    numel = getattr(obj, "numel", None)
    if callable(numel) and _module_of(obj).startswith("torch"):
        return int(numel())
    size = getattr(obj, "size", None)
    if isinstance(size, int) and not isinstance(size, bool) and hasattr(obj, "shape"):
        return size
    return None


def _torch_module_parameters(model: Any) -> int | None:
    torch = sys.modules.get("torch")
    module_type = getattr(getattr(torch, "nn", None), "Module", None)
    if isinstance(module_type, type) and isinstance(model, module_type):
        parameters: Any = model.parameters  # type: ignore[attr-defined]  # torch is not typed here
        return sum(int(p.numel()) for p in parameters())
    return None


def _keras_parameters(model: Any) -> int | None:
    if not _module_of(model).startswith(("keras", "tensorflow", "tf_keras")):
        return None
    count = getattr(model, "count_params", None)
    if not callable(count):
        return None
    try:
        return int(count())
    except Exception:  # a model that is not built yet has no weights to count
        return None


def _xgboost_parameters(model: Any) -> int | None:
    if not _module_of(model).startswith("xgboost"):
        return None
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    try:
        dump = booster.get_dump()
    except Exception:  # an XGBModel that is not fitted
        return None
    # One line per node, splits and leaves alike.
    return sum(1 for tree in dump for line in tree.splitlines() if line.strip())


def _sklearn_parameters(model: Any, depth: int) -> int | None:
    steps = getattr(model, "steps", None)
    if isinstance(steps, list) and all(isinstance(s, tuple) and len(s) >= 2 for s in steps):
        counts = [
            count_parameters(s[1], depth + 1) for s in steps if s[1] is not None and s[1] != "passthrough"
        ]
        known = [c for c in counts if c is not None]
        return sum(known) if known else None
    members = getattr(model, "estimators_", None)
    if members is not None:
        flat = list(getattr(members, "flat", members))  # GradientBoosting: a 2-d array of trees
        known = [c for c in (count_parameters(m, depth + 1) for m in flat) if c is not None]
        if known:
            return sum(known)
    tree = getattr(model, "tree_", None)
    node_count = getattr(tree, "node_count", None)
    if isinstance(node_count, int):
        return node_count
    for weights, biases in (("coefs_", "intercepts_"), ("coef_", "intercept_")):
        if hasattr(model, weights):
            total = 0
            for name in (weights, biases):
                found = count_parameters(getattr(model, name, None), depth + 1)
                total += found or 0
            return total
    total = 0
    seen = False
    for name, value in vars(model).items():
        if name.endswith("_") and not name.startswith("_") and name not in _NOT_PARAMETERS:
            size = _array_size(value)
            # 0-d values are counters and scores (n_samples_seen_, inertia_), not parameters.
            if size is not None and getattr(value, "shape", ()) != ():
                total += size
                seen = True
    return total if seen else None


def count_parameters(model: Any, depth: int = 0) -> int | None:
    """The parameter count of `model` as the module docstring defines it; None when unknown."""
    if model is None or depth > _MAX_DEPTH:
        return None
    size = _array_size(model)
    if size is not None:
        return size
    for counter in (_torch_module_parameters, _keras_parameters, _xgboost_parameters):
        found = counter(model)
        if found is not None:
            return found
    if _module_of(model).startswith("sklearn") or hasattr(model, "get_params"):
        return _sklearn_parameters(model, depth)
    if isinstance(model, Mapping):
        values = [count_parameters(v, depth + 1) for v in model.values()]
    elif isinstance(model, list | tuple):
        values = [count_parameters(v, depth + 1) for v in model]
    else:
        return None
    known = [v for v in values if v is not None]
    return sum(known) if known else None
