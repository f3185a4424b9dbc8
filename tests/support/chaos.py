"""The chaos harness: a stack of separate processes, SDK writers, and a seeded storm of crashes.

PostgreSQL, the tansu broker and three `runledger.serve` processes (ingest = the projector,
which owns the ClickHouse data; analysis; api) run apart, so each can be SIGKILLed alone.
While several writer processes (tests/support/chaos_writer.py) stream metrics, a scheduler
seeded by RUNLEDGER_CHAOS_SEED SIGKILLs the services at random moments, some while another
one is still down, restarts them after a random downtime, restarts the broker and
PostgreSQL mid-stream, and replaces the broker as the supervisor does when it has grown
(libs/runledger/embedded/rotation.py; clients reach it through the produce gate, as in
`runledger up`). After the writers end and the stores settle, tests/support/chaos_verify.py
compares every store with what the writers were acknowledged for.
"""

from __future__ import annotations

import heapq
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from runledger.auth.keys import ApiKey, generate_key
from runledger.embedded.broker import EmbeddedBroker
from runledger.embedded.ports import free_port
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.embedded.produce_gate import ProduceGate
from runledger.embedded.rotation import PostgresCheckpoints, gated_broker, rotate, start_behind_gate
from tests.support.chaos_model import ChaosConfig
from tests.support.services import REPO

EVENTS, DLQ = "runledger.events.v1", "runledger.events.dlq"
TOPICS = {EVENTS: 4, DLQ: 1}
TARGETS = ("projector", "analysis", "api")
MIN_UPTIME_S = 2.0  # a service is killed again only after it has run this long
_ROLES = {"projector": "ingest", "analysis": "analysis", "api": "api"}


def seed_from_env(default: int = 1) -> int:
    """RUNLEDGER_CHAOS_SEED, else `default` (reviewers rerun with other seeds)."""
    return int(os.environ.get("RUNLEDGER_CHAOS_SEED") or default)


class Service:
    """One `python -m runledger.serve ROLE` process that the storm kills and restarts."""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.role = _ROLES[name]
        self.state_dir = root / name
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "RUNLEDGER_STATE_DIR": str(self.state_dir),
            "RUNLEDGER_API_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()  # held while killed and coming back
        self.start_failures = 0

    @property
    def url(self) -> str:
        """Base URL (the API; /healthz and /metrics for the others)."""
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"=== chaos: starting {self.name} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runledger.serve", self.role],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _healthy(self, timeout: float) -> bool:
        """Poll /healthz; False as soon as the process died or its service thread stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=1.0)
                if response.status_code == 200 and self._listening():
                    return True
                if '"stopped"' in response.text:  # the service thread died (e.g. no PostgreSQL)
                    return False
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def _listening(self) -> bool:
        """Whether our process holds the port (on a shared machine, another may have taken it)."""
        assert self.proc is not None
        try:
            conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in conns)

    def start(self, timeout: float = 600.0) -> None:
        """Start and wait until healthy, retrying while a dependency (PostgreSQL) is away."""
        deadline = time.monotonic() + timeout
        while True:
            self._spawn()
            # No shorter bound per attempt: on a busy machine a start takes a minute or more.
            if self._healthy(max(1.0, deadline - time.monotonic())):
                return
            self.start_failures += 1
            self.kill()
            # The port may have been taken meanwhile (uvicorn: "address already in use").
            self.port = free_port()
            self.env["RUNLEDGER_API_PORT"] = str(self.port)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name} did not start: see {self.log_path}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL: no cleanup, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait (the service finishes its batch and checkpoints)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Stack:
    """The processes under test."""

    root: Path
    postgres: EmbeddedPostgres
    broker: EmbeddedBroker
    gate: ProduceGate  # what every client connects to
    key: ApiKey
    services: dict[str, Service]

    @property
    def dsn(self) -> str:
        """PostgreSQL DSN of the services' database."""
        return self.postgres.dsn

    @property
    def api(self) -> Service:
        """The API process."""
        return self.services["api"]

    @property
    def clickhouse_path(self) -> Path:
        """The ClickHouse data of the projector (readable once it stopped)."""
        return self.services["projector"].state_dir / "clickhouse"


@contextmanager
def chaos_stack(root: Path | None = None, *, fsync: bool = False) -> Iterator[Stack]:
    """Start PostgreSQL, the broker and the three services; stop everything after."""
    if root is None:
        # Not pytest's tmp dir: PostgreSQL (as root) runs as `postgres`, which needs o+x above.
        root = Path(tempfile.mkdtemp(prefix="runledger-chaos-"))
    root.chmod(0o755)
    postgres = EmbeddedPostgres(root / "pg" / "data", 0, fsync=fsync)
    gate, broker = gated_broker(root / "broker.log")
    key = generate_key()
    services: dict[str, Service] = {}
    stack: Stack | None = None
    try:
        postgres.start()
        start_behind_gate(broker, gate, TOPICS)
        env = {
            "RUNLEDGER_KAFKA_BOOTSTRAP": gate.bootstrap,
            "RUNLEDGER_POSTGRES_DSN": postgres.dsn,
            "RUNLEDGER_EVENTS_TOPIC": EVENTS,
            "RUNLEDGER_DLQ_TOPIC": DLQ,
            "RUNLEDGER_PROJECTOR_ASSIGN_ALL": "true",  # as `runledger up` runs it
            "RUNLEDGER_PROJECTOR_MAX_WAIT_MS": "50",
            "RUNLEDGER_BOOTSTRAP_API_KEY": key.token,
            # Checkpoints between the kills, so restarts resume from a checkpoint, not the start.
            "RUNLEDGER_ANALYSIS_CHECKPOINT_INTERVAL_S": "5",
            # Attributions (dowhy, CPU-heavy) of cohort findings are not what is checked here.
            "RUNLEDGER_ATTRIBUTION_AUTO": "false",
        }
        for name in TARGETS:
            services[name] = Service(name, root, env)
        # Together: the schema migration runs under an advisory lock, whoever comes first.
        starters = [threading.Thread(target=s.start, daemon=True) for s in services.values()]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        for service in services.values():
            if service.proc is None or service.proc.poll() is not None:
                raise RuntimeError(f"{service.name} did not start: see {service.log_path}")
        stack = Stack(root, postgres, broker, gate, key, services)
        yield stack
    finally:
        for service in services.values():
            service.kill()
        (broker if stack is None else stack.broker).stop()  # a rotation may have replaced it
        gate.stop()
        postgres.stop()


# --- the storm ---------------------------------------------------------------------------------


@dataclass
class Trials:
    """What the storm did."""

    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    overlapping_kills: int = 0  # kills while another service was still down
    most_down_at_once: int = 0
    broker_restarts: int = 0
    broker_rotations: int = 0
    rotations_put_off: int = 0  # not done (PostgreSQL down, consumers too far behind)
    postgres_restarts: int = 0
    restart_failures: int = 0  # starts retried (e.g. PostgreSQL was away)
    errors: list[str] = field(default_factory=list)  # restarts that never came up
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_kills(self) -> int:
        """Service SIGKILLs in all."""
        return sum(self.kills.values())


class Storm:
    """Seeded crash scheduler; `run` blocks until every planned action happened."""

    def __init__(self, stack: Stack, config: ChaosConfig, seed: int) -> None:
        self._stack = stack
        self._config = config
        self._rng = random.Random(seed)
        self.started = time.monotonic()
        self._down: set[str] = set()
        self._up_since: dict[str, float] = {}
        self._guard = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.trials = Trials()

    def _note(self, action: str, **details: Any) -> None:
        entry = {"t": round(time.monotonic() - self.started, 2), "action": action, **details}
        with self._guard:
            self.trials.log.append(entry)

    def plan(self) -> list[tuple[float, str]]:
        """(seconds after the start, action) for every kill and restart, in time order."""
        c, rng = self._config, self._rng
        span = c.stream_s
        times: list[float] = []
        for i in range(c.kills):
            if i and rng.random() < c.overlap_share:
                times.append(times[-1] + rng.uniform(0.05, 1.0))  # while the previous one is down
            else:
                times.append(rng.uniform(0.05, 0.9) * span)
        actions = [(t, "kill") for t in times]
        # The restarts run in this thread, one after another, and a PostgreSQL restart can take
        # a minute on a loaded machine: the broker's comes first, so it is never pushed past
        # the end of the stream (its in-memory log needs the writers still there to re-send).
        actions += [(rng.uniform(0.2, 0.4) * span, "broker") for _ in range(c.broker_restarts)]
        actions += [(rng.uniform(0.45, 0.85) * span, "postgres") for _ in range(c.postgres_restarts)]
        actions += [(rng.uniform(0.1, 0.9) * span, "rotate") for _ in range(c.broker_rotations)]
        return sorted(actions)

    def run(self) -> Trials:
        """Execute the plan, then wait until every service is back.

        A kill finds a service that has been up for MIN_UPTIME_S at least (else it waits in
        the plan, never blocking it): on a slow machine a restart takes a minute, and a
        service killed the moment it is back would never make progress.
        """
        previous: str | None = None
        plan = self.plan()
        heapq.heapify(plan)
        while plan:
            at, action = heapq.heappop(plan)
            delay = self.started + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # In this thread, not a helper: both children die with the thread that started
            # them (PR_SET_PDEATHSIG), so they must be started by one that lives on.
            if action == "broker":
                self._restart_broker()
            elif action == "postgres":
                self._restart_postgres()
            elif action == "rotate":
                self._rotate_broker()
            else:
                target = self._kill_one(previous)
                if target is None:
                    heapq.heappush(plan, (time.monotonic() - self.started + 0.25, action))
                else:
                    previous = target
        for thread in self._threads:
            thread.join()
        return self.trials

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _kill_one(self, previous: str | None) -> str | None:
        """SIGKILL a service that is up (another than the last one, when it can); None if none is."""
        now = time.monotonic()
        with self._guard:
            up = [
                t for t in TARGETS if t not in self._down and now - self._up_since.get(t, 0.0) >= MIN_UPTIME_S
            ]
            if not up:
                return None
            others = [t for t in up if t != previous] or up
            target = self._rng.choice(others)
            down_now = sorted(self._down)
            self._down.add(target)
            self.trials.kills[target] += 1
            if down_now:
                self.trials.overlapping_kills += 1
            self.trials.most_down_at_once = max(self.trials.most_down_at_once, len(self._down))
        downtime = self._rng.uniform(*self._config.downtime_s)
        self._spawn(self._kill_and_restart, target, downtime, down_now)
        return target

    def _kill_and_restart(self, target: str, downtime: float, others_down: list[str]) -> None:
        service = self._stack.services[target]
        with service.lock:
            service.kill()
            self._note("kill", target=target, others_down=others_down, downtime_s=round(downtime, 2))
            time.sleep(downtime)
            failures = service.start_failures
            try:
                service.start()
                self._note("up", target=target, retries=service.start_failures - failures)
            except Exception as exc:
                self._note("start_failed", target=target, error=str(exc))
                self.trials.errors.append(f"{target}: {exc}")
            finally:
                with self._guard:
                    self.trials.restart_failures += service.start_failures - failures
                    self._down.discard(target)
                    self._up_since[target] = time.monotonic()

    def _restart_broker(self) -> None:
        broker = self._stack.broker
        self._note("broker_stop")
        broker.stop(grace=0.0)  # SIGKILL: an in-memory broker loses everything it held
        time.sleep(self._rng.uniform(*self._config.downtime_s))
        start_behind_gate(broker, self._stack.gate, TOPICS)  # as the supervisor does
        self.trials.broker_restarts += 1
        self._note("broker_up", incarnation=broker.incarnation)

    def _rotate_broker(self) -> None:
        stack = self._stack
        self._note("broker_rotation")
        try:
            stack.broker, report = rotate(
                stack.broker,
                stack.gate,
                PostgresCheckpoints(stack.dsn, "runledger-projector"),
                events_topic=EVENTS,
                dlq_topic=DLQ,
                topics=TOPICS,
                max_carry_bytes=512 * 2**20,
                projection_timeout_s=10.0,
            )
        except Exception as exc:  # PostgreSQL down, say: the supervisor tries again later
            self.trials.rotations_put_off += 1
            self._note("broker_rotation_put_off", reason=f"{type(exc).__name__}: {exc}")
            return
        self.trials.broker_rotations += 1
        self._note(
            "broker_rotated",
            incarnation=report.new_incarnation,
            carried_events=report.carried_events,
            paused_s=round(report.paused_s, 2),
            project_s=round(report.project_s, 2),
        )

    def _restart_postgres(self) -> None:
        postgres = self._stack.postgres
        self._note("postgres_stop")
        postgres.stop()
        time.sleep(self._rng.uniform(*self._config.downtime_s))
        postgres.start()
        self.trials.postgres_restarts += 1
        self._note("postgres_up")


# --- the writers -------------------------------------------------------------------------------


def start_writers(stack: Stack, config: ChaosConfig, out: Path) -> list[subprocess.Popen[bytes]]:
    """One process per writer (tests/support/chaos_writer.py), logging to out/writer-N.log."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RUNLEDGER_API_KEY": stack.key.token, "PYTHONUNBUFFERED": "1"}
    procs = []
    for w in range(config.writers):
        with (out / f"writer-{w}.log").open("ab") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.support.chaos_writer",
                        config.to_json(),
                        str(w),
                        stack.gate.bootstrap,
                        EVENTS,
                        str(out),
                    ],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs
