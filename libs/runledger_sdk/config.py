"""SDK settings, read from RUNLEDGER_* environment variables (or `rl.init(**overrides)`).

Where events go
  RUNLEDGER_TRANSPORT        kafka | http | auto (default). auto = kafka when a bootstrap is
                             known, else http.
  RUNLEDGER_KAFKA_BOOTSTRAP  Kafka bootstrap servers, host:port[,host:port].
  RUNLEDGER_URL              Base URL of the RunLedger API (HTTP transport), e.g.
                             http://127.0.0.1:8765. Events are POSTed to {URL}/api/v1/events.
  RUNLEDGER_API_KEY          API key (rlk_<id>_<secret>). Required online (any transport): every
                             event is signed with it (HMAC-SHA256, key id in the envelope) and
                             the projector refuses unsigned events; the HTTP transport also sends
                             it as `Authorization: Bearer <key>`. `runledger up` prints one and
                             writes it to <STATE_DIR>/connection.json (api_key), where the SDK
                             finds it; admins create more with `runledger admin keys create`.
                             Offline mode signs with it when set; else `runledger sync` signs
                             the unsigned events with the key it sends with.
  RUNLEDGER_TENANT           Tenant id written into every envelope. When not set and an API URL
                             is known, the key's tenant (GET {URL}/api/v1/whoami, once at init);
                             else "default". Events of another tenant than the key's are refused.
  RUNLEDGER_EVENTS_TOPIC     Topic of run events (default "runledger.events.v1").
  RUNLEDGER_STATE_DIR        State dir of a local `runledger up` (default ".runledger"). When
                             neither KAFKA_BOOTSTRAP nor URL is set, `<STATE_DIR>/connection.json`
                             (keys url, kafka_bootstrap, api_key) supplies them. When nothing
                             is found the SDK uses http://127.0.0.1:8765 (the embedded API).

Offline mode
  RUNLEDGER_MODE             online (default) | offline. offline = no network at all: every
                             event is appended (fsync per batch) to segment files under
                             OFFLINE_DIR, one file per process; runs behave exactly as online.
                             `runledger sync OFFLINE_DIR` sends them later (see runledger_sdk.sync).
  RUNLEDGER_OFFLINE_DIR      Where offline mode writes (default .runledger/offline, i.e. under the
                             working directory, next to the state dir; made absolute at init so a
                             later chdir does not move it).

Durability
  RUNLEDGER_SPOOL_DIR        Directory of the on-disk spool (default ~/.runledger/spool). Files
                             go to a subdirectory per destination (transport, broker or URL,
                             topic, tenant), so leftovers are only ever sent where they were
                             meant to go. Each process writes its own files there; files left
                             by a dead process are sent by the next SDK process with the same
                             destination.
  RUNLEDGER_SEND_TIMEOUT_S   How long one send may wait for the broker/API before its events
                             are spooled (default 10).
  RUNLEDGER_EXIT_TIMEOUT_S   How long interpreter exit waits for acknowledgements before the
                             rest stays spooled (default 30).
  RUNLEDGER_MAX_QUEUE_BYTES  Encoded events held in memory while sends are slow; beyond this
                             they are spilled to the spool instead (default 64 MiB).
  RUNLEDGER_RESEND_BACKOFF_MAX_S  Longest pause between two attempts to drain the spool (default 5).
  RUNLEDGER_HANDLE_SIGTERM   When true (default) and SIGTERM has no handler yet, SIGTERM
                             raises SystemExit in the main thread, so open runs end KILLED
                             and buffered events are flushed/spooled (preempted jobs).

Batching
  RUNLEDGER_BATCH_MAX_POINTS   Metric points per MetricsLogged event (default 10000).
  RUNLEDGER_BATCH_INTERVAL_MS  Buffered metrics/params/tags are cut into events at least this
                               often (default 150).

Kafka producer
  RUNLEDGER_KAFKA_LINGER_MS         linger_ms (default 20).
  RUNLEDGER_KAFKA_BATCH_SIZE        batch_size in bytes (default 1 MiB).
  RUNLEDGER_KAFKA_RESEND_WINDOW_S   Acknowledged events are kept this long (default 300) and sent
                                    again if the broker comes back as a new, empty incarnation
                                    (the embedded broker keeps events in memory); 0 disables.
  RUNLEDGER_KAFKA_RESEND_WINDOW_BYTES  At most this many bytes of them (default 64 MiB).
  RUNLEDGER_KAFKA_MAX_REQUEST_SIZE  max_request_size in bytes (default 8 MiB).

System metrics
  RUNLEDGER_SYSTEM_METRICS_INTERVAL_S  Seconds between two samples of CPU, memory, disk, network
                               and GPU use, logged as system/* metrics on the first top-level
                               run of the process (default 10; 0 disables). See
                               runledger_sdk.system_metrics.

Run context (top-level runs; see runledger_sdk.code_state, .environment and .lint)
  RUNLEDGER_CAPTURE_CODE_STATE   Record git commit, branch, remote, dirty flag, the capped
                                 diff, entry point and arguments at run start (default true).
  RUNLEDGER_CAPTURE_ENVIRONMENT  Record Python, platform, installed packages (hashed into the
                                 env.hash tag), conda and CUDA versions at run start (default true).
  RUNLEDGER_CODE_DIFF_MAX_BYTES  Largest uncommitted diff kept: the diff is stored as the
                                 artifact runledger/code/diff.patch, cut (diff_truncated) past
                                 this size (default 10 MiB). Without artifact uploads it travels
                                 in the event instead, capped at 512 KiB.
  RUNLEDGER_LINT_RUNS            At run end, record anti-patterns (no seed logged, no validation
                                 metric, artifact bloat) as lint.* findings of the run (default true).
  RUNLEDGER_LINT_ARTIFACT_MAX_BYTES  An artifact larger than this is flagged as lint.artifact_bloat
                                 (default 100 MiB).

Artifacts (see runledger_sdk.artifacts)
  RUNLEDGER_UPLOAD_ARTIFACTS     auto (default) | api | off. auto = upload files (log_artifact,
                                 log_model, the code diff, the environment) to the API at URL
                                 when online and a URL is known (also with the Kafka transport,
                                 via connection.json or RUNLEDGER_URL), not with a transport object
                                 given to rl.init; api = whenever online; off = never (the diff
                                 then travels in the CodeStateCaptured event).
  RUNLEDGER_ARTIFACT_TIMEOUT_S   Longest pause of one artifact upload (connect, read or write)
                                 before it fails (default 120).

HTTP
  RUNLEDGER_HTTP_MAX_REQUEST_BYTES  Largest body of one POST (default 4 MiB).
  RUNLEDGER_HTTP_RETRIES            Attempts per request on 5xx/connection errors before the
                                    events are spooled (default 3).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runledger.config import DEFAULT_TENANT_ID, EVENTS_TOPIC

log = logging.getLogger("runledger_sdk")

DEFAULT_API_URL = "http://127.0.0.1:8765"


class SdkSettings(BaseSettings):
    """Settings of the SDK; env var = RUNLEDGER_ + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="RUNLEDGER_", extra="ignore")

    mode: Literal["online", "offline"] = Field(
        "online", description="offline: write events to OFFLINE_DIR (send them later with `runledger sync`)."
    )
    offline_dir: Path = Field(
        Path(".runledger/offline"),
        description="Directory of offline mode's event segments (relative: to the cwd).",
    )
    transport: Literal["kafka", "http", "auto"] = Field("auto", description="kafka, http or auto.")
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers, host:port[,host:port].")
    url: str = Field("", description="Base URL of the RunLedger API, for the HTTP transport.")
    api_key: SecretStr = Field(
        SecretStr(""), description="API key: signs every event; Bearer token of the HTTP transport."
    )
    tenant: str = Field(
        DEFAULT_TENANT_ID, description="Tenant id of every event (unset: the key's, via /whoami)."
    )
    events_topic: str = Field(EVENTS_TOPIC, description="Topic of run events.")
    state_dir: Path = Field(Path(".runledger"), description="State dir holding connection.json.")
    spool_dir: Path = Field(
        Path("~/.runledger/spool"), description="Directory of the on-disk spool (shared by processes)."
    )

    send_timeout_s: float = Field(10.0, gt=0, description="Wait for one send before spooling.")
    exit_timeout_s: float = Field(30.0, ge=0, description="Wait for acknowledgements at exit.")
    max_queue_bytes: int = Field(64 << 20, gt=0, description="In-memory bound before spilling.")
    resend_backoff_initial_s: float = Field(0.2, gt=0, description="First pause after a failed resend.")
    resend_backoff_max_s: float = Field(5.0, gt=0, description="Longest pause between resends.")
    handle_sigterm: bool = Field(True, description="Turn SIGTERM into SystemExit (runs end KILLED).")

    # Capped so one event (~37 bytes per point: base64 of 28 binary bytes) stays far below
    # the 8 MiB max_request_size.
    batch_max_points: int = Field(10_000, ge=1, le=100_000, description="Points per metrics event.")
    batch_interval_ms: int = Field(150, ge=1, description="Cut buffered data at least this often.")

    system_metrics_interval_s: float = Field(
        10.0, ge=0, description="Seconds between samples of system/* metrics (CPU, memory, GPU); 0 disables."
    )
    capture_code_state: bool = Field(
        True, description="Record git state, diff, entry point and arguments of top-level runs."
    )
    capture_environment: bool = Field(
        True, description="Record Python, platform, packages (env.hash), conda and CUDA of top-level runs."
    )
    code_diff_max_bytes: int = Field(
        10 << 20,
        ge=1024,
        description="Largest uncommitted diff stored as runledger/code/diff.patch (cut beyond, diff_truncated).",
    )
    lint_runs: bool = Field(
        True, description="Flag anti-patterns (no seed, no validation metric, artifact bloat) at run end."
    )
    lint_artifact_max_bytes: int = Field(
        100 << 20, ge=1, description="Artifacts larger than this are flagged as lint.artifact_bloat."
    )

    upload_artifacts: Literal["auto", "api", "off"] = Field(
        "auto",
        description="auto: upload artifacts to the API at URL when online and a URL is known (not with"
        " a transport object); api: whenever online; off: never.",
    )
    artifact_timeout_s: float = Field(
        120.0, gt=0, description="Longest pause (connect, read, write) of one artifact upload."
    )

    kafka_linger_ms: int = Field(20, ge=0, description="Producer linger_ms.")
    kafka_batch_size: int = Field(1 << 20, gt=0, description="Producer batch_size (bytes).")
    kafka_max_request_size: int = Field(8 << 20, gt=0, description="Producer max_request_size (bytes).")
    kafka_resend_window_s: float = Field(
        300.0,
        ge=0,
        description="Keep acknowledged events this long, to resend them to a new broker incarnation (a"
        " restarted embedded broker, whose log is in memory); 0 = off. Against a replicated Kafka the"
        " cluster id never changes and the events only age out (at most kafka_resend_window_bytes).",
    )
    kafka_resend_window_bytes: int = Field(
        64 << 20, ge=0, description="At most this many bytes of acknowledged events kept for resending."
    )

    http_max_request_bytes: int = Field(4 << 20, gt=0, description="Largest POST body.")
    http_retries: int = Field(3, ge=1, description="Attempts per request before spooling.")

    # Whether RUNLEDGER_TENANT / tenant= was given (else the key's tenant is asked for).
    _tenant_explicit: bool = PrivateAttr(False)
    _resolved: bool = PrivateAttr(False)

    @property
    def tenant_explicit(self) -> bool:
        """Whether the tenant was configured rather than defaulted (known once resolved())."""
        return self._tenant_explicit

    def resolved(self) -> SdkSettings:
        """These settings with connection.json applied and the transport decided."""
        data = self.model_dump()
        if not self.kafka_bootstrap and not self.url:
            conn = _read_connection_file(self.state_dir / "connection.json")
            data["url"] = str(conn.get("url") or "")
            data["kafka_bootstrap"] = str(conn.get("kafka_bootstrap") or "")
            if not self.api_key.get_secret_value() and conn.get("api_key"):
                data["api_key"] = SecretStr(str(conn["api_key"]))
        if data["transport"] == "auto":
            data["transport"] = "kafka" if data["kafka_bootstrap"] else "http"
        if data["transport"] == "http" and not data["url"]:
            # Nothing configured: the API of a local `runledger up`. If it is not running,
            # events wait in the spool rather than being lost.
            data["url"] = DEFAULT_API_URL
        if data["transport"] == "kafka" and not data["kafka_bootstrap"] and self.mode == "online":
            raise ValueError("RUNLEDGER_TRANSPORT=kafka needs RUNLEDGER_KAFKA_BOOTSTRAP")
        data["spool_dir"] = Path(data["spool_dir"]).expanduser()
        # Absolute now: a training script that changes directory keeps writing to one place.
        data["offline_dir"] = Path(data["offline_dir"]).expanduser().absolute()
        resolved = SdkSettings.model_validate(data)
        # A resolved model has every field set: only an unresolved one tells what was given.
        resolved._tenant_explicit = (
            self._tenant_explicit if self._resolved else "tenant" in self.model_fields_set
        )
        resolved._resolved = True
        return resolved


def destination_id(settings: SdkSettings) -> str:
    """A short stable id of where events go (the spool subdirectory of that destination)."""
    if settings.mode == "offline":
        # Spooled only when the offline dir refuses a write: they belong to that dir.
        raw = f"offline|{settings.offline_dir}|{settings.tenant}"
        return f"offline-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"
    endpoint = settings.kafka_bootstrap if settings.transport == "kafka" else settings.url
    topic = settings.events_topic if settings.transport == "kafka" else ""
    raw = f"{settings.transport}|{endpoint}|{topic}|{settings.tenant}"
    return f"{settings.transport}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def _read_connection_file(path: Path) -> dict[str, Any]:
    """The connection file of `runledger up`, or {} when absent or unreadable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    try:
        obj = json.loads(raw)
    except ValueError:
        log.warning("ignoring %s: not valid JSON", path)
        return {}
    return obj if isinstance(obj, dict) else {}


def load_settings(**overrides: Any) -> SdkSettings:
    """Settings from the environment, with `overrides` (field names) taking precedence."""
    unknown = set(overrides) - set(SdkSettings.model_fields)
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    # Passing overrides as init kwargs makes them win over the environment.
    return SdkSettings(**overrides).resolved()
