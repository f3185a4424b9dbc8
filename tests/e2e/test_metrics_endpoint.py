"""GET /metrics of the real services, and the ingest and analysis roles' /healthz.

The embedded `serve all` process shows the API's and the projector's metrics in one
scrape, and its analysis children's, merged, across a child's crash and restart;
`serve ingest` answers /healthz and /metrics on its own port and stops on SIGTERM, and
`serve analysis` answers them too.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

import runledger_sdk as rl
from runledger.auth.keys import generate_key
from runledger.embedded.broker import EmbeddedBroker
from tests.e2e.conftest import Stack
from tests.integration.conftest import create_database
from tests.support.auth import Identity
from tests.support.events import metrics_batch, run_started
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration

Sample = tuple[str, dict[str, str], float]


def _scrape(url: str, token: str | None = None) -> list[Sample]:
    """Every sample of one scrape, checked to be one family per name and one sample per
    label set (Prometheus refuses a scrape with a repeated family or series)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    response = httpx.get(f"{url}/metrics", timeout=10, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    repeated = [name for name, n in Counter(f.name for f in families).items() if n > 1]
    assert not repeated, f"families exposed twice: {repeated}"
    samples = [(s.name, s.labels, s.value) for family in families for s in family.samples]
    series = Counter((n, tuple(sorted(lab.items()))) for n, lab, _ in samples)
    assert not [s for s, n in series.items() if n > 1], "a series exposed twice"
    return samples


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def _wait_for(
    url: str, ready: Callable[[list[Sample]], bool], timeout: float = 30, token: str | None = None
) -> list[Sample]:
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(url, token)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def send_signed_run(bootstrap: str, topic: str, admin: Identity) -> str:
    """Put a signed RunStarted and 200 points (loss and acc, steps 0-99) straight on the topic."""
    run_id = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=run_id.encode(), value=run_started(admin, "exp", run_id))
        raw, _ = metrics_batch(admin, "exp", run_id, ["loss", "acc"], 0, 100, seed=3)
        producer.send(topic, key=run_id.encode(), value=raw)
        producer.flush()
    finally:
        producer.close()
    return run_id


def test_one_scrape_shows_the_api_and_the_projector(stack: Stack, tmp_path: Path) -> None:
    rl.init(transport="http", url=stack.url, spool_dir=tmp_path / "spool")
    try:
        with rl.start_run(experiment=f"metrics-{uuid.uuid4().hex[:6]}", name="scraped") as run:
            rl.log_params({"lr": 0.1})
            for step in range(50):
                rl.log_metric("loss", 1.0 / (step + 1), step=step)
        assert rl.flush(30)
    finally:
        rl.shutdown()
    assert (
        httpx.get(f"{stack.url}/api/v1/runs/{run.run_id}", timeout=10, headers=stack.headers).status_code
        == 200
    )

    samples = _wait_for(
        stack.url, lambda s: _value(s, "runledger_points_projected_total", tenant="default") >= 50
    )
    assert _value(samples, "runledger_points_projected_total", tenant="default") >= 50
    assert _value(samples, "runledger_events_projected_total", type="run.started") >= 1
    assert _value(samples, "runledger_projector_batch_seconds_count") >= 1
    assert _value(samples, "runledger_write_wait_seconds_count") >= 1  # the SDK's POSTs waited
    assert any(n == "runledger_projector_committed_offset" and v >= 0 for n, _, v in samples)
    assert any(n == "runledger_ingest_lag_seconds" for n, _, _ in samples)

    requests = [(lab, v) for n, lab, v in samples if n == "runledger_api_request_seconds_count"]
    assert requests, "no runledger_api_request_seconds samples"
    routes = {lab["route"] for lab, _ in requests}
    assert "/api/v1/events" in routes  # the SDK's HTTP transport
    assert (
        _value(samples, "runledger_api_request_seconds_count", method="GET", route="/api/v1/runs/{run_id}")
        >= 1
    )
    assert not any(run.run_id in route for route in routes), routes
    assert "/metrics" not in routes


def _tracebacks_but_kafkas_network_thread(log: str) -> list[str]:
    """The log records with a traceback, except those of kafka-python's network thread: at
    shutdown it can read a socket that the closing thread has just dropped, and logs that
    ('NoneType' object has no attribute 'recv'), a race inside kafka-python 3.0.12."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )", log)
    return [r for r in records if "Traceback" in r and " kafka.net." not in r.split("\n", 1)[0]]


def test_serve_ingest_answers_healthz_and_metrics_and_stops_on_sigterm(
    broker: EmbeddedBroker, postgres: object, test_root: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    events, dlq = f"runledger.events.v1.ingest{suffix}", f"runledger.events.dlq.ingest{suffix}"
    broker.ensure_topics({events: 2, dlq: 1})
    dsn = asyncio.run(create_database(postgres))  # type: ignore[arg-type]
    # No API process here: the ingest role itself provisions the bootstrap key it accepts.
    key = generate_key()
    scrape_token = "scrape-" + uuid.uuid4().hex  # /metrics names tenants: a token is required
    ingest = ServiceProcess(
        "ingest",
        test_root / f"ingest-{suffix}",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": events,
            "RUNLEDGER_DLQ_TOPIC": dlq,
            "RUNLEDGER_PROJECTOR_GROUP": f"projector-{suffix}",
            "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "50",
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
            "RUNLEDGER_METRICS_TOKEN": scrape_token,
        },
    )
    ingest.start()  # returns once /healthz answers 200
    try:
        health = httpx.get(f"{ingest.url}/healthz", timeout=5)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "ok" and health.json()["heartbeat_age_s"] < 30
        assert httpx.get(f"{ingest.url}/api/v1/runs", timeout=5).status_code == 404  # not the API
        assert httpx.get(f"{ingest.url}/metrics", timeout=5).status_code == 401  # even from loopback

        tenant = "default"
        send_signed_run(broker.bootstrap, events, Identity(tenant, "admin", key))
        samples = _wait_for(
            ingest.url,
            lambda s: _value(s, "runledger_points_projected_total", tenant=tenant) >= 200,
            token=scrape_token,
        )
        assert _value(samples, "runledger_points_projected_total", tenant=tenant) == 200
        assert _value(samples, "runledger_events_projected_total", type="run.started") == 1
        assert _value(samples, "runledger_projector_committed_offset", topic=events) >= 1
        assert not any(n.startswith("runledger_api_request") for n, _, _ in samples if n.endswith("_count"))
        assert httpx.get(f"{ingest.url}/healthz", timeout=5).status_code == 200

        started = time.monotonic()
        ingest.stop(timeout=30)  # SIGTERM: the projector stops after its batch, the process exits
        assert ingest.proc is not None and ingest.proc.returncode is not None
        assert time.monotonic() - started < 25, ingest.log_tail()
        assert _tracebacks_but_kafkas_network_thread(ingest.log_tail(200)) == [], ingest.log_tail(200)
    finally:
        ingest.kill()


def _analysed(samples: list[Sample]) -> dict[str, float]:
    """runledger_analysis_points_total by shard."""
    return {lab["shard"]: v for n, lab, v in samples if n == "runledger_analysis_points_total"}


def _analysis_children(services: ServiceProcess) -> dict[str, psutil.Process]:
    """The `all` role's running analysis child processes by shard."""
    assert services.proc is not None
    found = {}
    for child in psutil.Process(services.proc.pid).children():
        try:  # a killed child not reaped yet (a zombie) tells nothing
            if "services.analysis" in child.cmdline():
                found[child.environ()["RUNLEDGER_ANALYSIS_SHARD"]] = child
        except psutil.Error:
            continue
    return found


def _log_points(url: str, token: str, experiment: str, steps: int, spool: Path) -> None:
    """`steps` points of one run through the SDK's HTTP transport (no system/* metrics)."""
    rl.init(
        transport="http",
        url=url,
        api_key=token,
        tenant="default",
        spool_dir=spool,
        system_metrics_interval_s=0,
    )
    try:
        with rl.start_run(experiment=experiment, name="analysed"):
            for step in range(steps):
                rl.log_metric("loss", 1.0 / (step + 1), step=step)
        assert rl.flush(30)
    finally:
        rl.shutdown()


def _stable_analysed(url: str, timeout: float = 10) -> float:
    """runledger_analysis_points_total of shard 0 once two scrapes 0.3 s apart agree (the
    shared stack's child may still be analysing an earlier test's points)."""
    deadline = time.monotonic() + timeout
    last = _analysed(_scrape(url)).get("0", 0.0)
    while True:
        time.sleep(0.3)
        now = _analysed(_scrape(url)).get("0", 0.0)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def test_serve_all_scrape_shows_the_analysis_child_across_its_restart(stack: Stack, tmp_path: Path) -> None:
    """The analysis child's metrics reach the parent's scrape once (not beside the parent's own
    copies), and a SIGKILLed child's counts neither vanish nor double while the watchdog
    restarts it."""
    children = _analysis_children(stack.services)
    assert list(children) == ["0"]
    metrics_dir = Path(children["0"].environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir() and not metrics_dir.is_relative_to(stack.services.state_dir)
    token = stack.bootstrap_key.token

    before = _stable_analysed(stack.url)
    _log_points(stack.url, token, f"analysed-{uuid.uuid4().hex[:6]}", 40, tmp_path / "spool")
    samples = _wait_for(stack.url, lambda s: _analysed(s).get("0", 0) >= before + 40)
    assert set(_analysed(samples)) == {"0"}  # one series: the child's, not the parent's zero copy
    assert _stable_analysed(stack.url) == before + 40  # each point analysed once
    assert _value(samples, "runledger_analysis_batch_seconds_count", shard="0") >= 1
    assert any(n == "runledger_analysis_lag_seconds" and lab == {"shard": "0"} for n, lab, _ in samples)

    analysed = before + 40
    dead = children["0"]
    dead.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (restarted := _analysis_children(stack.services).get("0")) is None or restarted.pid == dead.pid:
        # Until the new child runs, the dead one's counts stay, once: not in both its own
        # file and the one its counts are folded into.
        assert _analysed(_scrape(stack.url)) == {"0": analysed}
        assert time.monotonic() < deadline, stack.services.log_tail()
        time.sleep(0.1)
    assert not list(metrics_dir.glob(f"*_{dead.pid}.db"))  # folded into *_exited.db and removed

    # The new child analyses these (and again what the dead one analysed after its last
    # checkpoint): the counter only grows, from the dead child's total.
    _log_points(stack.url, token, f"analysed-{uuid.uuid4().hex[:6]}", 20, tmp_path / "spool")
    seen = [analysed]

    def grown(s: list[Sample]) -> bool:
        seen.append(_analysed(s)["0"])
        return seen[-1] >= analysed + 20

    _wait_for(stack.url, grown)
    assert seen[-1] >= analysed + 20
    assert seen == sorted(seen), f"the counter went back: {seen}"


def test_serve_analysis_answers_healthz_and_metrics(
    broker: EmbeddedBroker, postgres: object, test_root: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    events, dlq = f"runledger.events.v1.analysis{suffix}", f"runledger.events.dlq.analysis{suffix}"
    broker.ensure_topics({events: 2, dlq: 1})
    dsn = asyncio.run(create_database(postgres))  # type: ignore[arg-type]
    key = generate_key()  # provisioned by the analysis role itself, which signs with it
    scrape_token = "scrape-" + uuid.uuid4().hex
    analysis = ServiceProcess(
        "analysis",
        test_root / f"analysis-{suffix}",
        {
            "RUNLEDGER_KAFKA_BOOTSTRAP": broker.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": dsn,
            "RUNLEDGER_EVENTS_TOPIC": events,
            "RUNLEDGER_DLQ_TOPIC": dlq,
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
            "RUNLEDGER_METRICS_TOKEN": scrape_token,
        },
    )
    analysis.start()  # returns once /healthz answers 200
    try:
        health = httpx.get(f"{analysis.url}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        assert httpx.get(f"{analysis.url}/metrics", timeout=5).status_code == 401  # even from loopback

        send_signed_run(broker.bootstrap, events, Identity("default", "admin", key))
        samples = _wait_for(analysis.url, lambda s: _analysed(s).get("0", 0) >= 200, token=scrape_token)
        assert _analysed(samples) == {"0": 200}
        assert _value(samples, "runledger_analysis_batch_seconds_count", shard="0") >= 1
        assert any(n == "runledger_analysis_lag_seconds" and lab == {"shard": "0"} for n, lab, _ in samples)
        assert _value(samples, "runledger_points_projected_total") == 0  # no projector in this role
    finally:
        analysis.kill()
