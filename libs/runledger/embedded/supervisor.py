"""`runledger up`: run PostgreSQL, the broker and the services as supervised child processes.

Start order: PostgreSQL, broker (+ topics), services (`python -m runledger.serve all`, the
API and the projector in one process, because chdb allows one process per data path).
Then the API URL and the bootstrap API key are printed and <state_dir>/connection.json
written (0600). The bootstrap key (platform superadmin, admin of the default tenant) is
generated on first start and kept in <state_dir>/bootstrap.key (0600, since connection.json
goes away at stop); later starts reuse it. The services provision it at start.

While up, every second the supervisor checks its children and restarts the dead ones
with exponential backoff: a new broker is a new, empty incarnation (memory storage), so
the topics are created again; consumers notice the new cluster id. Stop order on
SIGINT/SIGTERM is the reverse: services, broker, PostgreSQL; then exit 0.

Children run in their own sessions (a terminal Ctrl-C reaches only the supervisor, which
can then stop them in order) and get a parent-death signal, so that a supervisor killed
with SIGKILL does not leave them holding the state directory. A flock on
<state_dir>/supervisor.lock keeps a second supervisor off the same state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from pydantic import SecretBytes, SecretStr

from runledger.auth.keys import InvalidKey, generate_key, parse_key
from runledger.config import Settings
from runledger.embedded._proc import die_with_parent, log_tail, open_log, stop_process, write_log_line
from runledger.embedded.broker import EmbeddedBroker, ensure_topics
from runledger.embedded.ports import free_port, port_is_free
from runledger.embedded.postgres import EmbeddedPostgres
from runledger.embedded.produce_gate import ProduceGate
from runledger.embedded.rotation import (
    PostgresCheckpoints,
    RotationReport,
    RotationSkipped,
    gated_broker,
    rotate,
    start_behind_gate,
)

log = logging.getLogger(__name__)

SERVICES_COMMAND: tuple[str, ...] = (sys.executable, "-m", "runledger.serve", "all")
_MONITOR_INTERVAL_S = 1.0
_MAX_BACKOFF_S = 30.0
# After a broker replacement that was put off (consumers too far behind), wait this long.
_ROTATION_RETRY_S = 60.0
# A child that stayed up this long before dying is restarted without accumulated backoff.
_HEALTHY_UPTIME_S = 60.0
_SERVICES_STOP_TIMEOUT_S = 20.0


class StartupError(RuntimeError):
    """A part of the stack did not come up; the message names the part and shows its log tail."""


class StateDirLocked(StartupError):
    """Another supervisor already runs on this state directory."""


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived while starting up."""


@dataclass
class _Restarts:
    """Restart bookkeeping for one child: exponential backoff, reset after a healthy run."""

    started_at: float = 0.0
    failures: int = 0
    next_attempt: float = 0.0
    down_since: float | None = None

    def on_started(self) -> None:
        self.started_at = time.monotonic()
        self.down_since = None

    def on_death(self) -> float:
        """Record a death noticed now; return the delay before the next attempt."""
        now = time.monotonic()
        if now - self.started_at >= _HEALTHY_UPTIME_S:
            self.failures = 0
        self.down_since = now
        return self.on_failed_attempt()

    def on_failed_attempt(self) -> float:
        """Schedule the next attempt: 0.5 s, 1 s, 2 s, ... up to _MAX_BACKOFF_S."""
        delay = min(_MAX_BACKOFF_S, 0.5 * 2.0**self.failures)
        self.failures += 1
        self.next_attempt = time.monotonic() + delay
        return delay


@dataclass
class _Services:
    proc: subprocess.Popen[bytes] | None = None
    healthy: bool = False
    restarts: _Restarts = field(default_factory=_Restarts)


def _url_host(host: str) -> str:
    """The host to put in a URL for a server bound to `host` (wildcards -> loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as RUNLEDGER_* environment variables, so a child sees exactly these values."""
    prefix = str(settings.model_config.get("env_prefix", "RUNLEDGER_"))
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        raw = getattr(settings, name)
        if isinstance(raw, SecretStr | SecretBytes):
            value = raw.get_secret_value()  # model_dump masks secrets as '**********'
            value = value.decode() if isinstance(value, bytes) else value
        if value is None:
            continue
        # pydantic-settings parses complex and non-string values from JSON.
        env[f"{prefix}{name}".upper()] = value if isinstance(value, str) else json.dumps(value)
    return env


class Supervisor:
    """Starts, watches and stops the embedded stack for one state directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        services_command: Sequence[str] | None = None,
        postgres_fsync: bool = True,
    ) -> None:
        """Prepare; nothing starts before start() or run().

        services_command replaces `python -m runledger.serve all` (tests use a small
        health server); postgres_fsync=False is for tests only.
        """
        self.settings = settings
        self.state_dir = settings.state_dir.expanduser().resolve()
        self.logs_dir = self.state_dir / "logs"
        self.services_command: list[str] = list(services_command or SERVICES_COMMAND)
        self._postgres_fsync = postgres_fsync
        #: Extra keys for connection.json (e.g. "api_key"); ready hooks may fill it.
        self.extra_connection_info: dict[str, Any] = {}
        #: Called after everything is healthy, before connection.json is written.
        self.ready_hooks: list[Callable[[Supervisor], None]] = []

        self.postgres: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        #: The relay clients reach the embedded broker through (when it may be replaced).
        self.gate: ProduceGate | None = None
        self._next_rotation_check = 0.0
        #: What each replacement of the embedded broker did (rotation.py), oldest first.
        self.rotations: list[RotationReport] = []
        self.api_port = settings.api_port
        self._services = _Services()
        self._pg_restarts = _Restarts()
        self._broker_restarts = _Restarts()
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._http: httpx.Client | None = None
        #: The bootstrap API key (token) the services provision; decided by start().
        self.api_key = ""

    # ----------------------------------------------------------------- addresses

    @property
    def api_url(self) -> str:
        """Base URL of the API."""
        return f"http://{_url_host(self.settings.api_host)}:{self.api_port}"

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap servers the services use (embedded or external)."""
        if self.gate is not None:
            return self.gate.bootstrap
        return self.broker.bootstrap if self.broker is not None else self.settings.kafka_bootstrap

    @property
    def postgres_dsn(self) -> str:
        """DSN the services use (embedded or external)."""
        return self.postgres.dsn if self.postgres is not None else self.settings.postgres_dsn

    @property
    def connection_file(self) -> Path:
        """Where the URL and credentials for scripts are written."""
        return self.state_dir / "connection.json"

    @property
    def bootstrap_key_file(self) -> Path:
        """Where the bootstrap key outlives a stop (connection.json does not)."""
        return self.state_dir / "bootstrap.key"

    def _bootstrap_key(self) -> str:
        """The configured key, else the one of an earlier start, else a new one (saved)."""
        if self.settings.bootstrap_api_key:
            return self.settings.bootstrap_api_key
        earlier = [_read_connection_key(self.connection_file)]
        with contextlib.suppress(OSError):
            earlier.append(self.bootstrap_key_file.read_text().strip())
        for token in earlier:
            if token:
                try:
                    return parse_key(token).token
                except InvalidKey:
                    log.warning("ignoring a malformed bootstrap key found in %s", self.state_dir)
        token = generate_key().token
        _write_private(self.bootstrap_key_file, token + "\n")
        return token

    @property
    def services_pid(self) -> int | None:
        """Process id of the services process while it runs."""
        proc = self._services.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ----------------------------------------------------------------- main entry

    def run(self) -> int:
        """Start everything, supervise until SIGINT/SIGTERM (or request_stop()), stop; return 0.

        Raises StartupError (after stopping what did start) when a part fails to come up.
        """
        restore = self._install_signal_handlers()
        try:
            try:
                self.start()
            except _Interrupted:
                log.info("interrupted during startup")
                return 0
            print(
                f"RunLedger is up: {self.api_url}\n"
                f"  API key (bootstrap: superadmin, admin of tenant {self.settings.default_tenant!r}):"
                f" {self.api_key}\n"
                f"  connection info: {self.connection_file}\n"
                f"  logs: {self.logs_dir}\n"
                "  press Ctrl-C to stop",
                flush=True,
            )
            while not self._stop.wait(_MONITOR_INTERVAL_S):
                try:
                    self.monitor_once()
                except Exception:
                    # A bug in one check must not take the whole stack down with it.
                    log.exception("supervisor check failed")
            log.info("stopping")
            return 0
        finally:
            self.stop()
            restore()

    def request_stop(self) -> None:
        """Ask run() to stop everything and return (thread-safe, signal-safe)."""
        self._stop.set()

    # ----------------------------------------------------------------- start

    def start(self) -> None:
        """Take the state-dir lock, start PostgreSQL, broker, topics and services, wait until healthy."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._http = httpx.Client(timeout=2.0, trust_env=False)  # never via an HTTP proxy
            self.api_key = self._bootstrap_key()  # before the file of a killed run goes away
            # A file left by a run that was killed would point scripts at a dead stack.
            self.connection_file.unlink(missing_ok=True)
            self._check_ports()
            if not self.settings.postgres_dsn:
                self.postgres = EmbeddedPostgres(
                    self.state_dir / "postgres",
                    self.settings.postgres_port,
                    log_path=self.logs_dir / "postgres.log",
                    fsync=self._postgres_fsync,
                )
                self._start_part("PostgreSQL", self._start_postgres)
            self._check_interrupted()
            if not self.settings.kafka_bootstrap:
                self._start_part("Kafka broker (tansu)", self._start_embedded_broker)
            else:
                self._start_part("Kafka topics", self._ensure_topics)
            self._check_interrupted()
            self._spawn_services()
            self._wait_services_healthy()
            for hook in self.ready_hooks:
                self._start_part(
                    f"ready hook {getattr(hook, '__name__', hook)!r}", functools.partial(hook, self)
                )
            self._write_connection_file()
        except BaseException:
            self.stop()
            raise

    def _start_part(self, name: str, start: Callable[[], None]) -> None:
        """Run one start step; turn its failure into a StartupError naming the part."""
        try:
            start()
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            raise StartupError(f"{name} failed to start: {exc}") from exc
        except Exception as exc:  # kafka-python errors are not RuntimeErrors
            raise StartupError(f"{name} failed to start: {type(exc).__name__}: {exc}") from exc

    def _start_postgres(self) -> None:
        assert self.postgres is not None
        # We hold the state-dir lock, so a server still running on our data directory
        # was left by a supervisor that died: stop it and start ours.
        self.postgres.start(replace_stale=True)
        self._pg_restarts.on_started()

    def _start_embedded_broker(self) -> None:
        log_path = self.logs_dir / "broker.log"
        # Clients reach the broker through the gate, so that it can be restarted and replaced
        # without losing what they write meanwhile.
        self.gate, self.broker = gated_broker(log_path, port=self.settings.kafka_port)
        self._start_broker()

    def _start_broker(self) -> None:
        assert self.broker is not None and self.gate is not None
        try:
            start_behind_gate(self.broker, self.gate, self._topics())
        except BaseException:
            # A broker without its topics must count as down, so the monitor retries both.
            self.broker.stop()
            raise
        self._broker_restarts.on_started()

    def _topics(self) -> dict[str, int]:
        return {self.settings.events_topic: self.settings.topic_partitions, self.settings.dlq_topic: 1}

    def _ensure_topics(self) -> None:
        ensure_topics(self.kafka_bootstrap, self._topics())

    def _check_ports(self) -> None:
        """Fail early, with the setting to change, when a fixed port is taken."""
        host = self.settings.api_host
        if self.api_port == 0:
            self.api_port = free_port(host if host not in ("", "0.0.0.0") else "127.0.0.1")
        elif not port_is_free(host or "0.0.0.0", self.api_port):
            raise StartupError(
                f"API port {self.api_port} on {host} is in use (another `runledger up`, or another "
                "program); set RUNLEDGER_API_PORT to a free port"
            )
        fixed = [
            (
                "PostgreSQL",
                "RUNLEDGER_POSTGRES_PORT",
                self.settings.postgres_port,
                not self.settings.postgres_dsn,
            ),
            ("Kafka", "RUNLEDGER_KAFKA_PORT", self.settings.kafka_port, not self.settings.kafka_bootstrap),
        ]
        for name, var, port, embedded in fixed:
            if embedded and port and not port_is_free("127.0.0.1", port):
                raise StartupError(f"{name} port {port} is in use; set {var} to a free port or 0")

    def _check_interrupted(self) -> None:
        if self._stop.is_set():
            raise _Interrupted

    # ----------------------------------------------------------------- services

    def _services_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        prefix = str(self.settings.model_config.get("env_prefix", "RUNLEDGER_"))
        concrete = {
            "STATE_DIR": str(self.state_dir),
            "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "POSTGRES_DSN": self.postgres_dsn,
            "API_HOST": self.settings.api_host,
            "API_PORT": str(self.api_port),
        }
        if self.broker is not None:
            concrete["KAFKA_PORT"] = str(self.gate.port if self.gate is not None else self.broker.port)
            # One projector owns every partition: no group rebalances, which tansu can
            # wedge after a restart (a member that left is still awaited).
            concrete["PROJECTOR_ASSIGN_ALL"] = "true"
        if self.postgres is not None:
            concrete["POSTGRES_PORT"] = str(self.postgres.port)
        if self.api_key:
            concrete["BOOTSTRAP_API_KEY"] = self.api_key
        env.update({prefix + k: v for k, v in concrete.items()})
        env["PYTHONUNBUFFERED"] = "1"  # the log file should show what happened right away
        return env

    def _spawn_services(self) -> None:
        log_path = self.logs_dir / "services.log"
        write_log_line(log_path, f"=== runledger: starting {' '.join(self.services_command)}")
        fd = open_log(log_path)
        try:
            self._services.proc = subprocess.Popen(
                self.services_command,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=self._services_env(),
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except OSError as exc:
            raise StartupError(f"services failed to start: {exc}") from exc
        finally:
            os.close(fd)
        self._services.healthy = False
        self._services.restarts.on_started()
        log.info("services started (pid %s)", self._services.proc.pid)

    def _healthz(self) -> bool:
        if self._http is None:
            return False
        try:
            return self._http.get(f"{self.api_url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_services_healthy(self) -> None:
        timeout = self.settings.services_start_timeout_s
        deadline = time.monotonic() + timeout
        log_path = self.logs_dir / "services.log"
        while True:
            self._check_interrupted()
            proc = self._services.proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise StartupError(
                    f"services exited during startup (exit {code}); {log_path}:\n{log_tail(log_path)}"
                )
            if self._healthz():
                self._services.healthy = True
                log.info("services healthy at %s", self.api_url)
                return
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"services did not answer {self.api_url}/healthz within {timeout:.0f}s; "
                    f"{log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(0.2)

    # ----------------------------------------------------------------- monitoring

    def monitor_once(self) -> None:
        """Check every child once; restart the dead ones whose backoff has passed."""
        if self.postgres is not None and not self.postgres.is_running():
            self._revive(
                "PostgreSQL", self._pg_restarts, self.logs_dir / "postgres.log", self._start_postgres
            )
        if self.broker is not None and not self.broker.is_running():
            self._revive(
                "Kafka broker", self._broker_restarts, self.logs_dir / "broker.log", self._start_broker
            )
        self._watch_services()
        self._rotate_broker_when_due()

    def _rotate_broker_when_due(self) -> None:
        """Replace the embedded broker once its memory passes broker_rotate_mib (see rotation.py)."""
        broker, gate = self.broker, self.gate
        if (
            broker is None
            or gate is None
            or not self.settings.broker_rotate_mib
            or broker.pid is None
            or time.monotonic() < self._next_rotation_check
        ):
            return
        self._next_rotation_check = time.monotonic() + 10 * _MONITOR_INTERVAL_S
        rss_mib = _rss_bytes(broker.pid) / 2**20
        if rss_mib < self.settings.broker_rotate_mib:
            return
        log.info("Kafka broker holds %.0f MiB: replacing it by an empty one", rss_mib)
        try:
            self.broker, report = rotate(
                broker,
                gate,
                PostgresCheckpoints(self.postgres_dsn, self.settings.projector_group),
                events_topic=self.settings.events_topic,
                dlq_topic=self.settings.dlq_topic,
                topics=self._topics(),
                max_carry_bytes=self.settings.broker_rotate_carry_max_mib * 2**20,
            )
        except RotationSkipped as exc:
            log.warning("Kafka broker replacement put off for %.0f s: %s", _ROTATION_RETRY_S, exc)
            self._next_rotation_check = time.monotonic() + _ROTATION_RETRY_S
            return
        except Exception:
            log.exception("Kafka broker replacement failed")
            self._next_rotation_check = time.monotonic() + _ROTATION_RETRY_S
            return
        self._broker_restarts.on_started()
        self.rotations.append(report)
        log.warning(
            "Kafka broker replaced: %s -> %s, %d events and %d dead letters (%.1f MiB) carried over,"
            " produces held %.2f s (%.2f s of them until the carried records were projected); now on port %d",
            report.old_incarnation,
            report.new_incarnation,
            report.carried_events,
            report.carried_letters,
            report.carried_bytes / 2**20,
            report.paused_s,
            report.project_s,
            self.broker.port,
        )

    def _revive(self, name: str, restarts: _Restarts, log_path: Path, start: Callable[[], None]) -> None:
        now = time.monotonic()
        if restarts.down_since is None:
            delay = restarts.on_death()
            log.error("%s died; restarting in %.1fs. %s:\n%s", name, delay, log_path, log_tail(log_path, 15))
            return
        if now < restarts.next_attempt:
            return
        down_since = restarts.down_since
        try:
            start()
        except Exception as exc:
            delay = restarts.on_failed_attempt()
            log.error("restarting %s failed (%s); next try in %.1fs", name, exc, delay)
        else:
            log.warning("%s restarted after %.1fs down", name, time.monotonic() - down_since)

    def _watch_services(self) -> None:
        svc = self._services
        proc = svc.proc
        restarts = svc.restarts
        if proc is not None and proc.poll() is None:
            if not svc.healthy and self._healthz():
                svc.healthy = True
                log.info("services healthy again at %s", self.api_url)
            return
        log_path = self.logs_dir / "services.log"
        if restarts.down_since is None:
            code = proc.returncode if proc is not None else None
            delay = restarts.on_death()
            svc.healthy = False
            log.error(
                "services exited (exit %s); restarting in %.1fs. %s:\n%s",
                code,
                delay,
                log_path,
                log_tail(log_path, 15),
            )
            return
        if time.monotonic() < restarts.next_attempt:
            return
        try:
            self._spawn_services()
        except StartupError as exc:
            delay = restarts.on_failed_attempt()
            log.error("restarting services failed (%s); next try in %.1fs", exc, delay)

    # ----------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop services, then broker, then PostgreSQL; remove connection.json; release the lock."""
        proc = self._services.proc
        if proc is not None:
            code = stop_process(proc, signal.SIGTERM, _SERVICES_STOP_TIMEOUT_S)
            log.info("services stopped (exit %s)", code)
            self._services.proc = None
        if self.broker is not None and self.broker.is_running():
            self.broker.stop()
            log.info("Kafka broker stopped")
        if self.gate is not None:
            self.gate.stop()
            self.gate = None
        if self.postgres is not None and self.postgres.is_running():
            self.postgres.stop()
            log.info("PostgreSQL stopped")
        if self._lock_fd is not None:
            self.connection_file.unlink(missing_ok=True)
            self._release_lock()
        if self._http is not None:
            self._http.close()
            self._http = None

    # ----------------------------------------------------------------- files

    def _acquire_lock(self) -> None:
        path = self.state_dir / "supervisor.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock: released by the kernel when we die, so a crash never leaves it stale.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateDirLocked(
                f"another `runledger up` (pid {holder}) is already running on {self.state_dir}; "
                "stop it first or use another RUNLEDGER_STATE_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
        os.close(self._lock_fd)  # closing drops the flock
        self._lock_fd = None

    def connection_info(self) -> dict[str, Any]:
        """What connection.json holds: url, kafka_bootstrap, postgres_dsn, pid, plus extra_connection_info."""
        info: dict[str, Any] = {
            "url": self.api_url,
            "kafka_bootstrap": self.kafka_bootstrap,
            "postgres_dsn": self.postgres_dsn,
            "pid": os.getpid(),
        }
        if self.api_key:
            info["api_key"] = self.api_key
        info.update(self.extra_connection_info)
        return info

    def _write_connection_file(self) -> None:
        """Write connection.json atomically, readable only by us (it holds an API key)."""
        _write_private(self.connection_file, json.dumps(self.connection_info(), indent=2) + "\n")

    # ----------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> Callable[[], None]:
        """Route SIGINT/SIGTERM to request_stop(); return a function restoring the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # only the main thread may set handlers; use request_stop()

        def _handler(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                log.info("already stopping")
            self.request_stop()

        previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def _restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return _restore


def _rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, readable only by us."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, 0o600)  # in case tmp existed with other bits
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_connection_key(path: Path) -> str:
    """The api_key of a connection.json left by an earlier start ("" when none)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    key = info.get("api_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else ""


def run_up(settings: Settings) -> int:
    """`runledger up`: run the supervisor in the foreground; return the exit code."""
    supervisor = Supervisor(settings)
    try:
        return supervisor.run()
    except StartupError as exc:
        print(f"runledger up: {exc}", file=sys.stderr, flush=True)
        return 1
