"""The spool: an on-disk, append-only, crash-safe queue of events not yet acknowledged.

Layout: `<spool_dir>/<owner>.<first_seq>.spool` segment files. `owner` is unique per
process (a UUIDv7, so names sort by process start, then the pid for humans). A segment is
a magic header followed by frames `<u32 length><u32 crc32c(body)><body>`, body =
`<u64 seq><u16 key length><key><value>`. Every append is one write plus one fsync, so a
batch is durable when `append` returns. A torn last frame (crash mid-write) fails its
length or CRC check and is ignored.

Acknowledgements are persisted in `<segment>.ack` (the offset of the first record not
yet acknowledged) so a restarted drain does not resend what the broker already holds; a
fully acknowledged segment is deleted.

Each segment is flock()ed by the process that owns it, and by whoever drains it after
its owner died: two processes never send the same file. The lock dies with the process,
which is exactly when its leftovers become someone else's to drain.

Segments are ordered by the sequence number of their first record. Normally a process
appends to its newest segment; when a batch is older than what the newest segment holds
(a send that was in flight when later events were spilled, then failed), it gets a
segment of its own that sorts before, so draining in segment order keeps event order.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import uuid_utils

from runledger_sdk.transport import Record

log = logging.getLogger("runledger_sdk.spool")

_MAGIC = b"RLSPOOL1"
_FRAME = struct.Struct("<II")  # body length, crc32c(body)
_BODY = struct.Struct("<QH")  # seq, key length
_ACK = struct.Struct("<QQ")  # offset, offset ^ _ACK_CHECK (detects a garbled ack file)
_ACK_CHECK = 0x9E3779B97F4A7C15
_SUFFIX = ".spool"
MAX_SEGMENT_BYTES = 64 << 20


class SpoolError(OSError):
    """The spool could not durably store a batch (disk full, permissions...)."""


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    first_seq: int
    orphan: bool
    end: int  # bytes known to hold whole frames (own) or the file size (orphan, until read)
    acked: int  # offset of the first record not yet acknowledged
    writable: bool = False
    last_seq: int = -1
    removed: bool = False
    seqs: deque[int] = field(default_factory=deque)  # own segments: seqs not yet acknowledged
    ack_fd: int | None = None

    @property
    def pending(self) -> bool:
        return not self.removed and self.acked < self.end


@dataclass(eq=False)
class SpoolBatch:
    """Records read from the head of one segment; `ack(batch, n)` confirms a prefix."""

    segment: _Segment
    records: list[Record]
    ends: list[int]  # file offset just past each record


def _frame(record: Record) -> bytes:
    body = _BODY.pack(record.seq, len(record.key)) + record.key + record.value
    return _FRAME.pack(len(body), crc32c.crc32c(body)) + body


def read_frames(
    fd: int, start: int, end: int, max_records: int, max_bytes: int
) -> tuple[list[Record], list[int], int | None]:
    """Whole frames of the segment `fd` from offset `start` up to `end`.

    Returns the records (at most `max_records`; at most `max_bytes` of bodies, but always
    at least one), the file offset just past each, and the offset of the first frame that
    is cut short by `end` or fails its length or CRC check (a torn tail or corruption:
    nothing after it can be trusted), or None when the read stopped at `end` or at a limit.
    """
    records: list[Record] = []
    ends: list[int] = []
    pos, total = start, 0
    while pos < end and len(records) < max_records:
        header = os.pread(fd, _FRAME.size, pos)
        if len(header) < _FRAME.size:
            return records, ends, pos  # torn inside the header
        length, crc = _FRAME.unpack(header)
        if records and total + length > max_bytes:
            break
        if length < _BODY.size or pos + _FRAME.size + length > end:
            return records, ends, pos  # torn inside the body, or a garbled length
        body = os.pread(fd, length, pos + _FRAME.size)
        if len(body) != length or crc32c.crc32c(body) != crc:
            return records, ends, pos
        seq, key_len = _BODY.unpack_from(body)
        key = body[_BODY.size : _BODY.size + key_len]
        records.append(Record(seq=seq, key=key, value=body[_BODY.size + key_len :]))
        pos += _FRAME.size + length
        total += length
        ends.append(pos)
    return records, ends, None


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _fsync_dir(path: Path) -> None:
    """Make a created/renamed directory entry durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    """The spool of this process, plus the leftovers of dead processes it adopted."""

    def __init__(self, directory: Path, *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.owner = f"{uuid_utils.uuid7().hex}-{os.getpid()}"
        self._max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._own: list[_Segment] = []  # sorted by first_seq
        self._orphans: list[_Segment] = []  # sorted by file name (owner start time)
        self._closed = False

    # --- writing ---------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        """Durably append `records` (ascending seq); SpoolError when the disk refuses."""
        if not records:
            return
        blob = b"".join(_frame(r) for r in records)
        with self._lock:
            if self._closed:
                raise SpoolError(errno.EBADF, "the spool is closed")
            seg = self._own[-1] if self._own else None
            if (
                seg is None
                or not seg.writable
                or seg.last_seq >= records[0].seq
                or seg.end + len(blob) > self._max_segment_bytes
            ):
                seg = self._new_segment(records[0].seq)
            try:
                _write_all(seg.fd, blob, seg.end)
                os.fsync(seg.fd)
            except OSError as exc:
                # Cut off whatever part made it, so the file still ends on a whole frame.
                with contextlib.suppress(OSError):
                    os.ftruncate(seg.fd, seg.end)
                raise SpoolError(exc.errno or errno.EIO, f"cannot write spool {seg.path}: {exc}") from exc
            seg.end += len(blob)
            seg.last_seq = records[-1].seq
            seg.seqs.extend(r.seq for r in records)

    def _new_segment(self, first_seq: int) -> _Segment:
        path = self.directory / f"{self.owner}.{first_seq:016d}{_SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SpoolError(exc.errno or errno.EIO, f"cannot create spool {path}: {exc}") from exc
        try:
            # Lock before the file gets its final name: a scanning process must never see an
            # unlocked segment of a live owner.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, _MAGIC, 0)
            os.fsync(fd)
            os.rename(tmp, path)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SpoolError(exc.errno or errno.EIO, f"cannot create spool {path}: {exc}") from exc
        _fsync_dir(self.directory)
        seg = _Segment(
            path=path, fd=fd, first_seq=first_seq, orphan=False, end=len(_MAGIC), acked=len(_MAGIC)
        )
        # Keep the list sorted; only the newest segment takes further appends.
        idx = next((i for i, s in enumerate(self._own) if s.first_seq > first_seq), len(self._own))
        self._own.insert(idx, seg)
        if idx == len(self._own) - 1:
            for older in self._own[:-1]:
                older.writable = False
            seg.writable = True
        return seg

    # --- reading and acknowledging ------------------------------------------------------------

    def peek(self, max_records: int, max_bytes: int) -> SpoolBatch | None:
        """The oldest records not yet acknowledged (own segments first), or None."""
        with self._lock:
            if self._closed:
                return None
            for seg in [*self._own, *self._orphans]:
                if not seg.pending:
                    continue
                records, ends = self._read(seg, max_records, max_bytes)
                if records:
                    return SpoolBatch(seg, records, ends)
                self._maybe_remove(seg)
            return None

    def _read(self, seg: _Segment, max_records: int, max_bytes: int) -> tuple[list[Record], list[int]]:
        records, ends, bad = read_frames(seg.fd, seg.acked, seg.end, max_records, max_bytes)
        if bad is not None:
            # A torn tail (the writer died mid-append) or corruption: nothing after it
            # can be trusted, so the segment ends here.
            if seg.orphan:
                log.info("spool %s: ignoring a torn record at offset %d", seg.path.name, bad)
            else:
                log.error("spool %s: corrupt record at offset %d; dropping the rest", seg.path.name, bad)
            seg.end = bad
        return records, ends

    def ack(self, batch: SpoolBatch, count: int) -> None:
        """The first `count` records of `batch` are delivered: never send them again."""
        if count <= 0:
            return
        seg = batch.segment
        with self._lock:
            if seg.removed:
                return
            seg.acked = max(seg.acked, batch.ends[count - 1])
            for _ in range(min(count, len(seg.seqs))):
                seg.seqs.popleft()
            if not self._maybe_remove(seg):
                self._persist_ack(seg)

    def _persist_ack(self, seg: _Segment) -> None:
        try:
            if seg.ack_fd is None:
                seg.ack_fd = os.open(self._ack_path(seg.path), os.O_RDWR | os.O_CREAT, 0o600)
            _write_all(seg.ack_fd, _ACK.pack(seg.acked, seg.acked ^ _ACK_CHECK), 0)
            os.fsync(seg.ack_fd)
        except OSError as exc:
            # Only costs duplicates after a crash (the projector drops them), so keep going.
            log.warning("spool %s: cannot persist acknowledgement: %s", seg.path.name, exc)

    def _maybe_remove(self, seg: _Segment) -> bool:
        """Delete `seg` when everything in it is acknowledged (caller holds the lock)."""
        if seg.pending:
            return False
        seg.removed = True
        for path in (seg.path, self._ack_path(seg.path)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._close_segment(seg)
        (self._orphans if seg.orphan else self._own).remove(seg)
        return True

    @staticmethod
    def _ack_path(path: Path) -> Path:
        return path.with_name(path.name + ".ack")

    @staticmethod
    def _close_segment(seg: _Segment) -> None:
        # Closing the fd releases the flock.
        for fd in (seg.fd, seg.ack_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        seg.ack_fd = None

    # --- leftovers of dead processes ------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Take over segments whose owner died (unlocked files); return how many were adopted."""
        adopted = 0
        with self._lock:
            if self._closed:
                return 0
            known = {s.path for s in self._orphans}
            for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
                if path.name.startswith(self.owner) or path in known:
                    continue
                seg = self._try_adopt(path)
                if seg is not None:
                    self._orphans.append(seg)
                    adopted += 1
            self._orphans.sort(key=lambda s: s.path.name)
            self._remove_stale_tmp()
        if adopted:
            log.info("spool: adopted %d segment(s) left by earlier processes in %s", adopted, self.directory)
        return adopted

    def _try_adopt(self, path: Path) -> _Segment | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The file may have been drained and unlinked between our open and our lock.
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
            size = os.fstat(fd).st_size
            if os.pread(fd, len(_MAGIC), 0) != _MAGIC:
                log.warning("spool: %s is not a spool file; leaving it alone", path)
                raise ValueError(path)
        except (OSError, ValueError):
            os.close(fd)
            return None
        acked = max(len(_MAGIC), self._read_ack(path))
        seg = _Segment(path=path, fd=fd, first_seq=0, orphan=True, end=size, acked=acked)
        if not seg.pending:
            self._maybe_remove_unlisted(seg)
            return None
        return seg

    def _maybe_remove_unlisted(self, seg: _Segment) -> None:
        for p in (seg.path, self._ack_path(seg.path)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._close_segment(seg)

    def _read_ack(self, path: Path) -> int:
        try:
            raw = self._ack_path(path).read_bytes()
        except OSError:
            return 0
        if len(raw) != _ACK.size:
            return 0
        offset, check = _ACK.unpack(raw)
        return int(offset) if offset ^ _ACK_CHECK == check else 0

    def _remove_stale_tmp(self) -> None:
        # A process that died between creating and renaming a segment leaves an empty .tmp.
        for tmp in self.directory.glob(f"*{_SUFFIX}.tmp"):
            if tmp.name.startswith(self.owner):
                continue
            try:
                fd = os.open(tmp, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
            except OSError:
                pass
            finally:
                os.close(fd)

    # --- state ------------------------------------------------------------------------------------

    def own_pending(self) -> bool:
        """Whether this process has events in the spool (then new events queue behind them)."""
        with self._lock:
            return any(s.pending for s in self._own)

    def has_pending(self) -> bool:
        """Whether anything (own or adopted) waits to be sent."""
        with self._lock:
            return any(s.pending for s in [*self._own, *self._orphans])

    def min_own_seq(self) -> int | None:
        """The lowest seq of this process still in the spool, or None."""
        with self._lock:
            seqs = [s.seqs[0] for s in self._own if s.pending and s.seqs]
            return min(seqs) if seqs else None

    def pending_bytes(self) -> int:
        """Bytes of spooled records not yet acknowledged (own and adopted)."""
        with self._lock:
            return sum(s.end - s.acked for s in [*self._own, *self._orphans] if s.pending)

    def close(self) -> None:
        """Release every file (and its lock); what is not acknowledged stays for a later process."""
        with self._lock:
            self._closed = True
            for seg in [*self._own, *self._orphans]:
                if not seg.pending:
                    self._maybe_remove_unlisted(seg)
                else:
                    self._close_segment(seg)
                seg.removed = True
            self._own.clear()
            self._orphans.clear()
