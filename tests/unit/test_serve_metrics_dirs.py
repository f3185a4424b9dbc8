"""The analysis children's metrics directories: one a killed services process left is removed
at the next start; a live process's is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runledger.serve import METRICS_DIR_PREFIX, remove_orphaned_metrics_dirs


def test_a_dead_owners_metrics_dir_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid names a process that is gone (reaped)
    orphan = tmp_path / f"{METRICS_DIR_PREFIX}{exited.pid}-abc123"
    mine = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def456"
    older_name = tmp_path / f"{METRICS_DIR_PREFIX}xyz789"  # no pid: not ours to judge
    unrelated = tmp_path / "something-else-1"
    for directory in (orphan, mine, older_name, unrelated):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")

    assert remove_orphaned_metrics_dirs(tmp_path) == [orphan]
    assert not orphan.exists()
    assert mine.exists() and older_name.exists() and unrelated.exists()
