"""release_free_heap gives glibc's free pages back: the analysis process's memory stays flat."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from runledger import heap

# In a child of its own, so that this process's heap cannot blur the figures. 8,000 freed
# 8 kB chunks, each followed by a live 600-byte one: free space inside the heap, not at its
# top, which glibc keeps unless trimmed.
_FRAGMENT_AND_TRIM = textwrap.dedent(
    """
    import os
    from runledger.heap import release_free_heap

    def rss_mb():
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    pairs = [(bytearray(8000), bytearray(600)) for _ in range(8000)]
    kept = [small for _, small in pairs]
    del pairs
    before = rss_mb()
    reported = release_free_heap() / 2**20
    print(before - rss_mb(), reported)
    """
)


@pytest.mark.skipif(not heap.CAN_RELEASE_FREE_HEAP, reason="no glibc malloc_trim")
def test_the_free_pages_inside_the_heap_go_back_to_the_system() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FRAGMENT_AND_TRIM], capture_output=True, text=True, check=True
    )
    released_mb, reported_mb = map(float, out.stdout.split())
    assert released_mb > 30, f"{released_mb:.1f} MiB released of ~61 MiB freed"
    assert abs(reported_mb - released_mb) < 5  # what it says it gave back
