"""The SDK spool: durable append, read, acknowledge, locks, and recovery after a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runledger_sdk.spool import Spool
from runledger_sdk.transport import Record


def records(start: int, count: int, size: int = 100) -> list[Record]:
    return [
        Record(seq, f"run-{seq % 3}".encode(), bytes([seq % 251]) * size)
        for seq in range(start, start + count)
    ]


def drain(spool: Spool, batch: int = 7) -> list[Record]:
    """Read and acknowledge everything, `batch` records at a time."""
    out: list[Record] = []
    while (b := spool.peek(batch, 1 << 30)) is not None:
        out.extend(b.records)
        spool.ack(b, len(b.records))
    return out


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def crash(spool: Spool) -> None:
    """What the kernel does when the process dies: close every fd (releasing the locks)."""
    for seg in [*spool._own, *spool._orphans]:
        for fd in (seg.fd, seg.ack_fd):
            if fd is not None:
                os.close(fd)
        seg.removed = True
    spool._own.clear()
    spool._orphans.clear()


def test_append_read_ack_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.peek(10, 1 << 20) is None and not spool.has_pending()
    spool.append(records(0, 5))
    spool.append(records(5, 5))
    assert spool.own_pending() and spool.min_own_seq() == 0
    batch = spool.peek(3, 1 << 20)
    assert batch is not None and [r.seq for r in batch.records] == [0, 1, 2]
    assert batch.records == records(0, 3)  # key and value come back byte for byte
    spool.ack(batch, 2)  # only a prefix was delivered
    assert spool.min_own_seq() == 2
    assert [r.seq for r in drain(spool)] == list(range(2, 10))
    assert not spool.has_pending()
    assert segment_files(tmp_path) == []  # fully acknowledged segments are deleted
    spool.close()


def test_peek_respects_byte_budget_but_returns_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(records(0, 4, size=1000))
    batch = spool.peek(100, 2500)
    assert batch is not None and len(batch.records) == 2
    batch = spool.peek(100, 10)
    assert batch is not None and len(batch.records) == 1
    spool.close()


def test_older_batch_gets_a_segment_that_sorts_first(tmp_path: Path) -> None:
    # A live send of seq 0..4 fails after seq 5..9 were spilled: 0..4 must still go first.
    spool = Spool(tmp_path)
    spool.append(records(5, 5))
    spool.append(records(0, 5))
    spool.append(records(10, 5))
    assert [r.seq for r in drain(spool, batch=4)] == list(range(15))
    spool.close()


def test_segments_rotate_at_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_segment_bytes=4096)
    for i in range(10):
        spool.append(records(i * 10, 10, size=100))
    assert len(segment_files(tmp_path)) > 1
    assert [r.seq for r in drain(spool)] == list(range(100))
    spool.close()


def test_unacknowledged_records_survive_close_and_are_adopted(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append(records(0, 10))
    batch = first.peek(4, 1 << 20)
    assert batch is not None
    first.ack(batch, 4)
    first.close()  # what is not acknowledged stays on disk

    second = Spool(tmp_path)
    assert second.adopt_orphans() == 1
    assert second.has_pending() and not second.own_pending()
    # Acknowledged records are never handed out again.
    assert [r.seq for r in drain(second)] == list(range(4, 10))
    assert segment_files(tmp_path) == []
    assert list(tmp_path.glob("*.ack")) == []
    second.close()


def test_crash_with_torn_last_record(tmp_path: Path) -> None:
    dead = Spool(tmp_path)
    dead.append(records(0, 5))
    dead.append(records(5, 1, size=5000))
    crash(dead)
    [path] = segment_files(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as f:  # the last write only partly reached the disk
        f.truncate(size - 1234)

    survivor = Spool(tmp_path)
    assert survivor.adopt_orphans() == 1
    assert [r.seq for r in drain(survivor)] == [0, 1, 2, 3, 4]
    assert segment_files(tmp_path) == []
    survivor.close()


def test_crash_with_garbage_tail(tmp_path: Path) -> None:
    dead = Spool(tmp_path)
    dead.append(records(0, 3))
    crash(dead)
    [path] = segment_files(tmp_path)
    with path.open("ab") as f:  # a frame header promising more than was written, then junk
        f.write(b"\xff\x00\x00\x00\x12\x34\x56\x78partial")
    survivor = Spool(tmp_path)
    survivor.adopt_orphans()
    assert [r.seq for r in drain(survivor)] == [0, 1, 2]
    survivor.close()


def test_crash_after_partial_ack_resumes_after_acked(tmp_path: Path) -> None:
    dead = Spool(tmp_path)
    dead.append(records(0, 10))
    batch = dead.peek(6, 1 << 20)
    assert batch is not None
    dead.ack(batch, 6)
    crash(dead)
    survivor = Spool(tmp_path)
    survivor.adopt_orphans()
    assert [r.seq for r in drain(survivor)] == [6, 7, 8, 9]
    survivor.close()


def test_live_owner_keeps_its_files(tmp_path: Path) -> None:
    # flock is per open file: a second Spool in the same process behaves like another process.
    owner = Spool(tmp_path)
    owner.append(records(0, 3))
    other = Spool(tmp_path)
    assert other.adopt_orphans() == 0
    assert other.peek(10, 1 << 20) is None
    owner.close()
    assert other.adopt_orphans() == 1
    assert [r.seq for r in drain(other)] == [0, 1, 2]
    other.close()


def test_one_drainer_per_orphan(tmp_path: Path) -> None:
    dead = Spool(tmp_path)
    dead.append(records(0, 3))
    crash(dead)
    a, b = Spool(tmp_path), Spool(tmp_path)
    assert a.adopt_orphans() == 1
    assert b.adopt_orphans() == 0  # a holds the lock
    assert [r.seq for r in drain(a)] == [0, 1, 2]
    assert b.adopt_orphans() == 0  # drained and deleted: nothing left to take
    a.close()
    b.close()


def test_foreign_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.spool").write_bytes(b"hello, not a spool")
    spool = Spool(tmp_path)
    assert spool.adopt_orphans() == 0
    assert (tmp_path / "notes.spool").exists()
    spool.close()


def test_append_after_close_raises(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.close()
    with pytest.raises(OSError):
        spool.append(records(0, 1))
