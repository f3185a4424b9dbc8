"""The heap of a long-lived services process: what start-up built, and garbage collection."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Exempt what start-up built (modules, classes, functions, app and schemas: ~200,000
    objects) from every later garbage collection.

    A full collection walks every tracked object while holding the interpreter lock, so in
    the services process each one stopped the projector and the API for ~150 ms of CPU
    (0.3-0.7 s on a loaded machine, every ~30 s under a fleet's load); these objects live as
    long as the process and are never garbage.
    """
    gc.collect()
    gc.freeze()


# Young-generation thresholds of the analysis processes (CPython's default: 700, 10, 10).
ANALYSIS_GC_THRESHOLDS = (50_000, 20, 100)


def relax_gc_for_detector_state() -> None:
    """Collect the analysis process's young objects 70x less often and the old ones rarely.

    Its detector state (100,000 series at fleet scale: ~800,000 tracked objects that live as
    long as their series) is reshaped at every step, so under CPython's default thresholds
    survivors kept reaching the old generation and a full collection came every few seconds,
    walking all of it (bench/RESULTS.md, "Garbage collection in the analysis process").
    Short-lived cycles still die in the young generation, now every 50,000 net allocations.
    """
    gc.set_threshold(*ANALYSIS_GC_THRESHOLDS)
