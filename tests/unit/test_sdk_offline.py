"""Offline mode: runs written to local segments, and `runledger sync` sending them later."""

from __future__ import annotations

import fcntl
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runledger_sdk as rl
from runledger.cli import main as cli_main
from runledger.events.codec import DecodedEvent, decode, encode, envelope_dict, producer
from runledger.events.metric_columns import MetricColumns
from runledger.events.models import EventType
from runledger_sdk import client as client_module
from runledger_sdk.config import destination_id, load_settings
from runledger_sdk.spool import Spool, read_frames
from runledger_sdk.sync import (
    LOCK_NAME,
    PROGRESS_SUFFIX,
    SYNCED_SUFFIX,
    ProgressLine,
    SyncBusy,
    segment_paths,
    sync_command,
    sync_directory,
)
from runledger_sdk.transport import Outcome, Record
from runledger_sdk.transport_memory import InMemoryTransport
from runledger_sdk.transport_offline import MAGIC, OfflineTransport

# --- helpers -------------------------------------------------------------------------------------


def read_segment(path: Path) -> tuple[list[Record], int | None]:
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, len(MAGIC), 0) == MAGIC
        records, _, bad = read_frames(fd, len(MAGIC), os.fstat(fd).st_size, 1 << 30, 1 << 62)
    finally:
        os.close(fd)
    return records, bad


def offline_events(directory: Path) -> list[DecodedEvent]:
    out: list[DecodedEvent] = []
    for path in segment_paths(directory):
        records, bad = read_segment(path)
        assert bad is None
        out.extend(decode(r.value) for r in records)
    return out


def payload(event: DecodedEvent) -> Any:
    """The typed payload, untyped for the assertions."""
    return event.payload


def of_type(events: list[DecodedEvent], type_: EventType, run_id: str | None = None) -> list[DecodedEvent]:
    return [e for e in events if e.envelope.type is type_ and (run_id is None or e.envelope.run_id == run_id)]


def event_records(count: int, start: int = 0, run: str = "r1") -> list[Record]:
    """Real encoded events (ParamsLogged), so that they can be decoded after the round trip."""
    out = []
    for seq in range(start, start + count):
        value = encode(
            envelope_dict(
                tenant_id="default",
                type=EventType.PARAMS_LOGGED,
                payload={"params": {f"p{seq}": str(seq)}},
                producer=producer("test"),
                run_id=run,
                experiment_id="0",
            )
        )
        out.append(Record(seq, run.encode(), value))
    return out


def write_offline(directory: Path, records: list[Record], **kwargs: Any) -> OfflineTransport:
    transport = OfflineTransport(directory, **kwargs)
    for i in range(0, len(records), 10):
        assert transport.send(records[i : i + 10], 1.0) == [Outcome.ACKED] * len(records[i : i + 10])
    transport.close(1.0)
    return transport


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "offline"
    rl.init(
        mode="offline",
        offline_dir=directory,
        spool_dir=tmp_path / "spool",
        batch_interval_ms=20,
        system_metrics_interval_s=0,
    )
    yield directory
    rl.shutdown(5)


# --- settings ------------------------------------------------------------------------------------


def test_offline_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().mode == "online"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNLEDGER_MODE", "offline")
    # Offline needs no target at all, not even a valid one.
    monkeypatch.setenv("RUNLEDGER_TRANSPORT", "kafka")
    settings = load_settings()
    assert settings.mode == "offline"
    assert settings.offline_dir == tmp_path / ".runledger" / "offline"  # absolute, from the cwd
    assert destination_id(settings).startswith("offline-")
    assert destination_id(settings) != destination_id(load_settings(offline_dir=tmp_path / "other"))
    assert isinstance(client_module.make_transport(settings), OfflineTransport)
    monkeypatch.setenv("RUNLEDGER_MODE", "elsewhere")
    with pytest.raises(ValueError, match="mode"):
        load_settings()


# --- writing ---------------------------------------------------------------------------------------


def test_an_offline_run_writes_exactly_what_an_online_run_sends(offline: Path) -> None:
    with rl.start_run(experiment="offline-exp", name="parent", tags={"t": "1"}) as parent:
        rl.log_params({"lr": 0.1, "optimizer": "adam"})
        with rl.start_run(name="child", nested=True) as child:
            rl.log_param("fold", 3)
            for step in range(1000):
                rl.log_metric("loss", 1.0 / (step + 1), step=step)
    with pytest.raises(ZeroDivisionError), rl.start_run(experiment="offline-exp") as failed:
        _ = 1 / 0
    assert rl.flush(10)

    # One process, one file (nothing rotated), named after this process, unlocked once closed.
    rl.shutdown(5)
    paths = segment_paths(offline)
    assert len(paths) == 1 and paths[0].name.split(".")[0].endswith(f"-{os.getpid()}")
    fd = os.open(paths[0], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if still held
    os.close(fd)

    events = offline_events(offline)
    assert len({e.envelope.event_id for e in events}) == len(events)
    assert [payload(e).name for e in of_type(events, EventType.EXPERIMENT_CREATED)] == ["offline-exp"]
    started = {e.envelope.run_id: payload(e) for e in of_type(events, EventType.RUN_STARTED)}
    assert set(started) == {parent.run_id, child.run_id, failed.run_id}
    assert started[child.run_id].parent_run_id == parent.run_id
    assert started[parent.run_id].tags == {"t": "1"}
    parent_params = [payload(e).params for e in of_type(events, EventType.PARAMS_LOGGED, parent.run_id)]
    assert {k: v for p in parent_params for k, v in p.items()} == {"lr": "0.1", "optimizer": "adam"}
    child_params = [payload(e).params for e in of_type(events, EventType.PARAMS_LOGGED, child.run_id)]
    assert child_params == [{"fold": "3"}]
    steps: list[int] = []
    values: list[float] = []
    for e in of_type(events, EventType.METRICS_LOGGED, child.run_id):
        assert isinstance(e.payload, MetricColumns)
        assert e.payload.keys == ["loss"]
        steps.extend(e.payload.steps.tolist())
        values.extend(e.payload.values.tolist())
    assert steps == list(range(1000)) and values == [1.0 / (s + 1) for s in range(1000)]
    statuses = {e.envelope.run_id: payload(e).status.value for e in of_type(events, EventType.STATUS_CHANGED)}
    assert statuses == {parent.run_id: "FINISHED", child.run_id: "FINISHED", failed.run_id: "FAILED"}
    for run_id in statuses:  # per run, StatusChanged is the last event, as online
        last = [e for e in events if e.envelope.run_id == run_id][-1]
        assert last.envelope.type is EventType.STATUS_CHANGED


def test_offline_segments_rotate_and_each_process_has_its_own(tmp_path: Path) -> None:
    one, two = event_records(50), event_records(5, run="r2")
    first = write_offline(tmp_path, one, max_segment_bytes=4096)
    second = write_offline(tmp_path, two)
    assert first.owner != second.owner
    paths = segment_paths(tmp_path)
    assert len(paths) == len(first.segments) + 1 and len(first.segments) > 1
    assert paths[: len(first.segments)] == first.segments  # names sort by process, then index
    assert [r.value for p in paths for r in read_segment(p)[0]] == [r.value for r in one + two]


def test_a_disk_error_fails_the_batch_so_the_delivery_spools_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    transport = OfflineTransport(blocker / "offline")
    assert transport.send(event_records(3), 1.0) == [Outcome.FAILED] * 3
    assert "cannot write" in transport.last_error
    transport.close(1.0)


def test_nothing_logged_leaves_no_files(offline: Path) -> None:
    rl.shutdown(5)
    assert not offline.exists()


# --- syncing -----------------------------------------------------------------------------------------


def test_sync_sends_everything_in_order_then_markers_make_it_a_no_op(offline: Path) -> None:
    with rl.start_run(experiment="s") as run:
        for step in range(300):
            rl.log_metric("x", float(step), step=step)
            if step % 100 == 0:
                rl.flush(5)  # several batches
    rl.shutdown(5)
    written = [r.value for p in segment_paths(offline) for r in read_segment(p)[0]]

    memory = InMemoryTransport()
    totals: list[int] = []
    done: list[tuple[int, int]] = []

    def progress(total: int) -> Any:
        totals.append(total)
        return lambda nbytes, events: done.append((nbytes, events))

    report = sync_directory(offline, memory, max_records=7, progress=progress)
    assert report.ok and report.synced == 1 and report.sent == len(written)
    assert [r.value for r in memory.records] == written  # same bytes, same event ids, same order
    assert memory.sends == -(-len(written) // 7)
    assert totals == [sum(p.stat().st_size - len(MAGIC) for p in segment_paths(offline))]
    assert sum(b for b, _ in done) == totals[0] and sum(e for _, e in done) == len(written)
    assert of_type([decode(r.value) for r in memory.records], EventType.STATUS_CHANGED, run.run_id)
    marker = json.loads(Path(str(segment_paths(offline)[0]) + SYNCED_SUFFIX).read_text())
    assert marker["events"] == len(written) and marker["rejected"] == 0

    again = InMemoryTransport()
    second = sync_directory(offline, again)
    assert second.ok and second.skipped == 1 and second.sent == 0 and again.sends == 0

    forced = sync_directory(offline, again, force=True)
    assert forced.sent == len(written) and [r.value for r in again.records] == written


@pytest.mark.parametrize(
    "kept", [1, 5, 9, 20, -1], ids=["1-byte", "mid-header", "header+1", "mid-body", "all-but-1"]
)
def test_a_crash_truncated_last_record_is_ignored(tmp_path: Path, kept: int) -> None:
    records = event_records(12)
    transport = write_offline(tmp_path, records)
    path = transport.segments[0]
    last = 8 + 10 + len(records[-1].key) + len(records[-1].value)  # frame header + body
    kept = kept if kept > 0 else last + kept
    os.truncate(path, path.stat().st_size - last + kept)  # the crash kept `kept` bytes of it

    memory = InMemoryTransport()
    report = sync_directory(tmp_path, memory)
    assert [r.value for r in memory.records] == [r.value for r in records[:-1]]
    assert report.ok and report.synced == 1 and report.torn == [path.name]
    assert json.loads(Path(str(path) + SYNCED_SUFFIX).read_text())["events"] == 11


def test_a_partial_failure_resumes_where_it_stopped(tmp_path: Path) -> None:
    one, two = event_records(40), event_records(10, run="r2")
    first = write_offline(tmp_path, one)
    second = write_offline(tmp_path, two)
    failing = InMemoryTransport()
    failing.outcome_for = lambda r: Outcome.FAILED if len(failing.records) >= 25 else Outcome.ACKED
    report = sync_directory(tmp_path, failing, max_records=10)
    assert not report.ok and report.sent == 25 and report.unsent_segments == 2
    assert "not sent" in report.error
    progress = json.loads(Path(str(first.segments[0]) + PROGRESS_SUFFIX).read_text())
    assert progress["events"] == 25
    assert not Path(str(second.segments[0]) + SYNCED_SUFFIX).exists()

    memory = InMemoryTransport()
    report = sync_directory(tmp_path, memory, max_records=10)
    assert report.ok and report.synced == 2 and report.sent == 25
    # Only what was not acknowledged goes again: nothing lost, nothing twice.
    assert [r.value for r in failing.records + memory.records] == [r.value for r in one + two]
    assert not Path(str(first.segments[0]) + PROGRESS_SUFFIX).exists()
    assert json.loads(Path(str(first.segments[0]) + SYNCED_SUFFIX).read_text())["events"] == 40


def test_refused_events_stop_the_sync_unless_skipped(tmp_path: Path) -> None:
    write_offline(tmp_path, event_records(10))
    refusing = InMemoryTransport()
    refusing.outcome_for = lambda r: Outcome.REJECTED if r.seq == 4 else Outcome.ACKED
    report = sync_directory(tmp_path, refusing)
    assert not report.ok and report.rejected == 1 and report.synced == 0 and "refused" in report.error
    assert [r.seq for r in refusing.records] == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # the batch went through

    report = sync_directory(tmp_path, refusing, skip_rejected=True)  # resumes at seq 4
    assert report.synced == 1 and report.rejected == 1 and report.sent == 5
    assert not report.ok  # exit code 1: something was not delivered
    assert sync_directory(tmp_path, refusing).ok  # then it is marked: nothing left to do
    marker = json.loads(next(tmp_path.glob(f"*{SYNCED_SUFFIX}")).read_text())
    assert marker == marker | {"events": 9, "rejected": 1}


def test_a_segment_still_being_written_is_sent_so_far_and_finished_later(tmp_path: Path) -> None:
    records = event_records(30)
    writer = OfflineTransport(tmp_path)
    writer.send(records[:20], 1.0)
    memory = InMemoryTransport()
    report = sync_directory(tmp_path, memory)
    assert report.ok and report.live == 1 and report.synced == 0 and report.sent == 20
    assert not Path(str(writer.segments[0]) + SYNCED_SUFFIX).exists()

    writer.send(records[20:], 1.0)
    writer.close(1.0)
    report = sync_directory(tmp_path, memory)
    assert report.ok and report.live == 0 and report.synced == 1 and report.sent == 10
    assert [r.value for r in memory.records] == [r.value for r in records]


def test_one_sync_at_a_time(tmp_path: Path) -> None:
    write_offline(tmp_path, event_records(3))
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SyncBusy):
            sync_directory(tmp_path, InMemoryTransport())
    finally:
        os.close(fd)
    assert sync_directory(tmp_path, InMemoryTransport()).synced == 1


def test_foreign_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.events").write_bytes(b"hello")
    report = sync_directory(tmp_path, InMemoryTransport())
    assert report.ok and report.foreign == ["notes.events"] and report.synced == 0
    with pytest.raises(FileNotFoundError):
        sync_directory(tmp_path / "missing", InMemoryTransport())


# --- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def memory_target(monkeypatch: pytest.MonkeyPatch) -> InMemoryTransport:
    memory = InMemoryTransport()
    monkeypatch.setattr(client_module, "make_transport", lambda settings: memory)
    return memory


def test_sync_command_reports_and_repeats_as_a_no_op(
    tmp_path: Path, memory_target: InMemoryTransport
) -> None:
    write_offline(tmp_path, event_records(25))
    out = io.StringIO()
    assert sync_command(tmp_path, url="http://example.invalid", stream=out) == 0
    text = out.getvalue()
    assert "-> http://example.invalid" in text and "sync 100% [" in text
    assert "sent 25 event(s); 1 segment(s) fully synced" in text and "everything is synced" in text
    assert len(memory_target.records) == 25

    out = io.StringIO()
    assert sync_command(tmp_path, url="http://example.invalid", stream=out) == 0
    assert "1 segment(s) already synced earlier: skipped" in out.getvalue()
    assert len(memory_target.records) == 25


def test_sync_command_exit_codes(tmp_path: Path, memory_target: InMemoryTransport) -> None:
    out = io.StringIO()
    assert sync_command(tmp_path / "missing", stream=out) == 2 and "no such directory" in out.getvalue()
    out = io.StringIO()
    assert sync_command(tmp_path, stream=out) == 0 and "nothing to sync" in out.getvalue()
    write_offline(tmp_path, event_records(5))
    memory_target.fail = True
    out = io.StringIO()
    assert sync_command(tmp_path, stream=out) == 1
    assert "error:" in out.getvalue() and "left for the next sync" in out.getvalue()


def test_cli_sync_against_an_unreachable_api_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNLEDGER_HTTP_RETRIES", "1")
    monkeypatch.setenv("RUNLEDGER_SEND_TIMEOUT_S", "2")
    monkeypatch.setenv("RUNLEDGER_MODE", "offline")  # sync sends whatever the mode says
    write_offline(tmp_path / "off", event_records(5))
    assert (
        cli_main(["sync", str(tmp_path / "off"), "--url", "http://127.0.0.1:9", "--state-dir", str(tmp_path)])
        == 1
    )
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and "left for the next sync" in err
    assert not list((tmp_path / "off").glob(f"*{SYNCED_SUFFIX}"))


def test_progress_line(tmp_path: Path) -> None:
    out = io.StringIO()
    bar = ProgressLine(2_000_000, out, interval_s=0)
    bar(1_000_000, 10)
    bar(1_000_000, 5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sync  50% [") and "1.0/2.0 MB" in lines[0] and " 10 events" in lines[0]
    assert lines[-1].startswith("sync 100% [") and "15 events" in lines[-1]


# --- the spool reader shared with the spool --------------------------------------------------------------


def test_a_spool_orphan_torn_inside_a_frame_header_is_drained(tmp_path: Path) -> None:
    # A tail shorter than a frame header used to stay "pending" forever (the drain spun).
    spool = Spool(tmp_path)
    spool.append(event_records(2))
    seg = spool._own[0]
    os.close(seg.fd)
    spool._own.clear()
    with open(seg.path, "ab") as f:
        f.write(b"\x01\x02\x03")
    other = Spool(tmp_path)
    assert other.adopt_orphans() == 1
    batch = other.peek(10, 1 << 20)
    assert batch is not None and len(batch.records) == 2
    other.ack(batch, 2)
    assert not other.has_pending() and not list(tmp_path.glob("*.spool"))
    other.close()
