"""SDK delivery: spooling while the transport is down, resending, backpressure, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.events.codec import DecodedEvent, decode
from runledger.events.models import EventType
from runledger_sdk.transport import Outcome, Record


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture(autouse=True)
def _shutdown() -> Iterator[None]:
    yield
    rl.shutdown(5)


FAST = {
    # These runs are checked event by event: no system-metrics sampler (its closing sample
    # would add system/* points to every run).
    "system_metrics_interval_s": 0,
    "batch_interval_ms": 20,
    "resend_backoff_initial_s": 0.02,
    "resend_backoff_max_s": 0.1,
    # No run context (code state, environment, lint): these tests count events.
    "capture_code_state": False,
    "capture_environment": False,
    "lint_runs": False,
}


def decoded(transport: rl.InMemoryTransport) -> list[DecodedEvent]:
    return [decode(r.value) for r in transport.records]


def assert_exactly_once_and_ordered(transport: rl.InMemoryTransport, runs: dict[str, int]) -> None:
    """Each run: RunStarted first, all points 0..n-1 once and in order, StatusChanged last."""
    events = [decode(r.value) for r in transport.records]
    ids = Counter(e.envelope.event_id for e in events)
    assert max(ids.values()) == 1, "an event was delivered twice"
    for run_id, n in runs.items():
        mine = [e for e in events if e.envelope.run_id == run_id]
        assert mine[0].envelope.type is EventType.RUN_STARTED
        assert mine[-1].envelope.type is EventType.STATUS_CHANGED
        values: list[float] = []
        for e in mine:
            if e.envelope.type is EventType.METRICS_LOGGED:
                values.extend(e.payload.values)
        assert values == [float(i) for i in range(n)]


def test_transport_down_then_back_nothing_lost_nothing_doubled(spool_dir: Path) -> None:
    memory = rl.InMemoryTransport()
    memory.fail = True
    rl.init(transport=memory, spool_dir=spool_dir, **FAST)
    runs: dict[str, int] = {}
    for r in range(3):
        with rl.start_run(experiment="outage") as run:
            for i in range(2000):
                run.log_metric("x", float(i))
            run.log_params({"r": r})
        runs[run.run_id] = 2000
    assert rl.flush(0.5) is False  # broker down: spooled, not acknowledged
    assert list(spool_dir.rglob("*.spool"))
    assert memory.records == []

    # More events while down go behind the spooled ones.
    with rl.start_run(experiment="outage") as late:
        for i in range(10):
            late.log_metric("x", float(i))
    runs[late.run_id] = 10

    memory.fail = False
    assert rl.flush(10) is True
    assert_exactly_once_and_ordered(memory, runs)
    assert list(spool_dir.rglob("*.spool")) == []


def test_rejected_events_are_not_retried(spool_dir: Path) -> None:
    memory = rl.InMemoryTransport()
    memory.outcome_for = lambda r: Outcome.REJECTED if b"params_logged" in r.value else Outcome.ACKED
    rl.init(transport=memory, spool_dir=spool_dir, **FAST)
    with rl.start_run() as run:
        run.log_param("a", 1)
        run.log_metric("x", 1.0)
    assert rl.flush(5)
    sends = memory.sends
    time.sleep(0.2)
    assert memory.sends == sends
    types = [e.envelope.type for e in decoded(memory)]
    assert EventType.PARAMS_LOGGED not in types and EventType.METRICS_LOGGED in types
    assert list(spool_dir.rglob("*.spool")) == []


class GatedTransport(rl.InMemoryTransport):
    """Holds every send until `gate` is set: a broker that is slow to acknowledge."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send(self, records: Sequence[Record], timeout: float) -> list[Outcome]:
        self.entered.set()
        self.gate.wait(30)
        return super().send(records, timeout)


def test_queue_bound_spills_to_spool_and_keeps_order(spool_dir: Path) -> None:
    gated = GatedTransport()
    rl.init(transport=gated, spool_dir=spool_dir, max_queue_bytes=20_000, batch_max_points=200, **FAST)
    run = rl.start_run()
    assert gated.entered.wait(5)  # the first send (RunStarted) is stuck
    started = time.perf_counter()
    for i in range(20_000):
        run.log_metric("x", float(i))
    elapsed = time.perf_counter() - started
    run.end_run()
    # The logging thread never waited for the stuck send, and the backlog went to disk.
    assert elapsed < 5
    deadline = time.monotonic() + 5
    while not list(spool_dir.rglob("*.spool")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(spool_dir.rglob("*.spool"))
    assert gated.records == []
    gated.gate.set()
    assert rl.flush(10)
    assert_exactly_once_and_ordered(gated, {run.run_id: 20_000})


DEAD_API = "http://127.0.0.1:9"  # nothing listens on the discard port
CHILD = textwrap.dedent(
    """
    import sys, time
    import runledger_sdk as rl

    # An API that is not there: every send fails, so everything goes to the spool.
    rl.init(transport="http", url=sys.argv[2], spool_dir=sys.argv[1], api_key=sys.argv[3],
            send_timeout_s=0.5, http_retries=1, batch_interval_ms=20, system_metrics_interval_s=0)
    with rl.start_run(experiment="crashed") as run:
        for i in range(5000):
            run.log_metric("x", float(i))
    print(run.run_id, flush=True)
    rl.flush(0.5)
    print("spooled", flush=True)
    time.sleep(60)
    """
)


def test_spool_of_a_killed_process_is_sent_by_the_next(spool_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool_dir), DEAD_API, generate_key().token],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "spooled"
        memory = rl.InMemoryTransport()
        # While the child lives, its spool is locked: nobody else sends it. (Same url: the
        # spool is per destination, and the in-memory transport stands in for that API.)
        rl.init(transport=memory, spool_dir=spool_dir, url=DEAD_API, **FAST)
        time.sleep(0.3)
        assert memory.records == []
        rl.shutdown(1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

    memory = rl.InMemoryTransport()
    rl.init(transport=memory, spool_dir=spool_dir, url=DEAD_API, **FAST)  # adopts the dead child's spool
    deadline = time.monotonic() + 10
    while list(spool_dir.rglob("*.spool")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(spool_dir.rglob("*.spool")) == []
    assert_exactly_once_and_ordered(memory, {run_id: 5000})
    status = [e for e in decoded(memory) if e.envelope.type is EventType.STATUS_CHANGED]
    assert status[0].payload.status.value == "FINISHED"


def test_close_with_transport_down_leaves_spool_for_next_process(spool_dir: Path) -> None:
    memory = rl.InMemoryTransport()
    memory.fail = True
    rl.init(transport=memory, spool_dir=spool_dir, **FAST)
    run = rl.start_run()
    for i in range(100):
        run.log_metric("x", float(i))
    assert rl.shutdown(0.3) is False  # ends the run, spools, warns
    assert list(spool_dir.rglob("*.spool"))

    memory = rl.InMemoryTransport()
    rl.init(transport=memory, spool_dir=spool_dir, **FAST)
    assert rl.flush(5)  # own events: none; the adopted ones drain in the background
    deadline = time.monotonic() + 10
    while list(spool_dir.rglob("*.spool")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_exactly_once_and_ordered(memory, {run.run_id: 100})


def test_spool_is_per_destination(spool_dir: Path) -> None:
    memory = rl.InMemoryTransport()
    memory.fail = True
    rl.init(transport=memory, spool_dir=spool_dir, url="http://cluster-a:8765", **FAST)
    with rl.start_run():
        pass
    assert rl.shutdown(0.2) is False

    # A process sending elsewhere never picks up cluster A's events...
    other = rl.InMemoryTransport()
    rl.init(transport=other, spool_dir=spool_dir, url="http://cluster-b:8765", **FAST)
    time.sleep(0.3)
    assert other.records == []
    rl.shutdown(1)
    # ...a process sending to cluster A does.
    same = rl.InMemoryTransport()
    rl.init(transport=same, spool_dir=spool_dir, url="http://cluster-a:8765", **FAST)
    deadline = time.monotonic() + 10
    while len(same.records) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(same.records) == 3  # ExperimentCreated, RunStarted, StatusChanged
