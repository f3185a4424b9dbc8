"""Settings for every RunLedger process, read from RUNLEDGER_* environment variables.

Nothing set means the embedded default: every part starts on 127.0.0.1 under the
state directory. Setting one of the external URLs/DSNs switches that part to the
distributed mode, and then nothing embedded starts for it. docs/configuration.md
documents every variable.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runledger.analysis.webhook_policy import parse_networks

EVENTS_TOPIC = "runledger.events.v1"
DLQ_TOPIC = "runledger.events.dlq"
DEFAULT_TENANT_ID = "default"


class Settings(BaseSettings):
    """All runtime settings; env var = RUNLEDGER_ + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="RUNLEDGER_", extra="ignore")

    state_dir: Path = Field(Path(".runledger"), description="Where embedded services keep their data.")

    # External services (distributed mode). Empty = start the embedded one.
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers, host:port[,host:port].")
    postgres_dsn: str = Field("", description="PostgreSQL DSN, postgresql://user:pass@host:port/db.")
    clickhouse_url: str = Field(
        "", description="ClickHouse HTTP URL, http://user:pass@host:8123/db; empty = chdb in-process."
    )

    # Embedded ports (0 = pick a free port at start).
    api_host: str = Field(
        "127.0.0.1", description="Address the API listens on (the ingest role: its /healthz and /metrics)."
    )
    api_port: int = Field(
        8765, description="Port the API listens on (the ingest role: its /healthz and /metrics)."
    )
    api_max_json_body_bytes: int = Field(
        32 << 20,
        gt=0,
        description="Largest JSON request body the API reads (413 beyond; artifact uploads are not JSON"
        " and are not limited by it).",
    )
    api_tarpit_max_s: float = Field(
        2.0,
        ge=0,
        description="Longest time the API holds a write that comes back before the Retry-After of its"
        " tenant's events/s 429 (then checked as usual, or refused if still early): a client retrying"
        " at once costs one request per connection per wait. 0 = answer at once.",
    )
    api_heavy_write_bytes: int = Field(
        32 << 10,
        gt=0,
        description="A JSON write to the event routes with a body this large or larger (or chunked) is"
        " heavy: parsing it holds the API's event loop for milliseconds, so each tenant has only"
        " RUNLEDGER_API_HEAVY_WRITES_PER_TENANT of them in progress at a time.",
    )
    api_heavy_writes_per_tenant: int = Field(
        2,
        ge=0,
        description="Heavy writes (RUNLEDGER_API_HEAVY_WRITE_BYTES) of one tenant read, parsed and produced"
        " at a time by an API process; the tenant's others wait (no CPU), so a burst of one tenant's large"
        " writes cannot hold up the other tenants' requests. A write waiting for its projection no longer"
        " counts. 0 = no limit.",
    )
    switch_interval_ms: float = Field(
        1.0,
        gt=0,
        description="Python's thread switch interval in a services process (sys.setswitchinterval), in"
        " ms. The API's event loop shares the interpreter lock with the projector and with the threads"
        " that parse large bodies; each time it wakes it may wait this long for the lock, several times"
        " per request. Python's default is 5.",
    )
    api_keepalive_s: int = Field(
        65,
        gt=0,
        description="Seconds the API keeps an idle HTTP connection open. Longer than clients' own idle"
        " expiry (httpx: 5 s), so a client never reuses a connection the server is closing that instant"
        " (uvicorn's default is 5 s).",
    )
    kafka_port: int = Field(0, description="Port of the embedded broker (0 = a free one).")
    broker_rotate_mib: int = Field(
        512,
        ge=0,
        description="Embedded mode: once the broker's resident memory passes this many MiB, replace it"
        " by an empty one, carrying over what the consumers have not checkpointed yet (and every dead"
        " letter); produces wait meanwhile (2.8 s under the fleet benchmark; ADR 0015). The in-memory"
        " broker never deletes a record otherwise. 0 = never (the relay in front of the broker stays: it also"
        " keeps clients away from a restarted broker until its topics exist).",
    )
    broker_rotate_carry_max_mib: int = Field(
        512,
        gt=0,
        description="Embedded mode: a broker replacement is put off while the consumers are more than"
        " this many MiB of records behind (it holds them in memory while the broker restarts).",
    )
    postgres_port: int = Field(0, description="Port of the embedded PostgreSQL (0 = a free one).")

    # Topics.
    events_topic: str = Field(EVENTS_TOPIC, description="Topic of all run events.")
    dlq_topic: str = Field(DLQ_TOPIC, description="Dead-letter topic for rejected events.")
    topic_partitions: int = Field(4, description="Partitions of the events topic when RunLedger creates it.")

    # Projector.
    projector_group: str = Field("runledger-projector", description="Consumer group of the projector.")
    projector_max_batch_events: int = Field(
        5000, description="Max events per projected round (a batch of every partition with data)."
    )
    projector_assign_all: bool = Field(
        False,
        description="Take every partition of the events topic instead of joining the consumer group"
        " (one projector per topic, as in the embedded mode; no group rebalances).",
    )
    projector_max_wait_ms: int = Field(200, description="Flush a partial round after this long.")
    projector_dedup_horizon_days: float = Field(
        30.0,
        ge=0,
        description="How long the projector remembers the ids of applied events (applied_events), so"
        " that a re-sent event is skipped. Older ids are pruned: an event re-sent later than this is"
        " projected again. The SDK re-sends within minutes (RUNLEDGER_KAFKA_RESEND_WINDOW_S), and"
        " `runledger sync` marks what it sent; only `runledger sync --force` of older events would"
        " duplicate them. 0 = never prune.",
    )
    projector_max_clock_skew_s: float = Field(
        86_400.0,
        gt=0,
        description="An event whose occurred_at is further ahead of the projector's clock than this is"
        " dead-lettered (reason `clock skew`), as is one stamped before 2000-01-01; late events are"
        " otherwise accepted however old (offline sync). `runledger dlq replay --reason 'clock skew'`"
        " re-drives them after the limit is raised.",
    )

    # Analysis service (anomaly detection, attribution, webhooks).
    analysis_group: str = Field("runledger-analysis", description="Consumer group of the analysis service.")
    analysis_shards: int = Field(
        1,
        ge=1,
        le=1024,
        description="How many analysis services share the events topic. Each reads every partition and"
        " analyses the experiments that hash to its RUNLEDGER_ANALYSIS_SHARD (an experiment's series,"
        " cohorts and attributions stay on one shard). Change it with every shard stopped (docs/scaling.md).",
    )
    analysis_shard: int = Field(
        0, ge=0, description="This analysis service's shard, 0 to RUNLEDGER_ANALYSIS_SHARDS - 1."
    )
    analysis_api_key: str = Field(
        "",
        description="The platform superadmin key the analysis service signs its findings with (rlk_...);"
        " empty = RUNLEDGER_BOOTSTRAP_API_KEY. Without either the analysis service does not start.",
    )
    analysis_settings_refresh_s: float = Field(
        2.0, description="How often the analysis service reloads the tenants' detector settings."
    )
    analysis_checkpoint_interval_s: float = Field(
        30.0,
        description="How often the analysis service stores its detector states and offsets; a crash"
        " re-analyses at most this much (its findings keep their ids, so none is reported twice). Every"
        " series that logged since the last checkpoint is written (~1.5 kB each): shorter intervals cost"
        " Postgres writes in a large fleet.",
    )
    analysis_max_series_cached: int = Field(
        200_000,
        description="Detector states kept in memory, ~11.5 kB each once a series' history is full: what"
        " bounds the analysis service's memory (least recently updated ones are reloaded from Postgres"
        " when their series logs again).",
    )
    attribution_timeout_s: float = Field(
        300.0, description="An attribution running longer than this is abandoned and reported failed."
    )
    attribution_auto: bool = Field(
        True,
        description="Start an attribution by itself for findings across runs: an outlier_run (the run"
        " against its experiment's recent runs) and a level_shift of the runs' final values (the runs"
        " after the shift against those before it).",
    )

    webhook_http_timeout_s: float = Field(
        10.0, description="Overall deadline of one webhook delivery attempt."
    )
    webhook_max_attempts: int = Field(
        8, ge=1, description="Delivery attempts of one finding to one webhook before it is marked failed."
    )
    webhook_backoff_base_s: float = Field(
        10.0, description="First retry delay of a webhook delivery; it doubles each attempt (with jitter)."
    )
    webhook_backoff_cap_s: float = Field(600.0, description="Longest delay between webhook delivery retries.")
    webhook_concurrency: int = Field(
        16, ge=1, description="Webhook deliveries in flight per analysis process."
    )
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (comma-separated CIDRs, e.g. 10.20.0.0/16,fd00:1::/64) webhooks may reach"
        " although they are not public, e.g. an internal alert receiver. Every other loopback, private,"
        " link-local (cloud metadata), CGNAT, unique-local, multicast or reserved address is refused, at"
        " registration (400) and at each delivery (failed, not retried), whatever a hostname resolves to.",
    )
    webhook_allow_private_networks: bool = Field(
        False,
        description="Let webhooks reach every non-public address (loopback, private networks, cloud"
        " metadata...): only where every tenant admin may reach the deployment's own network, e.g. a"
        " single-user machine. Prefer RUNLEDGER_WEBHOOK_ALLOWED_NETWORKS.",
    )

    # API.
    write_wait_timeout_s: float = Field(
        10.0, description="How long a write waits for its event to be projected (read-your-writes)."
    )
    api_resend_window_s: float = Field(
        300.0,
        ge=0,
        description="Keep the writes answered at the broker's acknowledgement (MLflow run writes,"
        " `?wait=false`) this long, to send them again to a new broker incarnation (an embedded broker"
        " that restarted empty); 0 = off. Against a replicated Kafka the cluster id never changes and"
        " they only age out (at most RUNLEDGER_API_RESEND_WINDOW_BYTES).",
    )
    api_resend_window_bytes: int = Field(
        64 << 20, ge=0, description="At most this many bytes of acknowledged writes kept for sending again."
    )
    mlflow_write_ack: Literal["broker", "projection"] = Field(
        "broker",
        description="When MLflow run writes (runs/create, log-batch, log-metric, log-parameter, set-tag,"
        " runs/update, log-inputs) answer: `broker` once the broker acknowledged the event (the same"
        " key's other requests then wait until it is projected), `projection` once it is projected.",
    )

    # Artifacts (content-addressed blobs; their metadata is in Postgres through events).
    artifact_uri: str = Field(
        "",
        description="Where artifact blobs are stored: empty = <state dir>/artifacts; a directory (path or"
        " file:///path); or s3://bucket/prefix on S3 or any S3-compatible store, with endpoint, region and"
        " credentials from the standard AWS variables (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,"
        " AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...).",
    )
    retention_sweep_interval_s: float = Field(
        3600.0,
        ge=0,
        description="How often each API process applies every tenant's retention policy (deletions recorded"
        " as run.metrics_expired / run.artifacts_expired events, signed with the platform key); an advisory"
        " lock lets one process sweep at a time. 0 = no periodic sweep (POST /api/v1/retention/sweep or"
        " `runledger retention apply` only; the ClickHouse TTL still expires metric points a day later).",
    )
    artifact_part_size_mb: int = Field(
        8,
        ge=5,
        le=5120,
        description="S3 multipart part size in MiB (S3's minimum is 5): memory an upload holds at most"
        " about twice this; a blob up to one part is sent in a single PUT.",
    )

    default_tenant: str = Field(
        DEFAULT_TENANT_ID, description="The tenant the bootstrap key administers (created at first start)."
    )
    bootstrap_api_key: str = Field(
        "",
        description="An API key (rlk_<id>_<secret>) provisioned at start, if it does not exist yet, as"
        " the platform superadmin and admin of the default tenant. `runledger up` generates one on first"
        " start and keeps it in <state dir>/connection.json. A revoked bootstrap key stays revoked.",
    )
    secrets_key: str = Field(
        "",
        description="Fernet keys (comma-separated; the first seals, all open) that seal the secrets"
        " RunLedger stores to use again: webhook signing secrets. Empty = the key in"
        " <state dir>/secrets.key, created on first start (the embedded mode); a distributed deployment"
        " must give every API and analysis process the same value. Rotate: add the new key last"
        " everywhere; then move it first (API processes re-seal the stored secrets at start); drop the"
        " old one once every process has the new one first. Generate one with"
        " python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'.",
    )
    metrics_token: str = Field(
        "",
        description="Bearer token Prometheus presents to scrape GET /metrics (its per-tenant labels"
        " name tenants and their activity). Empty = /metrics answers only clients on this machine"
        " (loopback), as in the embedded mode; set it wherever the port is reachable from elsewhere.",
    )
    auth_poll_interval_s: float = Field(
        0.5,
        description="How often API and projector processes check for changed keys, roles and policies"
        " (revocations take effect within this, plus one reload).",
    )
    ui_session_lifetime_s: float = Field(
        28_800.0,
        gt=0,
        description="How long a web UI sign-in (the session cookie) lasts, in seconds; it ends earlier"
        " when its API key is revoked or expires, or on sign-out.",
    )
    log_level: str = Field("INFO", description="Python logging level of the services.")

    # Embedded supervisor (`runledger up`).
    services_start_timeout_s: float = Field(
        60.0, description="How long `runledger up` waits for the services to answer GET /healthz."
    )

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        # An environment variable holds a comma-separated list (a JSON list is accepted too).
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        # A typo must stop the process at start, not silently refuse (or allow) deliveries.
        return [str(net) for net in parse_networks(value)]

    @model_validator(mode="after")
    def _shard_within_shards(self) -> Settings:
        if self.analysis_shard >= self.analysis_shards:
            raise ValueError(
                f"RUNLEDGER_ANALYSIS_SHARD={self.analysis_shard} is not below"
                f" RUNLEDGER_ANALYSIS_SHARDS={self.analysis_shards}"
            )
        return self

    @property
    def chdb_path(self) -> Path:
        """Data directory of the in-process ClickHouse engine."""
        return self.state_dir / "clickhouse"

    @property
    def connection_file(self) -> Path:
        """Where `runledger up` writes the URL (and key) for scripts."""
        return self.state_dir / "connection.json"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
