"""Offline transport (RUNLEDGER_MODE=offline): events go to local segment files, no network.

Layout: `<offline_dir>/<owner>.<index>.events`, `owner` unique per process (a UUIDv7, so
names sort by process start, then the pid for humans), `index` counting the segments of
that process. A segment has the spool's format (runledger_sdk.spool: a magic header, then
frames `<u32 length><u32 crc32c(body)><body>`, body = `<u64 seq><u16 key length><key>
<value>`), holding each event's exact bytes: the envelope with the event_id it got when it
was logged, so a later `runledger sync` (runledger_sdk.sync) delivers the very events an
online run would have sent, and sending them twice is harmless (the projector drops
duplicates by event_id).

Every `send` (one batch of the delivery thread, never the training thread) is one write
plus one fsync, acknowledged once durable. A segment is flock()ed while its process
writes it, so `runledger sync` can tell a finished segment from one still growing. A torn
last frame (crash mid-write) fails its length or CRC check and is ignored by the reader.
When the disk refuses a write the batch is FAILED: the delivery keeps it in the spool and
retries, as it does when a broker is down.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import uuid_utils

from runledger_sdk.spool import _MAGIC, _frame, _fsync_dir, _write_all
from runledger_sdk.transport import Outcome, Record, Transport

log = logging.getLogger("runledger_sdk.offline")

SEGMENT_SUFFIX = ".events"
MAGIC = _MAGIC
MAX_SEGMENT_BYTES = 64 << 20


class OfflineTransport(Transport):
    """Appends records durably to this process's segment files under `directory`."""

    name = "offline"

    def __init__(self, directory: Path, *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.owner = f"{uuid_utils.uuid7().hex}-{os.getpid()}"
        self._max_segment_bytes = max_segment_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._end = 0  # bytes of whole frames in the current segment
        self._index = 0
        self.events = 0  # records written by this process
        self.segments: list[Path] = []

    def send(self, records: Sequence[Record], timeout: float) -> list[Outcome]:
        """Append `records` and fsync; ACKED when durable, FAILED when the disk refuses."""
        if not records:
            return []
        blob = b"".join(_frame(r) for r in records)
        try:
            if self._fd is None or (
                self._end > len(MAGIC) and self._end + len(blob) > self._max_segment_bytes
            ):
                self._open_segment()
            assert self._fd is not None and self._path is not None
            try:
                _write_all(self._fd, blob, self._end)
                os.fsync(self._fd)
            except OSError:
                # Cut off whatever part made it, so the file still ends on a whole frame.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._end)
                raise
        except OSError as exc:
            self.last_error = f"cannot write to {self.directory}: {exc}"
            return [Outcome.FAILED] * len(records)
        self._end += len(blob)
        self.events += len(records)
        return [Outcome.ACKED] * len(records)

    def _open_segment(self) -> None:
        self._close_segment()
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.directory.parent)
        path = self.directory / f"{self.owner}.{self._index:06d}{SEGMENT_SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            # Locked before it gets its final name: `runledger sync` must never take a
            # segment that is still being written for a finished one.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, MAGIC, 0)
            os.fsync(fd)
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.directory)
        self._fd, self._path, self._end = fd, path, len(MAGIC)
        self._index += 1
        self.segments.append(path)
        if self._index == 1:
            log.info("RunLedger offline mode: events go to %s", self.directory)

    def _close_segment(self) -> None:
        if self._fd is not None:
            # Closing releases the flock: the segment is finished.
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self, timeout: float) -> None:
        """Finish the current segment (a later `runledger sync` sends it whole)."""
        self._close_segment()
        if self.events:
            log.info(
                "RunLedger offline mode: %d event(s) in %s; send them with `runledger sync %s`",
                self.events,
                self.directory,
                self.directory,
            )
