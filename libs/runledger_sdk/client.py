"""The process-wide client: settings, spool, transport, delivery and batcher threads.

Created on first use (or by `init`), closed at interpreter exit: open runs are ended
(FAILED after an uncaught exception, KILLED after Ctrl-C, else FINISHED) and every event
is flushed to the broker, or stays durably spooled for a later process.
"""

from __future__ import annotations

import atexit
import getpass
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from runledger.events.codec import DEFAULT_EXPERIMENT_NAME, experiment_id_for, new_run_id, producer
from runledger.events.models import EventType, RunStatus, utc_now
from runledger_sdk._version import __version__
from runledger_sdk.artifacts import uploader_for
from runledger_sdk.batcher import Batcher, RunBuffer
from runledger_sdk.config import SdkSettings, destination_id, load_settings
from runledger_sdk.delivery import Delivery
from runledger_sdk.identity import identify
from runledger_sdk.integrations import airflow as airflow_integration
from runledger_sdk.names import random_run_name
from runledger_sdk.run import Run, Terminated, now_ms, status_for_exception
from runledger_sdk.run_context import capture_run_context, close_run_context
from runledger_sdk.signing import Signer
from runledger_sdk.spool import Spool
from runledger_sdk.transport import Transport
from runledger_sdk.validation import check_key, tag_value

if TYPE_CHECKING:
    from runledger_sdk.system_metrics import SystemSampler

log = logging.getLogger("runledger_sdk")

# The envelope's Id rule (models.Id), checked here so a bad run_id fails in start_run.
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_\-.]{1,64}")


def make_transport(settings: SdkSettings) -> Transport:
    """The transport the (resolved) settings ask for."""
    if settings.mode == "offline":
        from runledger_sdk.transport_offline import OfflineTransport

        return OfflineTransport(settings.offline_dir)
    if settings.transport == "kafka":
        from runledger_sdk.transport_kafka import KafkaTransport

        return KafkaTransport(settings)
    from runledger_sdk.transport_http import HttpTransport

    return HttpTransport(settings)


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"run_id {run_id!r} must be 1..64 characters of letters, digits, '_', '-', '.'")
    return run_id


def _open_spool(directory: Path) -> Spool:
    """The spool in `directory`, or in the temp dir when that is not writable (read-only home)."""
    try:
        return Spool(directory)
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"runledger-spool-{os.getuid()}" / directory.name
        log.warning("RunLedger: cannot use spool dir %s (%s); using %s", directory, exc, fallback)
        return Spool(fallback)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return ""


class Client:
    """Everything one process needs to log runs."""

    def __init__(self, settings: SdkSettings, transport: Transport | None = None) -> None:
        # Online, every event must be signed: no key is an error now, not dead letters later.
        # A given transport (tests, InMemoryTransport) signs only when a key is configured.
        settings, key = identify(settings, online=transport is None and settings.mode == "online")
        self.settings = settings
        self.spool = _open_spool(settings.spool_dir / destination_id(settings))
        # Leftovers of dead processes in the same spool dir are sent by us.
        self.spool.adopt_orphans()
        self.transport = transport if transport is not None else make_transport(settings)
        # Where run files go (None: nowhere; the SDK's own captures then stay in the events).
        self.artifacts = uploader_for(settings, transport_given=transport is not None)
        self.delivery = Delivery(
            self.transport,
            self.spool,
            send_timeout_s=settings.send_timeout_s,
            max_queue_bytes=settings.max_queue_bytes,
            backoff_initial_s=settings.resend_backoff_initial_s,
            backoff_max_s=settings.resend_backoff_max_s,
        )
        self.batcher = Batcher(
            self.delivery,
            tenant_id=settings.tenant,
            producer=producer("python-sdk", __version__),
            max_points=settings.batch_max_points,
            interval_s=settings.batch_interval_ms / 1000,
            signer=Signer(key),
        )
        self._lock = threading.Lock()
        self._experiments: set[str] = set()
        self.runs: dict[str, Run] = {}  # running, in start order
        # run id -> experiment name of the runs started here, so a child named by its parent's
        # id lands in the parent's experiment. Bounded: old entries are dropped.
        self._run_experiments: dict[str, str] = {}
        # One system-metrics sampler per process, owned by the top-level run that started it.
        self.sampler: SystemSampler | None = None
        self._sampler_run_id: str | None = None
        self._sampler_broken = False
        self.closed = False

    # --- runs ---------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        experiment: str | None,
        name: str | None,
        tags: dict[str, Any] | None,
        parent_run_id: str | None,
        run_id: str | None,
    ) -> Run:
        """Emit ExperimentCreated (once per experiment) and RunStarted; return the run."""
        if self.closed:
            raise RuntimeError("the RunLedger client is shut down; call runledger_sdk.init() again")
        experiment_name = experiment if experiment is not None else DEFAULT_EXPERIMENT_NAME
        if not 1 <= len(experiment_name) <= 500:
            raise ValueError("experiment name must be 1..500 characters")
        if name is not None and len(name) > 500:
            raise ValueError("run name must be at most 500 characters")
        if parent_run_id is None:  # inside an Airflow task: airflow.dag_id, .task_id, ... (caller's tags win)
            tags = {**airflow_integration.tags_for_new_run(), **(tags or {})}
        checked_tags = {check_key(k, "tag key"): tag_value(k, v) for k, v in (tags or {}).items()}
        run_id = _check_run_id(run_id) if run_id is not None else new_run_id()
        if run_id in self.runs:
            raise ValueError(f"run {run_id} is already running in this process")
        if parent_run_id is not None:
            _check_run_id(parent_run_id)
        experiment_id = experiment_id_for(self.settings.tenant, experiment_name)
        buffer = RunBuffer(run_id, experiment_id)
        start_time = now_ms()
        run = Run(
            self,
            buffer,
            experiment_name=experiment_name,
            name=name or random_run_name(),
            parent_run_id=parent_run_id,
            start_time=start_time,
            tags=checked_tags,
        )
        with self._lock:
            if experiment_id not in self._experiments:
                # Keyed by the run id: it lands on the run's partition ahead of RunStarted.
                # The projector creates-or-reuses it (the id derives from the name).
                self.batcher.emit(
                    None,
                    EventType.EXPERIMENT_CREATED,
                    {"name": experiment_name},
                    key=buffer.run_key,
                    experiment_id=experiment_id,
                )
                self._experiments.add(experiment_id)
            self.batcher.emit(
                None,
                EventType.RUN_STARTED,
                {
                    "name": run.name,
                    "parent_run_id": parent_run_id,
                    "start_time": start_time,
                    "user_id": _user(),
                    "tags": checked_tags,
                    "status": RunStatus.RUNNING.value,
                },
                key=buffer.run_key,
                run_id=run_id,
                experiment_id=experiment_id,
            )
            self.batcher.register(buffer)
            self.runs[run_id] = run
            self._run_experiments[run_id] = experiment_name
            if len(self._run_experiments) > 10_000:
                del self._run_experiments[next(iter(self._run_experiments))]
        if parent_run_id is None:
            self._start_sampler(run)
            capture_run_context(self, run)  # code state, environment, pending seed
        return run

    def _start_sampler(self, run: Run) -> None:
        """Sample system metrics onto `run` unless disabled or another run already has the sampler.

        Nested runs never get one (their parent's covers the process), nor does a second
        top-level run while the first is running: the metrics are of the whole process.
        """
        interval = self.settings.system_metrics_interval_s
        if interval <= 0 or self._sampler_broken or self.sampler is not None:
            return
        try:
            # Imported here: psutil takes ~20 ms to import, not worth paying without a run.
            from runledger_sdk.system_metrics import SystemSampler

            sampler = SystemSampler(run, interval, closing_sink=run.closing_sink)
        except Exception as exc:  # e.g. psutil missing from a hand-made environment
            self._sampler_broken = True  # said once, not at every run
            log.warning("RunLedger: system metrics disabled: %s", exc)
            return
        with self._lock:
            if self.sampler is not None:  # another thread's top-level run won the race
                return
            self.sampler, self._sampler_run_id = sampler, run.run_id
        sampler.start()

    def end_run(self, run: Run, status: RunStatus, end_time: int) -> None:
        """Emit what the run buffered, then StatusChanged (called by Run.end_run)."""
        sampler = None
        with self._lock:
            self.runs.pop(run.run_id, None)
            if self._sampler_run_id == run.run_id:
                sampler, self.sampler, self._sampler_run_id = self.sampler, None, None
        if sampler is not None:
            # Before the cut below, so the last sample goes out ahead of StatusChanged.
            sampler.stop(2.0)
        if run.parent_run_id is None:
            close_run_context(self, run, status)  # lint findings, ahead of StatusChanged
        self.batcher.unregister(run.buffer)
        self.batcher.emit(
            run.buffer,
            EventType.STATUS_CHANGED,
            {"status": status.value, "end_time": end_time},
            key=run.buffer.run_key,
            run_id=run.run_id,
            experiment_id=run.experiment_id,
            occurred_at=utc_now(),
        )

    def experiment_of(self, run_id: str) -> str | None:
        """The experiment name of a run started by this process (None if unknown)."""
        with self._lock:
            return self._run_experiments.get(run_id)

    def latest_run(self) -> Run | None:
        """The most recently started run that is still running, in any thread."""
        with self._lock:
            return next(reversed(self.runs.values()), None) if self.runs else None

    # --- flushing and shutdown -------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event logged so far is acknowledged; on timeout spool the rest.

        Returns True when everything was acknowledged (or rejected, see the log), False when
        some events are only in the spool. `timeout=None` means RUNLEDGER_EXIT_TIMEOUT_S.
        """
        wait = self.settings.exit_timeout_s if timeout is None else timeout
        target = self.batcher.cut_all()
        if self.delivery.wait_for(target, wait):
            return True
        self.delivery.spill(self.settings.send_timeout_s + 2.0)
        log.warning(
            "RunLedger: not every event was acknowledged within %.1f s; the rest is spooled in %s "
            "and will be sent by this process or the next one that uses this spool directory",
            wait,
            self.spool.directory,
        )
        return False

    def close(self, timeout: float | None = None, status: RunStatus = RunStatus.FINISHED) -> bool:
        """End running runs with `status`, flush, stop the threads; True if all was acknowledged."""
        if self.closed:
            return True
        for run in reversed(list(self.runs.values())):
            run.end_run(status)
        ok = self.flush(timeout)
        self.closed = True
        self.batcher.stop(1.0)
        self.batcher.cut_all()  # anything logged by another thread meanwhile
        # Everything is acknowledged or durable by now; a drain still in flight may be cut off.
        self.delivery.stop(1.0)
        self.transport.close(1.0)
        if self.artifacts is not None:
            self.artifacts.close()
        self.spool.close()
        return ok


# --- the process-wide client ---------------------------------------------------------------------

_client: Client | None = None
_client_lock = threading.RLock()
_hooks_installed = False
_uncaught: BaseException | None = None


def get_client() -> Client:
    """The process-wide client, created from the environment on first use."""
    global _client
    client = _client
    if client is not None and not client.closed:
        return client
    with _client_lock:
        if _client is None or _client.closed:
            _client = Client(load_settings())
            _install_hooks(_client.settings)
        return _client


def current_client() -> Client | None:
    """The process-wide client if one is running."""
    client = _client
    return client if client is not None and not client.closed else None


def init(transport: str | Transport | None = None, **overrides: Any) -> Client:
    """Configure the SDK programmatically and start it.

    Keyword arguments are SdkSettings fields (url=..., kafka_bootstrap=..., spool_dir=...)
    and win over RUNLEDGER_* variables. `transport` is "kafka", "http", "auto", or a
    Transport instance (e.g. InMemoryTransport for tests).
    """
    global _client
    instance: Transport | None = None
    if isinstance(transport, Transport):
        instance = transport
    elif transport is not None:
        overrides["transport"] = transport
    settings = load_settings(**overrides)
    with _client_lock:
        old = current_client()
        if old is not None:
            if old.runs:
                raise RuntimeError("end the active runs before calling init() again")
            old.close()
        _client = Client(settings, instance)
        _install_hooks(settings)
        return _client


def shutdown(timeout: float | None = None) -> bool:
    """End open runs, flush and stop the SDK (a later call re-creates it); True if all acked."""
    global _client
    with _client_lock:
        client, _client = _client, None
    return client.close(timeout) if client is not None else True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Like Ctrl-C: unwind the main thread so `with` blocks end their runs (KILLED) and
    # atexit flushes; Python's default for SIGTERM would drop everything buffered.
    global _uncaught
    exc = Terminated(128 + signum)
    _uncaught = exc
    raise exc


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - embedded interpreters
        pass


def _install_hooks(settings: SdkSettings) -> None:
    global _hooks_installed
    if settings.handle_sigterm:
        _install_sigterm_handler()
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        # Remember why the interpreter is going down: open runs then end FAILED/KILLED.
        global _uncaught
        _uncaught = exc
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(_at_exit)


def _at_exit() -> None:
    client = current_client()
    if client is None:
        return
    try:
        client.close(client.settings.exit_timeout_s, status_for_exception(_uncaught))
    except Exception:  # pragma: no cover - never turn exit into a traceback storm
        log.exception("RunLedger: shutting down failed")
