"""`runledger sync DIR`: send what offline mode (RUNLEDGER_MODE=offline) wrote, later.

Every segment of DIR (runledger_sdk.transport_offline) is read in name order (process
start, then segment index) and its events are sent, as they were written (same bytes,
same event_id), through the SDK's own HTTP or Kafka transport, in batches, in order.
Events written without an API key (offline mode needs none) are signed here with the
key the sync sends with; signing is deterministic, so a resent event is the same bytes.
Their tenant stays the one they were written for: it must be the syncing key's tenant
(set RUNLEDGER_TENANT when logging offline), else the projector refuses them.
Sending an event twice is harmless: the projector drops duplicates by event_id. So a
sync can always be repeated, and two markers only save work:

- `<segment>.synced` (JSON) is written once every event of a finished segment is
  acknowledged; a later sync skips the segment and says so (`--force` sends it again).
- `<segment>.progress` (JSON) holds the offset of the first event not acknowledged yet,
  for a segment that is not done: the sync failed part way, or the segment is still being
  written by a running process (it holds a flock on it). The next sync resumes there.

A sync stops at the first event the target does not acknowledge (unreachable, or refused,
e.g. a wrong API key), so that a run's events never arrive out of order and nothing is
marked as sent that was not; the rest waits for the next sync and the exit code is 1.
`--skip-rejected` counts refused events as done instead (as the online SDK does).
One sync at a time per directory (`DIR/.sync.lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from runledger_sdk.delivery import CHUNK_MAX_BYTES, CHUNK_MAX_RECORDS
from runledger_sdk.spool import _fsync_dir, read_frames
from runledger_sdk.transport import Outcome, Record, Transport
from runledger_sdk.transport_offline import MAGIC, SEGMENT_SUFFIX

log = logging.getLogger("runledger_sdk.sync")

SYNCED_SUFFIX = ".synced"
PROGRESS_SUFFIX = ".progress"
LOCK_NAME = ".sync.lock"


class SyncBusy(RuntimeError):
    """Another sync holds the directory."""


@dataclass
class SyncReport:
    """What one sync did."""

    segments: int = 0  # segment files found
    skipped: int = 0  # already synced by an earlier run (markers)
    synced: int = 0  # fully acknowledged by this run (marked)
    live: int = 0  # still being written by a running process: sent so far, not marked
    sent: int = 0  # events acknowledged by the target
    rejected: int = 0  # events the target refused for good
    unsent_segments: int = 0  # segments left (wholly or partly) for the next sync
    torn: list[str] = field(default_factory=list)  # segments whose torn tail was ignored
    foreign: list[str] = field(default_factory=list)  # files with the suffix but not a segment
    error: str = ""  # why the sync stopped early

    @property
    def ok(self) -> bool:
        """Whether everything found was delivered (exit code 0); refused events are not."""
        return not self.error and self.unsent_segments == 0 and self.rejected == 0


ProgressCallback = Callable[[int, int], None]  # (bytes done, events done) since the last call


@dataclass
class _Plan:
    path: Path
    start: int  # offset of the first event not acknowledged yet
    size: int
    events: int  # acknowledged by earlier syncs
    rejected: int


def segment_paths(directory: Path) -> list[Path]:
    """The segments of `directory`, in the order they are sent."""
    return sorted(p for p in directory.glob(f"*{SEGMENT_SUFFIX}") if p.is_file())


def _marker(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically and durably replace `path` (best effort: a lost marker only costs a resend)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(obj, sort_keys=True).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        log.warning("cannot write %s (the next sync sends its events again): %s", path, exc)


def _plan(directory: Path, force: bool, report: SyncReport) -> list[_Plan]:
    plans: list[_Plan] = []
    for path in segment_paths(directory):
        report.segments += 1
        if not force and _marker(path, SYNCED_SUFFIX).exists():
            report.skipped += 1
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        start, events, rejected = len(MAGIC), 0, 0
        progress = None if force else _read_json(_marker(path, PROGRESS_SUFFIX))
        if progress is not None:
            offset = progress.get("offset")
            if isinstance(offset, int) and len(MAGIC) <= offset <= size:
                start = offset
                events = int(progress.get("events") or 0)
                rejected = int(progress.get("rejected") or 0)
        plans.append(_Plan(path, start, size, events, rejected))
    return plans


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a read-only directory: nothing to race on, markers fail too
        log.warning("cannot create %s (%s); going on without the lock", directory / LOCK_NAME, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncBusy(f"another `runledger sync` is running on {directory}") from None
        yield
    finally:
        os.close(fd)


def _send(transport: Transport, records: list[Record], timeout: float) -> list[Outcome]:
    try:
        outcomes = transport.send(records, timeout)
    except Exception as exc:
        transport.last_error = f"{type(exc).__name__}: {exc}"
        return [Outcome.FAILED] * len(records)
    if len(outcomes) != len(records):  # pragma: no cover - a transport bug
        transport.last_error = f"{len(outcomes)} outcomes for {len(records)} records"
        return [Outcome.FAILED] * len(records)
    return outcomes


def sync_directory(
    directory: Path,
    transport: Transport,
    *,
    send_timeout_s: float = 10.0,
    force: bool = False,
    skip_rejected: bool = False,
    max_records: int = CHUNK_MAX_RECORDS,
    max_bytes: int = CHUNK_MAX_BYTES,
    progress: Callable[[int], ProgressCallback] | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> SyncReport:
    """Send every segment of `directory` that is not marked synced through `transport`.

    `progress(total_bytes)` is called once with the bytes to send and returns a callback
    that gets the bytes and events done after each batch. `sign` turns each event's bytes
    into what is sent (signing events written without a key). Raises FileNotFoundError /
    NotADirectoryError for a bad `directory` and SyncBusy when another sync holds it.
    """
    if not directory.exists():
        raise FileNotFoundError(f"no such directory: {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    report = SyncReport()
    with _directory_lock(directory):
        plans = _plan(directory, force, report)
        advance = progress(sum(p.size - p.start for p in plans)) if progress is not None else None
        for i, plan in enumerate(plans):
            if not _sync_segment(
                plan, transport, send_timeout_s, skip_rejected, max_records, max_bytes, report, advance, sign
            ):
                report.unsent_segments = len(plans) - i
                break
    return report


def _sync_segment(
    plan: _Plan,
    transport: Transport,
    timeout: float,
    skip_rejected: bool,
    max_records: int,
    max_bytes: int,
    report: SyncReport,
    advance: ProgressCallback | None,
    sign: Callable[[bytes], bytes] | None = None,
) -> bool:
    """Send one segment from its saved offset; False when the sync must stop here."""
    path = plan.path
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        report.error = f"cannot open {path}: {exc}"
        return False
    pos, events, rejected = plan.start, plan.events, plan.rejected
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            live = False
        except BlockingIOError:
            live = True  # its process still appends: send what is there, finish it later
        if os.pread(fd, len(MAGIC), 0) != MAGIC:
            log.warning("%s is not an offline segment; leaving it alone", path)
            report.foreign.append(path.name)
            return True
        end = os.fstat(fd).st_size
        while pos < end:
            records, ends, bad = read_frames(fd, pos, end, max_records, max_bytes)
            if not records and bad is None:  # pragma: no cover - read_frames always progresses
                break
            if records:
                if sign is not None:
                    records = [Record(r.seq, r.key, sign(r.value)) for r in records]
                outcomes = _send(transport, records, timeout)
                done = 0
                for outcome in outcomes:
                    if outcome is Outcome.FAILED or (outcome is Outcome.REJECTED and not skip_rejected):
                        break
                    done += 1
                acked = outcomes[:done].count(Outcome.ACKED)
                events += acked
                rejected += done - acked
                report.sent += acked
                report.rejected += done - acked
                if done:
                    if advance is not None:
                        advance(ends[done - 1] - pos, done)
                    pos = ends[done - 1]
                if done < len(records):
                    refused = outcomes[done] is Outcome.REJECTED
                    if refused:
                        report.rejected += 1
                    if refused:
                        reason = "refused for good by the target (see the log)"
                    else:
                        reason = f"not sent: {transport.last_error or 'not acknowledged'}"
                    report.error = f"{path.name} (from byte {pos}): {reason}"
                    return False
            if bad is not None:
                if not live:
                    log.warning(
                        "%s: ignoring a torn or corrupt record at offset %d (of %d bytes)",
                        path.name,
                        bad,
                        end,
                    )
                    report.torn.append(path.name)
                    if advance is not None:
                        advance(end - bad, 0)
                break
        if live:
            report.live += 1
            return True
        _write_json(
            _marker(path, SYNCED_SUFFIX),
            {
                "events": events,
                "rejected": rejected,
                "bytes": pos,
                "target": transport.name,
                "synced_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        with contextlib.suppress(FileNotFoundError):
            _marker(path, PROGRESS_SUFFIX).unlink()
        report.synced += 1
        return True
    finally:
        os.close(fd)
        if pos > plan.start and not _marker(path, SYNCED_SUFFIX).exists():
            _write_json(
                _marker(path, PROGRESS_SUFFIX), {"offset": pos, "events": events, "rejected": rejected}
            )


class ProgressLine:
    """A one-line progress display on stderr: redrawn in place on a terminal, else a line
    every `interval_s` (logs of batch jobs), plus a last line when done."""

    def __init__(
        self, total_bytes: int, stream: TextIO | None = None, interval_s: float | None = None
    ) -> None:
        self.total = total_bytes
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval_s if interval_s is not None else (0.1 if self.tty else 10.0)
        self.bytes = 0
        self.events = 0
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, nbytes: int, events: int) -> None:
        self.bytes += nbytes
        self.events += events
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        frac = min(self.bytes / self.total, 1.0) if self.total else 1.0
        width = 30
        filled = int(frac * width)
        elapsed = max(time.monotonic() - self._start, 1e-9)
        line = (
            f"sync {frac:4.0%} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.bytes / 1e6:.1f}/{self.total / 1e6:.1f} MB  {self.events:,} events  "
            f"{self.bytes / 1e6 / elapsed:.1f} MB/s"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state."""
        self._draw(final=True)


def sync_command(
    directory: Path | None,
    *,
    url: str | None = None,
    kafka_bootstrap: str | None = None,
    api_key: str | None = None,
    topic: str | None = None,
    state_dir: Path | None = None,
    force: bool = False,
    skip_rejected: bool = False,
    stream: TextIO | None = None,
) -> int:
    """`runledger sync`: resolve the target like the SDK does, sync, report; the exit code."""
    from runledger_sdk.client import make_transport
    from runledger_sdk.config import load_settings
    from runledger_sdk.identity import ApiKeyError, signing_key
    from runledger_sdk.signing import Signer

    out = stream if stream is not None else sys.stderr
    # Always online, whatever RUNLEDGER_MODE says: sending is the point.
    overrides: dict[str, Any] = {"mode": "online"}
    if url:
        overrides.update(url=url, transport="http")
    if kafka_bootstrap:
        overrides.update(kafka_bootstrap=kafka_bootstrap, transport="kafka")
    if api_key:
        overrides["api_key"] = api_key
    if topic:
        overrides["events_topic"] = topic
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    try:
        settings = load_settings(**overrides)
        key = signing_key(settings, required=False)
    except (ValueError, ApiKeyError) as exc:
        print(f"runledger sync: {exc}", file=out)
        return 2
    if directory is None:
        directory = settings.offline_dir
    target = (
        f"kafka {settings.kafka_bootstrap} topic {settings.events_topic}"
        if settings.transport == "kafka"
        else settings.url
    )
    transport = make_transport(settings)
    bars: list[ProgressLine] = []

    def start(total: int) -> ProgressCallback:
        bars.append(ProgressLine(total, out))
        return bars[0]

    try:
        print(f"runledger sync: {directory} -> {target}", file=out)
        report = sync_directory(
            directory,
            transport,
            send_timeout_s=settings.send_timeout_s,
            force=force,
            skip_rejected=skip_rejected,
            progress=start,
            sign=Signer(key).sign_raw if key is not None else None,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"runledger sync: {exc}", file=out)
        return 2
    except SyncBusy as exc:
        print(f"runledger sync: {exc}", file=out)
        return 1
    except KeyboardInterrupt:
        print("\nrunledger sync: interrupted; what was acknowledged is recorded", file=out)
        return 130
    finally:
        for bar in bars:
            bar.close()
        transport.close(settings.send_timeout_s)
    _print_report(report, out)
    return 0 if report.ok else 1


def _print_report(report: SyncReport, out: TextIO) -> None:
    def say(message: str) -> None:
        print(f"runledger sync: {message}", file=out)

    if report.segments == 0:
        say("no offline segments here: nothing to sync")
        return
    if report.skipped:
        say(f"{report.skipped} segment(s) already synced earlier: skipped (--force sends them again)")
    if report.synced or report.sent:
        say(f"sent {report.sent:,} event(s); {report.synced} segment(s) fully synced")
    if report.live:
        say(
            f"{report.live} segment(s) are still being written by a running process: sent what they hold "
            "so far; sync again when it has finished"
        )
    for name in report.torn:
        say(f"{name}: a record cut short (its process died mid-write) or corrupt was ignored, with the rest")
    for name in report.foreign:
        say(f"{name}: not an offline segment, left alone")
    if report.rejected:
        say(f"{report.rejected:,} event(s) were refused by the target (see the log)")
    if report.error:
        say(f"error: {report.error}")
    if report.unsent_segments:
        say(f"{report.unsent_segments} segment(s) not (fully) sent: they are left for the next sync")
    elif report.ok and not report.live:
        say("done: everything is synced")
