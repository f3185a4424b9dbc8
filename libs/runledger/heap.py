"""The heap of a long-lived services process: what start-up built, garbage collection, free pages."""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable


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


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols this process loaded, libc's among them
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()
#: Whether release_free_heap can do anything here.
CAN_RELEASE_FREE_HEAP = _MALLOC_TRIM is not None


def _resident_bytes() -> int:
    """This process's resident set size (Linux: /proc/self/statm; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_free_heap() -> int:
    """Return the C heap's free pages to the operating system; how many bytes of resident
    memory that gave back (0 without glibc).

    The analysis process reshapes every detector's arrays at each step (100,000 series at
    fleet scale). glibc keeps the chunks they leave behind, scattered through its arenas, and
    returns almost none of them by itself: in a 10-minute fleet run the process's free heap
    grew from 10 to 170 MiB while the memory in use stayed at ~176 MiB (bench/RESULTS.md,
    "Where the services' memory goes"). malloc_trim(0) releases every whole free page.
    """
    if _MALLOC_TRIM is None:
        return 0
    before = _resident_bytes()
    _MALLOC_TRIM(0)
    return max(0, before - _resident_bytes())
