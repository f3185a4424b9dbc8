"""`rl.seed_everything(seed)`: seed every random generator in reach and record the seed.

    import runledger_sdk as rl
    rl.seed_everything(42, deterministic=True)
    with rl.start_run():
        ...  # the run gets the param seed=42

Seeds Python's `random`, numpy's global generator (when numpy is installed), and torch
(CPU and every CUDA device) when torch is installed; sets PYTHONHASHSEED in os.environ so
child processes (data-loader workers started with spawn, subprocesses) hash strings alike:
the current interpreter's hash seed cannot change after start. `deterministic=True` also
asks torch for deterministic algorithms (torch.use_deterministic_algorithms, cuDNN
deterministic, no cuDNN benchmark) and sets CUBLAS_WORKSPACE_CONFIG, which cuBLAS needs to be
deterministic, unless it is already set.

The seed is logged as the param `seed` of the active run; with no run active it is
remembered and logged on the next top-level run that starts in this process.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import operator
import os
import random
import threading
from typing import Any, SupportsIndex

log = logging.getLogger("runledger_sdk")

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 0 .. 2**32 - 1

_lock = threading.Lock()
_pending_seed: int | None = None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _seed_numpy(seed: int) -> None:
    if not _installed("numpy"):
        return
    import numpy as np

    np.random.seed(seed)


def _seed_torch(seed: int, deterministic: bool) -> None:
    if not _installed("torch"):
        return
    torch: Any = importlib.import_module("torch")
    torch.manual_seed(seed)  # seeds every CUDA device too (lazily when CUDA is not up yet)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def seed_everything(seed: SupportsIndex, *, deterministic: bool = False) -> int:
    """Seed random, numpy and torch with `seed` (0 .. 2**32-1); log it as the run's `seed` param.

    Returns the seed. See the module docstring for what `deterministic` changes.
    """
    value = operator.index(seed)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, not {value}")
    random.seed(value)
    os.environ["PYTHONHASHSEED"] = str(value)
    _seed_numpy(value)
    _seed_torch(value, deterministic)
    _record(value)
    return value


def _record(seed: int) -> None:
    """Log `seed` on the active run, or keep it for the next run."""
    global _pending_seed
    # Imported here: the client imports this module (through run_context) and fluent the client.
    from runledger_sdk.fluent import active_run
    from runledger_sdk.run import RunEndedError

    run = active_run()
    if run is not None:
        try:
            run.log_param("seed", seed)
            return
        except RunEndedError:  # ended meanwhile: keep it for the next run
            pass
    with _lock:
        _pending_seed = seed


def take_pending_seed() -> int | None:
    """The seed set while no run was active (once: it is cleared)."""
    global _pending_seed
    with _lock:
        seed, _pending_seed = _pending_seed, None
    return seed
