"""The SDK's HTTP transport against a real (local) HTTP server."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.events.codec import decode
from runledger.events.models import EventType
from runledger_sdk.config import load_settings
from runledger_sdk.transport import Outcome, Record
from runledger_sdk.transport_http import HttpTransport

TEST_KEY = generate_key().token  # online clients sign every event: they need a key


class EventsApi:
    """A tiny stand-in for POST /api/v1/events: answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.accepted: list[bytes] = []  # bodies answered with 2xx
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                api.requests.append((self.path, dict(self.headers.items()), body))
                status = api.statuses.pop(0) if api.statuses else 200
                if 200 <= status < 300:
                    api.accepted.append(body)
                reply = json.dumps({"detail": f"status {status}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def events(self) -> list[Any]:
        return [decode(json.dumps(e).encode()) for body in self.accepted for e in json.loads(body)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[EventsApi]:
    server = EventsApi()
    yield server
    server.close()


def transport_for(api_url: str, **overrides: Any) -> HttpTransport:
    return HttpTransport(load_settings(transport="http", url=api_url, **overrides))


def recs(n: int) -> list[Record]:
    return [Record(i, b"run", b'{"i": %d}' % i) for i in range(n)]


def test_posts_a_json_array_with_bearer_key(api: EventsApi) -> None:
    transport = transport_for(api.url, api_key="s3cret")
    assert transport.send(recs(3), 5) == [Outcome.ACKED] * 3
    [(path, headers, body)] = api.requests
    assert path == "/api/v1/events"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    assert json.loads(body) == [{"i": 0}, {"i": 1}, {"i": 2}]
    transport.close(1)


def test_no_key_no_authorization_header(api: EventsApi) -> None:
    transport = transport_for(api.url + "/", api_key="")
    transport.send(recs(1), 5)
    assert "Authorization" not in api.requests[0][1]
    assert api.requests[0][0] == "/api/v1/events"


def test_4xx_rejects_without_retry(api: EventsApi, caplog: pytest.LogCaptureFixture) -> None:
    api.statuses = [422]
    transport = transport_for(api.url)
    assert transport.send(recs(2), 5) == [Outcome.REJECTED] * 2
    assert len(api.requests) == 1
    assert "422" in caplog.text and "status 422" in caplog.text  # the API's message is logged


def test_5xx_retries_with_backoff_then_succeeds(api: EventsApi) -> None:
    api.statuses = [503, 500]
    transport = transport_for(api.url, http_retries=3)
    assert transport.send(recs(2), 10) == [Outcome.ACKED] * 2
    assert len(api.requests) == 3


def test_5xx_exhausted_fails_for_the_spool(api: EventsApi) -> None:
    api.statuses = [500, 500, 500]
    transport = transport_for(api.url, http_retries=2)
    assert transport.send(recs(2), 10) == [Outcome.FAILED] * 2
    assert len(api.requests) == 2


def test_429_is_retried(api: EventsApi) -> None:
    api.statuses = [429]
    assert transport_for(api.url).send(recs(1), 10) == [Outcome.ACKED]


def test_connection_refused_fails() -> None:
    transport = transport_for("http://127.0.0.1:9", http_retries=1)
    assert transport.send(recs(2), 2) == [Outcome.FAILED] * 2


def test_large_batches_split_by_bytes(api: EventsApi) -> None:
    big = [Record(i, b"run", b'"' + b"x" * 1000 + b'"') for i in range(10)]
    transport = transport_for(api.url, http_max_request_bytes=3000)
    assert transport.send(big, 5) == [Outcome.ACKED] * 10
    assert len(api.requests) >= 4
    assert all(len(body) <= 3000 for _, _, body in api.requests)
    assert sum(len(json.loads(body)) for _, _, body in api.requests) == 10


def test_failure_stops_later_groups(api: EventsApi) -> None:
    api.statuses = [200, 500]
    big = [Record(i, b"run", b'"' + b"x" * 1000 + b'"') for i in range(4)]
    transport = transport_for(api.url, http_max_request_bytes=2100, http_retries=1)
    outcomes = transport.send(big, 5)
    assert outcomes[0] is Outcome.ACKED and outcomes[-1] is Outcome.FAILED
    assert len(api.requests) == 2


def test_sdk_over_http_end_to_end_with_outage(api: EventsApi, tmp_path: Path) -> None:
    api.statuses = [503] * 6  # the API is unhealthy at first: events wait in the spool
    rl.init(
        transport="http",
        url=api.url,
        api_key=TEST_KEY,
        tenant="default",
        spool_dir=tmp_path / "spool",
        http_retries=2,
        batch_interval_ms=20,
        resend_backoff_initial_s=0.05,
        resend_backoff_max_s=0.1,
        system_metrics_interval_s=0,  # the run's points are checked one by one
    )
    try:
        with rl.start_run(experiment="http") as run:
            for i in range(1000):
                run.log_metric("x", float(i))
        assert rl.flush(10)
    finally:
        rl.shutdown(5)
    events = api.events()
    assert len({e.envelope.event_id for e in events}) == len(events)  # accepted exactly once
    mine = [e for e in events if e.envelope.run_id == run.run_id]
    assert mine[0].envelope.type is EventType.RUN_STARTED
    values = [v for e in mine if e.envelope.type is EventType.METRICS_LOGGED for v in e.payload.values]
    assert values == [float(i) for i in range(1000)]
    assert mine[-1].envelope.type is EventType.STATUS_CHANGED


EXIT_SCRIPT = """
import os, signal, sys, time
import runledger_sdk as rl

rl.init(transport="http", url=sys.argv[1], spool_dir=sys.argv[2], batch_interval_ms=20, tenant="default",
        system_metrics_interval_s=0)
how = sys.argv[3]
if how == "finish":
    for i in range(500):
        rl.log_metric("x", float(i))  # auto-starts a run; nobody ends or flushes it
elif how == "error":
    run = rl.start_run()
    for i in range(500):
        run.log_metric("x", float(i))
    raise RuntimeError("boom")
elif how == "interrupt":
    rl.start_run()
    for i in range(500):
        rl.log_metric("x", float(i))
    raise KeyboardInterrupt
elif how == "sigterm":
    with rl.start_run():
        for i in range(500):
            rl.log_metric("x", float(i))
        print("ready", flush=True)
        i = 500
        while True:  # until the scheduler preempts us
            rl.log_metric("x", float(i))
            i += 1
            time.sleep(0.0005)
"""


@pytest.mark.parametrize(
    ("how", "status", "returncode"),
    [
        ("finish", "FINISHED", 0),
        ("error", "FAILED", 1),
        ("interrupt", "KILLED", None),
        ("sigterm", "KILLED", 143),
    ],
)
def test_interpreter_exit_ends_runs_and_flushes(
    api: EventsApi, tmp_path: Path, how: str, status: str, returncode: int | None
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", EXIT_SCRIPT, api.url, str(tmp_path / "spool"), how],
        env={**os.environ, "RUNLEDGER_API_KEY": TEST_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if how == "sigterm":
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
    child.wait(60)
    if returncode is not None:
        assert child.returncode == returncode, child.stderr.read() if child.stderr else ""
    events = api.events()
    assert len({e.envelope.event_id for e in events}) == len(events)
    [final] = [e for e in events if e.envelope.type is EventType.STATUS_CHANGED]
    assert final.payload.status.value == status
    assert events[-1] is final
    values = [v for e in events if e.envelope.type is EventType.METRICS_LOGGED for v in e.payload.values]
    assert values[:500] == [float(i) for i in range(500)]
    assert values == [float(i) for i in range(len(values))]  # nothing lost before the end
    assert not list((tmp_path / "spool").rglob("*.spool"))
